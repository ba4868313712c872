//! Helpers shared by the integration tests: the real binaries, real sockets, a tiny HTTP/1.1
//! client, a bounded load generator and a reader for sd_notify datagrams.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod systemd_box;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const WORKER: &str = env!("CARGO_BIN_EXE_coreiix");
pub const PLANNER: &str = env!("CARGO_BIN_EXE_coreiix-plan");

/// A command for one of our binaries with a clean configuration, run in `dir` (so no stray
/// `./.env` is read) and with an empty env file named explicitly.
pub fn command(binary: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir);
    // Nothing of the test runner's own configuration may leak into the child.
    for setting in coreiix::settings::ALL {
        cmd.env_remove(setting.name);
    }
    let empty = dir.join("empty.env");
    if !empty.exists() {
        std::fs::write(&empty, "").unwrap();
    }
    cmd.env("COREIIX_ENV_FILE", empty).env("COREIIX_LOG", "warn");
    cmd
}

/// A listening TCP socket on a free loopback port.
pub fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A free loopback port (bound and released; fine for tests that bind it right away).
pub fn free_port() -> u16 {
    loopback_listener().1.port()
}

/// Passes `fd` to the child as fd 3 with `LISTEN_FDS=1`, as systemd does.
pub fn pass_fd_3(cmd: &mut Command, fd: RawFd) {
    cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "coreiix.socket");
    // SAFETY: dup2 is async-signal-safe; it only duplicates an fd the parent owns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A child process that is killed (by its PID) if the test ends early.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc { child: cmd.stdin(Stdio::null()).spawn().expect("spawn") }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits at most `limit` for the exit.
    pub fn wait_for(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process {} did not exit within {limit:?}", self.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP response, as far as tests care.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    /// The `pid` field of a `GET /` body.
    pub fn pid(&self) -> Option<u32> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    }
}

/// `GET path` on a new connection (`Connection: close`), bounded by `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(ErrorKind::UnexpectedEof, format!("incomplete response: {text:?}"))
    })?;
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidData, format!("bad status line: {head:?}"))
        })?;
    Ok(Response { status, headers: head.to_owned(), body: body.to_owned() })
}

/// Polls `GET path` until it answers 200 or `limit` passes.
pub fn wait_http_ok(addr: SocketAddr, path: &str, limit: Duration) -> Response {
    let deadline = Instant::now() + limit;
    loop {
        match get(addr, path, Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => return r,
            other => {
                assert!(Instant::now() < deadline, "no 200 from {addr}{path} within {limit:?}: {other:?}")
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Polls `check` every 25 ms until it returns true or `limit` passes.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    /// Connections refused: the socket was not there.
    pub refused: u64,
    /// Other failures: resets, timeouts, non-200 answers.
    pub failed: u64,
    pub errors: Vec<String>,
    /// Requests answered per worker PID.
    pub by_pid: BTreeMap<u32, u64>,
}

/// A bounded load: `clients` threads sending `GET /` on fresh connections until stopped or
/// until `limit` passes, whichever is first.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut r = LoadReport::default();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        match get(addr, "/", Duration::from_secs(10)) {
                            Ok(resp) if resp.status == 200 => {
                                r.ok += 1;
                                if let Some(pid) = resp.pid() {
                                    *r.by_pid.entry(pid).or_default() += 1;
                                }
                            }
                            Ok(resp) => {
                                r.failed += 1;
                                r.errors.push(format!("status {}", resp.status));
                            }
                            Err(e) if e.kind() == ErrorKind::ConnectionRefused => r.refused += 1,
                            Err(e) => {
                                r.failed += 1;
                                r.errors.push(e.to_string());
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Lets the load run for `d`, then stops it.
    pub fn finish_after(self, d: Duration) -> LoadReport {
        std::thread::sleep(d);
        self.finish()
    }

    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().unwrap();
            total.ok += r.ok;
            total.refused += r.refused;
            total.failed += r.failed;
            total.errors.extend(r.errors);
            for (pid, n) in r.by_pid {
                *total.by_pid.entry(pid).or_default() += n;
            }
        }
        total
    }
}

/// A real sd_notify socket: a Unix datagram socket whose path goes in `NOTIFY_SOCKET`.
pub struct NotifySocket {
    pub path: PathBuf,
    socket: UnixDatagram,
    pub received: Mutex<Vec<String>>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        NotifySocket { path, socket, received: Mutex::new(Vec::new()) }
    }

    /// Reads datagrams until one has a line starting with `prefix`, or `limit` passes.
    pub fn wait_for(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) =
                self.received.lock().unwrap().iter().find(|m| m.lines().any(|l| l.starts_with(prefix)))
            {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix} within {limit:?}; got {:?}",
                self.received.lock().unwrap()
            );
            match self.socket.recv(&mut buf) {
                Ok(n) => self.received.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// The repository root (for files such as `.env.example`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
