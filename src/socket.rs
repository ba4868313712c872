//! Listening sockets: the address syntax, binding, and taking over inherited sockets
//! (the `LISTEN_FDS` protocol of systemd, systemfd and `coreiix-plan up`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use anyhow::Context;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::{Environment, Value};
use crate::settings;

/// More inherited sockets than this is a mistake, not a configuration.
const MAX_INHERITED: u64 = 1024;
use crate::error::ConfigError;

/// Pending connections the kernel queues for us (systemd's default is 4096 too).
pub const BACKLOG: i32 = 4096;

/// Where to listen: `IP:PORT`, `[V6]:PORT`, or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(value: &Value) -> Result<ListenAddr, ConfigError> {
        let text = value.text.trim();
        if let Some(path) = text.strip_prefix("unix:") {
            if path.starts_with('/') {
                return Ok(ListenAddr::Unix(PathBuf::from(path)));
            }
        } else if let Ok(addr) = text.parse() {
            return Ok(ListenAddr::Tcp(addr));
        }
        Err(value.invalid("IP:PORT (e.g. 127.0.0.1:8000 or [::1]:8000) or unix:/absolute/path"))
    }

    /// Binds a non-blocking listening socket with a real backlog.
    pub fn bind(&self) -> anyhow::Result<StdListener> {
        let (domain, addr) = match self {
            ListenAddr::Tcp(a) => (Domain::for_address(*a), SockAddr::from(*a)),
            ListenAddr::Unix(p) => {
                remove_stale_socket(p);
                (Domain::UNIX, SockAddr::unix(p)?)
            }
        };
        let socket = Socket::new(domain, Type::STREAM.cloexec(), None)?;
        if matches!(self, ListenAddr::Tcp(_)) {
            // Restarting must not wait for TIME_WAIT connections of the previous run.
            socket.set_reuse_address(true)?;
        }
        socket.bind(&addr).with_context(|| format!("cannot bind {self}"))?;
        socket.listen(BACKLOG).with_context(|| format!("cannot listen on {self}"))?;
        StdListener::from_fd(socket.into())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Removes a Unix socket file left behind by a process that is gone (nobody accepts on it),
/// so that a restart can bind again; anything else at that path is left alone.
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    {
        let _ = std::fs::remove_file(path);
    }
}

/// A listening stream socket, still outside any async runtime.
#[derive(Debug)]
pub enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl StdListener {
    /// Checks that `fd` is a listening stream socket (TCP or Unix) and makes it non-blocking,
    /// as tokio requires.
    pub fn from_fd(fd: OwnedFd) -> anyhow::Result<StdListener> {
        let raw = fd.as_raw_fd();
        let kind = describe(raw);
        let listener = match kind {
            SocketKind::ListeningStream(libc::AF_INET | libc::AF_INET6) => {
                StdListener::Tcp(std::net::TcpListener::from(fd))
            }
            SocketKind::ListeningStream(libc::AF_UNIX) => {
                StdListener::Unix(std::os::unix::net::UnixListener::from(fd))
            }
            other => {
                return Err(ConfigError::new(format!(
                    "fd {raw} is not a listening TCP or Unix stream socket ({other}); \
                     pass one with the LISTEN_FDS protocol, or unset LISTEN_FDS to bind COREIIX_LISTEN"
                ))
                .into());
            }
        };
        match &listener {
            StdListener::Tcp(l) => l.set_nonblocking(true)?,
            StdListener::Unix(l) => l.set_nonblocking(true)?,
        }
        Ok(listener)
    }

    /// Every socket passed with `LISTEN_FDS`, validated; empty when none were passed.
    /// Must run before threads start: listenfd clears the protocol's variables.
    pub fn inherited(env: &Environment) -> anyhow::Result<Vec<StdListener>> {
        if let Some(count) = env.value(&settings::LISTEN_FDS) {
            count.parse_in_range(0, MAX_INHERITED)?;
        }
        let mut fds = listenfd::ListenFd::from_env();
        (0..fds.len())
            .filter_map(|i| fds.take_raw_fd(i).transpose())
            .map(|fd| {
                // SAFETY: the LISTEN_FDS protocol hands these fds to this process to own.
                let fd = unsafe { OwnedFd::from_raw_fd(fd?) };
                StdListener::from_fd(fd)
            })
            .collect()
    }

    pub fn local_addr(&self) -> String {
        match self {
            StdListener::Tcp(l) => l.local_addr().map(|a| a.to_string()),
            StdListener::Unix(l) => l.local_addr().map(|a| match a.as_pathname() {
                Some(p) => format!("unix:{}", p.display()),
                None => "unix:(unnamed)".to_owned(),
            }),
        }
        .unwrap_or_else(|e| format!("(unknown: {e})"))
    }

    pub fn as_raw_fd(&self) -> RawFd {
        match self {
            StdListener::Tcp(l) => l.as_raw_fd(),
            StdListener::Unix(l) => l.as_raw_fd(),
        }
    }
}

impl std::os::fd::AsFd for StdListener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            StdListener::Tcp(l) => l.as_fd(),
            StdListener::Unix(l) => l.as_fd(),
        }
    }
}

enum SocketKind {
    NotSocket,
    Unreadable(io::Error),
    NotListening,
    Datagram,
    ListeningStream(libc::c_int),
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketKind::NotSocket => f.write_str("it is not a socket"),
            SocketKind::Unreadable(e) => write!(f, "it cannot be inspected: {e}"),
            SocketKind::NotListening => f.write_str("it is a stream socket that is not listening"),
            SocketKind::Datagram => f.write_str("it is not a stream socket"),
            SocketKind::ListeningStream(family) => write!(f, "address family {family} is not supported"),
        }
    }
}

fn describe(fd: RawFd) -> SocketKind {
    let opt = |name| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`.
        let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut value).cast(), &mut len) };
        if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
    };
    match opt(libc::SO_TYPE) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => return SocketKind::NotSocket,
        Err(e) => return SocketKind::Unreadable(e),
        Ok(libc::SOCK_STREAM) => {}
        Ok(_) => return SocketKind::Datagram,
    }
    match (opt(libc::SO_ACCEPTCONN), opt(libc::SO_DOMAIN)) {
        (Ok(0), _) => SocketKind::NotListening,
        (Ok(_), Ok(family)) => SocketKind::ListeningStream(family),
        (Err(e), _) | (_, Err(e)) => SocketKind::Unreadable(e),
    }
}
