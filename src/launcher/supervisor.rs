//! The supervisor: one event loop that owns every worker.
//!
//! Workers, their notify sockets, timers and signals all report into one channel, so the
//! state below is changed from one place only: no locks, and every decision sees all of it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::dev::DevLoop;
use super::spawn::WorkerCommand;
use crate::error::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::notify::Notifier;
use crate::plan::MAX_WORKERS;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that lived this long before crashing gets a fresh backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

pub struct Options {
    pub command: WorkerCommand,
    pub workers: u32,
    pub ready_timeout: Duration,
    pub notifier: Notifier,
    pub dev: Option<DevLoop>,
}

#[derive(Debug, Clone, Copy)]
enum Sig {
    Term,
    Int,
    Hup,
    Ttin,
    Ttou,
}

impl Sig {
    fn name(self) -> &'static str {
        match self {
            Sig::Term => "SIGTERM",
            Sig::Int => "SIGINT",
            Sig::Hup => "SIGHUP",
            Sig::Ttin => "SIGTTIN",
            Sig::Ttou => "SIGTTOU",
        }
    }
}

enum Event {
    Exited { id: u64, status: std::io::Result<ExitStatus> },
    Notify { id: u64, text: String },
    ReadyTimeout { id: u64 },
    Respawn { slot: u32 },
    Signal(Sig),
    Built(anyhow::Result<PathBuf>),
}

struct Worker {
    slot: u32,
    pid: u32,
    ready: bool,
    stopping: bool,
    started: Instant,
    tasks: Vec<JoinHandle<()>>,
}

/// A rolling restart in progress: slots still to do, and the new/old pair being swapped.
struct Roll {
    pending: VecDeque<u32>,
    swapping: Option<(u64, u64)>,
}

struct Supervisor {
    opts: Options,
    /// A private (0700, random name) directory for the notify sockets, removed on exit.
    runtime_dir: tempfile::TempDir,
    tx: mpsc::UnboundedSender<Event>,
    workers: BTreeMap<u64, Worker>,
    next_id: u64,
    desired: u32,
    backoff: HashMap<u32, Duration>,
    roll: Option<Roll>,
    roll_again: bool,
    building: bool,
    shutting_down: bool,
    exit_code: u8,
    announced: bool,
}

pub async fn run(opts: Options) -> anyhow::Result<u8> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (kind, sig) in [
        (SignalKind::terminate(), Sig::Term),
        (SignalKind::interrupt(), Sig::Int),
        (SignalKind::hangup(), Sig::Hup),
        (SignalKind::from_raw(libc::SIGTTIN), Sig::Ttin),
        (SignalKind::from_raw(libc::SIGTTOU), Sig::Ttou),
    ] {
        let mut stream = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let _ = tx.send(Event::Signal(sig));
            }
        });
    }

    if let Some(every) = opts.notifier.watchdog_every {
        let notifier = opts.notifier;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notifier.watchdog();
            }
        });
    }
    let desired = opts.workers;
    let mut sup = Supervisor {
        opts,
        runtime_dir: tempfile::Builder::new()
            .prefix("coreiix-up-")
            .tempdir()
            .map_err(|e| anyhow::anyhow!("cannot create the launcher's runtime directory: {e}"))?,
        tx,
        workers: BTreeMap::new(),
        next_id: 1,
        desired,
        backoff: HashMap::new(),
        roll: None,
        roll_again: false,
        building: false,
        shutting_down: false,
        exit_code: EXIT_OK,
        announced: false,
    };

    let _watcher = match &sup.opts.dev {
        Some(dev) => {
            let watcher = dev.watch().inspect_err(|e| say(format!("{e:#}; auto-reload is off")));
            if watcher.is_ok() {
                say("auto-reload on: watching src/, Cargo.toml and Cargo.lock".into());
            }
            sup.build();
            watcher.ok()
        }
        None => {
            sup.fill_slots();
            None
        }
    };

    while !(sup.shutting_down && sup.workers.is_empty()) {
        let Some(event) = rx.recv().await else { break };
        sup.handle(event);
    }
    Ok(sup.exit_code)
}

