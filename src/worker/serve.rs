//! The accept loop, systemd notifications, and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, watch};

use super::app::{self, AppState, Limits, WorkerInfo};
use super::{AcceptMode, WorkerSettings};
use crate::notify::Notifier;
use crate::socket::StdListener;

pub async fn serve(
    settings: WorkerSettings,
    listeners: Vec<StdListener>,
    notifier: Notifier,
) -> anyhow::Result<()> {
    let plan = &settings.plan;
    let state = AppState::new(
        WorkerInfo {
            profile: plan.profile.name(),
            instance: settings.instance,
            pid: std::process::id(),
            workers: plan.workers,
            threads: plan.threads,
        },
        Limits { request_timeout: settings.request_timeout, max_body_bytes: settings.max_body_bytes },
        settings.diagnostics,
    );
    let router = app::router(state.clone());

    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.header_timeout)
        .max_header_size(settings.max_header_bytes);

    // Signals are registered before READY=1, so a stop request can never be missed.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    // `stopped` tells accept loops and connections to wind down; every connection task holds
    // a clone of `open`, so `all_closed` ends once the last one has finished.
    let (stop_accepting, stopped) = watch::channel(false);
    let heartbeat = Heartbeat::new();
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut addresses = Vec::new();
    let mut acceptors = Vec::new();
    for listener in listeners {
        addresses.push(listener.local_addr());
        let ctx = Acceptor {
            state: state.clone(),
            router: router.clone(),
            http: http.clone(),
            open: open.clone(),
            stop: stopped.clone(),
            heartbeat: heartbeat.clone(),
        };
        acceptors.push(match (settings.accept, listener) {
            (AcceptMode::Thread, listener) => {
                let handle = tokio::runtime::Handle::current();
                let (done, finished) = tokio::sync::oneshot::channel::<()>();
                std::thread::Builder::new()
                    .name("coreiix-accept".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let _done = done;
                        ctx.run_blocking(listener, handle)
                    })
                    .context("cannot start the accept thread")?;
                tokio::spawn(async move {
                    let _ = finished.await;
                })
            }
            (AcceptMode::Runtime, StdListener::Tcp(l)) => {
                tokio::spawn(ctx.run_tcp(TcpListener::from_std(l)?))
            }
            (AcceptMode::Runtime, StdListener::Unix(l)) => {
                tokio::spawn(ctx.run_unix(UnixListener::from_std(l)?))
            }
        });
    }

    tracing::info!(
        instance = settings.instance,
        profile = plan.profile.name(),
        workers = plan.workers,
        threads = plan.threads,
        "worker {} serving on {} ({} runtime thread{})",
        settings.instance,
        addresses.join(", "),
        plan.threads,
        if plan.threads == 1 { "" } else { "s" },
    );
    let (instance, threads) = (settings.instance, plan.threads);
    let status = move |state: &AppState| {
        format!(
            "Serving: {} requests, {} in flight; instance {instance}, {threads} thread{}",
            state.metrics.served(),
            state.metrics.in_flight(),
            if threads == 1 { "" } else { "s" },
        )
    };
    notifier.ready(&status(&state));

    let status_task = tokio::spawn(report_status(state.clone(), notifier, status));
    let heartbeat_task = tokio::spawn(heartbeat.clone().beat());
    let watchdog_task = notifier.watchdog_every.map(|every| tokio::spawn(watchdog(notifier, every)));

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = sigint.recv() => tracing::info!("SIGINT: draining"),
    }
    state.draining.store(true, Relaxed);
    status_task.abort();
    notifier.stopping(&format!("Draining: {} requests in flight", state.metrics.in_flight()));
    let _ = stop_accepting.send(true);
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    drop(open);

    let in_flight = state.metrics.in_flight();
    tokio::select! {
        _ = all_closed.recv() => {
            tracing::info!("drained ({in_flight} requests were in flight); exiting");
        }
        _ = tokio::time::sleep(settings.drain_timeout) => {
            tracing::warn!(
                "drain timeout of {:?} reached with {} requests still in flight; exiting",
                settings.drain_timeout,
                state.metrics.in_flight()
            );
        }
        _ = sigterm.recv() => second_signal(&state),
        _ = sigint.recv() => second_signal(&state),
    }
    if let Some(task) = watchdog_task {
        task.abort();
    }
    heartbeat_task.abort();
    Ok(())
}

fn second_signal(state: &AppState) -> ! {
    tracing::warn!("second signal: exiting at once, abandoning {} requests", state.metrics.in_flight());
    std::process::exit(i32::from(crate::error::EXIT_FAILURE));
}

/// Keeps `systemctl status` current: at most once a second, only when something changed.
async fn report_status(state: Arc<AppState>, notifier: Notifier, status: impl Fn(&AppState) -> String) {
    if !notifier.enabled() {
        return;
    }
    let mut last = (u64::MAX, i64::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = (state.metrics.served(), state.metrics.in_flight());
        if now != last {
            notifier.status(&status(&state));
            last = now;
        }
    }
}

/// Pings the watchdog from a task on the serving runtime, so a stalled runtime stops the pings
/// and systemd restarts the worker.
async fn watchdog(notifier: Notifier, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        notifier.watchdog();
    }
}

/// What an accept loop needs; one per listening socket.
struct Acceptor {
    state: Arc<AppState>,
    router: axum::Router,
    http: http1::Builder,
    open: mpsc::Sender<()>,
    /// Whether the runtime is making progress, for the accept thread.
    heartbeat: Heartbeat,
    stop: watch::Receiver<bool>,
}

impl Acceptor {
    async fn run_tcp(mut self, listener: TcpListener) {
        loop {
            tokio::select! {
                _ = self.stop.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        self.spawn(stream);
                    }
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }

    async fn run_unix(mut self, listener: UnixListener) {
        loop {
            tokio::select! {
                _ = self.stop.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => self.spawn(stream),
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }

    /// Accepts on a thread of its own: waits for the socket with poll(2), then accepts without
    /// blocking (the shared socket stays non-blocking for everyone: its flags belong to every
    /// process holding it, and systemd's `NonBlocking=true` sets them too). The runtime's own
    /// epoll is not used for the listening socket because there, whichever worker is already
    /// running takes every new connection; here an acceptor that takes one while more are
    /// queued steps aside briefly, so a burst is shared out among the workers.
    fn run_blocking(self, listener: StdListener, handle: tokio::runtime::Handle) {
        let _runtime = handle.enter();
        let fd = listener.as_raw_fd();
        let alone = self.state.info.workers <= 1;
        while !*self.stop.borrow() {
            // A runtime that has stopped making progress (stuck, or swamped) must not keep
            // taking its share of connections: leave them to the other workers meanwhile.
            if !self.heartbeat.fresh() {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            match readable(fd, ACCEPT_POLL) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("waiting for connections failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
            match accept_one(&listener) {
                Ok(accepted) => {
                    match accepted {
                        Accepted::Tcp(s) => {
                            let _ = s.set_nodelay(true);
                            self.spawn(s);
                        }
                        Accepted::Unix(s) => self.spawn(s),
                    }
                    if !alone && readable(fd, Duration::ZERO).unwrap_or(false) {
                        std::thread::sleep(BURST_PAUSE);
                    }
                }
                // Another worker took it, or it was a spurious wake-up.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn spawn<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = self.state.clone();
        let router = self.router.clone();
        let first_request = Arc::new(FirstRequest::default());
        let seen = first_request.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            seen.arrived();
            let response = app::handle(state.clone(), router.clone(), req.map(axum::body::Body::new));
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        });
        let connection = self.http.serve_connection(TokioIo::new(stream), service);
        let mut stop = self.stop.clone();
        let open = self.open.clone();
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.changed() => {
                    // Draining. A connection that has not sent its first request yet was
                    // accepted just before we stopped accepting: its request is on the way and
                    // must be answered, not cut off. So wait for it (the header timeout bounds
                    // the wait); every other connection finishes what it is doing and closes.
                    let finished = if first_request.seen() {
                        None
                    } else {
                        tokio::select! {
                            result = connection.as_mut() => Some(result),
                            _ = first_request.wait() => None,
                        }
                    };
                    match finished {
                        Some(result) => result,
                        None => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection ended with an error: {e}");
            }
        });
    }
}

/// Whether a connection has started its first request, and a way to wait for it.
#[derive(Default)]
struct FirstRequest {
    seen: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl FirstRequest {
    fn arrived(&self) {
        if !self.seen.swap(true, Relaxed) {
            // notify_one keeps a permit if nobody waits yet, so no wake-up is lost.
            self.notify.notify_one();
        }
    }

    fn seen(&self) -> bool {
        self.seen.load(Relaxed)
    }

    async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// A timestamp the runtime refreshes from a task of its own, so other threads can tell that
/// it still runs its tasks.
#[derive(Clone)]
struct Heartbeat {
    origin: std::time::Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Heartbeat {
    const EVERY: Duration = Duration::from_millis(100);
    /// Older than this, the runtime is considered stalled.
    const STALE_MS: u64 = 1000;

    fn new() -> Heartbeat {
        Heartbeat { origin: std::time::Instant::now(), last_ms: Arc::default() }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    async fn beat(self) {
        let mut tick = tokio::time::interval(Self::EVERY);
        loop {
            tick.tick().await;
            self.last_ms.store(self.now_ms(), Relaxed);
        }
    }

    fn fresh(&self) -> bool {
        self.now_ms().saturating_sub(self.last_ms.load(Relaxed)) < Self::STALE_MS
    }
}

/// How long an acceptor that found more connections queued steps aside for the others.
const BURST_PAUSE: Duration = Duration::from_micros(200);

/// Whether `fd` has a connection to accept, waiting at most `timeout`.
fn readable(fd: std::os::fd::RawFd, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(pfd.revents & libc::POLLIN != 0),
    }
}

/// How long the accept thread waits before looking at the stop flag again.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// A connection accepted on the accept thread, registered with the runtime.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// One blocking accept; the connection is made non-blocking and registered with the runtime
/// (whose context the calling thread has entered).
fn accept_one(listener: &StdListener) -> std::io::Result<Accepted> {
    Ok(match listener {
        StdListener::Tcp(l) => {
            let (s, _) = l.accept()?;
            s.set_nonblocking(true)?;
            Accepted::Tcp(tokio::net::TcpStream::from_std(s)?)
        }
        StdListener::Unix(l) => {
            let (s, _) = l.accept()?;
            s.set_nonblocking(true)?;
            Accepted::Unix(tokio::net::UnixStream::from_std(s)?)
        }
    })
}

/// Accept errors such as running out of file descriptors are transient: wait a little instead
/// of spinning, and keep serving.
async fn accept_error(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