fn say(message: String) {
    eprintln!("coreiix-plan up: {message}");
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => format!("ended ({s})"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

impl Supervisor {
    fn handle(&mut self, event: Event) {
        match event {
            Event::Exited { id, status } => self.exited(id, status),
            Event::Notify { id, text } => {
                if text.lines().any(|l| l == "READY=1") {
                    self.became_ready(id);
                }
            }
            Event::ReadyTimeout { id } => {
                if let Some(w) = self.workers.get(&id).filter(|w| !w.ready && !w.stopping) {
                    say(format!(
                        "worker {} (pid {}) sent no READY=1 within {:?}; killing it",
                        w.slot, w.pid, self.opts.ready_timeout
                    ));
                    signal_pid(w.pid, libc::SIGKILL);
                }
            }
            Event::Respawn { slot } => {
                if !self.shutting_down && slot <= self.desired && !self.occupied(slot) {
                    self.spawn(slot);
                }
            }
            Event::Signal(sig) => self.signal(sig),
            Event::Built(result) => {
                self.building = false;
                match result {
                    Ok(path) => {
                        let first = self.opts.command.program.is_none();
                        self.opts.command.program = Some(path);
                        if self.shutting_down {
                            // Nothing to start: we are on the way out.
                        } else if first {
                            self.fill_slots();
                        } else {
                            say("rebuilt; replacing the worker".into());
                            self.start_roll();
                        }
                    }
                    Err(e) => say(format!("{e:#}")),
                }
            }
        }
    }

    fn signal(&mut self, sig: Sig) {
        if self.shutting_down && matches!(sig, Sig::Hup | Sig::Ttin | Sig::Ttou) {
            say(format!("{}: ignored while draining", sig.name()));
            return;
        }
        match sig {
            Sig::Term | Sig::Int if self.shutting_down => {
                say("second signal: killing all workers now".into());
                for w in self.workers.values() {
                    signal_pid(w.pid, libc::SIGKILL);
                }
                self.exit_code = EXIT_FAILURE;
            }
            Sig::Term | Sig::Int => {
                say(format!("{}: draining {} workers", sig.name(), self.workers.len()));
                self.shutdown();
            }
            Sig::Hup if self.opts.dev.is_some() => self.build(),
            Sig::Hup => {
                say("SIGHUP: rolling restart".into());
                self.start_roll();
            }
            Sig::Ttin if self.desired < MAX_WORKERS as u32 => {
                self.desired += 1;
                say(format!("SIGTTIN: adding worker {}", self.desired));
                self.spawn(self.desired);
            }
            Sig::Ttou if self.desired > 1 => {
                let slot = self.desired;
                self.desired -= 1;
                say(format!("SIGTTOU: removing worker {slot}"));
                let ids: Vec<u64> =
                    self.workers.iter().filter(|(_, w)| w.slot == slot).map(|(id, _)| *id).collect();
                for id in ids {
                    self.terminate(id);
                }
                self.report_status();
            }
            Sig::Ttin | Sig::Ttou => {
                say(format!("{}: already at the limit ({} workers)", sig.name(), self.desired))
            }
        }
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        self.roll = None;
        self.opts.notifier.stopping(&format!("Draining {} workers", self.workers.len()));
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        for id in ids {
            self.terminate(id);
        }
    }

    fn build(&mut self) {
        let Some(dev) = &self.opts.dev else { return };
        if self.building {
            return;
        }
        self.building = true;
        say("building the worker (cargo build)".into());
        let root = dev.root.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Event::Built(DevLoop { root }.build().await));
        });
    }

    /// Starts a worker in every planned slot that has none.
    fn fill_slots(&mut self) {
        for slot in 1..=self.desired {
            if self.shutting_down {
                return;
            }
            if !self.occupied(slot) {
                self.spawn(slot);
            }
        }
    }

    fn occupied(&self, slot: u32) -> bool {
        self.workers.values().any(|w| w.slot == slot && !w.stopping)
    }

    fn spawn(&mut self, slot: u32) -> Option<u64> {
        let id = self.next_id;
        self.next_id += 1;
        match self.try_spawn(id, slot) {
            Ok(worker) => {
                self.workers.insert(id, worker);
                Some(id)
            }
            Err(e) => {
                let unrunnable = e.downcast_ref::<ExecFailed>().is_some_and(|ExecFailed(io)| {
                    matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied)
                        || io.raw_os_error() == Some(libc::ENOEXEC)
                });
                let program = self.opts.command.program.as_ref().map(|p| p.display().to_string());
                let program = program.unwrap_or_else(|| "(none)".to_owned());
                if unrunnable && !self.announced {
                    // Nothing has served yet and retrying cannot make an executable appear:
                    // stop like a configuration error. Once the pool serves, keep it serving.
                    say(format!("cannot start worker {slot} from {program}: {e:#}; stopping"));
                    self.exit_code = EXIT_CONFIG;
                    self.shutdown();
                } else {
                    say(format!("cannot start worker {slot} from {program}: {e:#}"));
                    self.respawn_later(slot, None);
                }
                None
            }
        }
    }

    fn try_spawn(&self, id: u64, slot: u32) -> anyhow::Result<Worker> {
        // A private notify socket per worker, so a READY=1 can only come from that worker.
        let path = self.runtime_dir.path().join(format!("notify-{id}.sock"));
        let sock = UnixDatagram::bind(&path)?;
        let mut child =
            self.opts.command.command(slot, &path.to_string_lossy())?.spawn().map_err(ExecFailed)?;
        let pid = child.id().unwrap_or(0);

        let tx = self.tx.clone();
        // Detached: it reports the exit and ends by itself.
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Event::Exited { id, status });
        });
        let tx = self.tx.clone();
        let listener = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let _cleanup = RemoveOnDrop(path);
            while let Ok(n) = sock.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send(Event::Notify { id, text }).is_err() {
                    return;
                }
            }
        });
        let tx = self.tx.clone();
        let timeout = self.opts.ready_timeout;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = tx.send(Event::ReadyTimeout { id });
        });
        Ok(Worker {
            slot,
            pid,
            ready: false,
            stopping: false,
            started: Instant::now(),
            tasks: vec![listener, timer],
        })
    }

    fn terminate(&mut self, id: u64) {
        if let Some(w) = self.workers.get_mut(&id).filter(|w| !w.stopping) {
            w.stopping = true;
            signal_pid(w.pid, libc::SIGTERM);
        }
    }

    fn respawn_later(&mut self, slot: u32, lived: Option<Duration>) {
        let previous = self.backoff.get(&slot).copied();
        let delay = match (previous, lived) {
            (_, Some(l)) if l >= STABLE_AFTER => FIRST_BACKOFF,
            (Some(p), _) => (p * 2).min(MAX_BACKOFF),
            (None, _) => FIRST_BACKOFF,
        };
        self.backoff.insert(slot, delay);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::Respawn { slot });
        });
    }

    fn exited(&mut self, id: u64, status: std::io::Result<ExitStatus>) {
        let Some(w) = self.workers.remove(&id) else { return };
        for task in &w.tasks {
            task.abort();
        }
        let config_error = matches!(&status, Ok(s) if s.code() == Some(i32::from(EXIT_CONFIG)));
        let in_roll = self.roll.as_ref().and_then(|r| r.swapping).is_some_and(|(new, _)| new == id);
        if in_roll {
            if let Some(roll) = &mut self.roll {
                roll.swapping = None;
            }
            if w.stopping {
                // Removed on purpose (SIGTTOU or shutdown): go on with the other slots.
                if !self.shutting_down {
                    self.step_roll();
                }
                return;
            }
            // The replacement never became ready: the old worker keeps serving.
            say(format!(
                "the new worker {} {}{}; rolling restart stopped, the old workers keep serving",
                w.slot,
                describe(&status),
                if config_error { " (a configuration error: fix it, then send SIGHUP again)" } else { "" }
            ));
            self.roll = None;
            self.roll_again = false;
            if !self.occupied(w.slot) && !config_error {
                // Its old worker died meanwhile: the slot must not stay empty.
                self.respawn_later(w.slot, None);
            }
            return;
        }
        if self.shutting_down || w.stopping {
            if !self.shutting_down {
                self.report_status();
            }
            return;
        }
        if config_error && !self.announced {
            say(format!(
                "worker {} (pid {}) exited with status {EXIT_CONFIG}: a configuration error (its message is above); stopping",
                w.slot, w.pid
            ));
            self.exit_code = EXIT_CONFIG;
            self.shutdown();
            return;
        }
        if config_error {
            // The configuration changed under a serving pool: restarting would only loop, and
            // stopping would take the healthy workers down too.
            say(format!(
                "worker {} (pid {}) exited with status {EXIT_CONFIG}: a configuration error (its message is above); \
                 slot {} stays empty until the configuration is fixed and SIGHUP is sent",
                w.slot, w.pid, w.slot
            ));
            self.report_status();
            return;
        }
        let lived = w.started.elapsed();
        self.respawn_later(w.slot, Some(lived));
        say(format!(
            "worker {} (pid {}) {}; replacing it in {:?}",
            w.slot,
            w.pid,
            describe(&status),
            self.backoff[&w.slot]
        ));
        self.report_status();
    }

    fn became_ready(&mut self, id: u64) {
        let Some(w) = self.workers.get_mut(&id) else { return };
        if w.ready {
            return;
        }
        w.ready = true;
        if let Some(timer) = w.tasks.pop() {
            timer.abort();
        }
        if let Some(roll) = &mut self.roll {
            if let Some((_, old)) = roll.swapping.filter(|(new, _)| *new == id) {
                roll.swapping = None;
                self.terminate(old);
                self.step_roll();
            }
        }
        if !self.announced && (1..=self.desired).all(|s| self.ready_in(s)) {
            self.announced = true;
            let pids: Vec<String> = self.workers.values().map(|w| w.pid.to_string()).collect();
            // A closed stdout (e.g. `| head -1`) must not stop the launcher.
            let _ = writeln!(
                std::io::stdout(),
                "coreiix-plan up: {} workers ready (pids {})",
                self.desired,
                pids.join(" ")
            );
            self.opts.notifier.ready(&self.status_line());
        } else {
            self.report_status();
        }
    }

    fn ready_in(&self, slot: u32) -> bool {
        self.workers.values().any(|w| w.slot == slot && w.ready && !w.stopping)
    }

    fn status_line(&self) -> String {
        let ready = (1..=self.desired).filter(|&s| self.ready_in(s)).count();
        format!("{ready}/{} workers ready", self.desired)
    }

    fn report_status(&self) {
        if self.announced {
            self.opts.notifier.status(&self.status_line());
        }
    }

    fn start_roll(&mut self) {
        if self.shutting_down {
            return;
        }
        // Slots left empty (e.g. after a configuration error) are filled first.
        self.fill_slots();
        if self.roll.is_some() {
            self.roll_again = true;
            return;
        }
        let mut slots: Vec<u32> =
            self.workers.values().filter(|w| w.ready && !w.stopping).map(|w| w.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        self.roll = Some(Roll { pending: slots.into(), swapping: None });
        self.step_roll();
    }

    /// Starts the next slot's replacement, or finishes the roll.
    fn step_roll(&mut self) {
        while let Some(slot) = self.roll.as_mut().and_then(|r| r.pending.pop_front()) {
            let old = self
                .workers
                .iter()
                .find(|(_, w)| w.slot == slot && w.ready && !w.stopping)
                .map(|(id, _)| *id);
            let Some(old) = old else { continue };
            if let Some(new) = self.spawn(slot) {
                if let Some(roll) = &mut self.roll {
                    roll.swapping = Some((new, old));
                }
                return;
            }
        }
        if self.roll.take().is_some() {
            say("rolling restart done".into());
            if std::mem::take(&mut self.roll_again) {
                self.start_roll();
            }
        }
    }
}

fn signal_pid(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; pid is a child we started.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// The worker executable could not be started (as opposed to, say, its notify socket).
#[derive(Debug)]
struct ExecFailed(std::io::Error);

impl std::fmt::Display for ExecFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ExecFailed {}

/// Removes a worker's notify socket once nobody listens on it.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
