//! The catalogue of every environment variable Coreiix reads.
//!
//! Code reads variables only through [`crate::config::Environment`], which takes a
//! [`Setting`] from this list, so the catalogue cannot drift from the code; a test checks that
//! `.env.example` and the README list exactly these.

/// Who sets a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Operator configuration: process environment or the env file.
    Config,
    /// Set by systemd, systemfd or `coreiix-plan up` (the process environment only).
    Protocol,
}

/// One environment variable.
#[derive(Debug)]
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    pub kind: Kind,
}

macro_rules! settings {
    ($($ident:ident: $kind:ident, $default:expr, $doc:expr;)*) => {
        $(pub const $ident: Setting = Setting {
            name: stringify!($ident),
            default: $default,
            doc: $doc,
            kind: Kind::$kind,
        };)*
        /// Every variable, in documentation order.
        pub const ALL: &[&Setting] = &[$(&$ident),*];
    };
}

settings! {
    DEPLOYMENT_PROFILE: Config, "dev",
        "Deployment profile: dev (1 worker, auto-reload), small (2 workers), enterprise (CPUs x 2 + 1 workers).";
    WORKERS: Config, "from the profile",
        "Number of worker processes, 1 to 1024; overrides the profile.";
    COREIIX_CPUS: Config, "detected",
        "CPUs to plan for, 1 to 4096; default: what this process may use (affinity and cgroup quota).";
    COREIIX_THREADS: Config, "CPUs / workers, at least 1",
        "Runtime threads per worker, 1 to 256; 1 runs a single-threaded runtime.";
    COREIIX_ENV_FILE: Config, "/etc/coreiix/coreiix.env if present, else ./.env if present",
        "Env file to read (KEY=value lines); a file named here must exist.";
    COREIIX_LISTEN: Config, "127.0.0.1:8000",
        "Address to bind when no socket is inherited: HOST:PORT, [IPv6]:PORT, or unix:/path.";
    COREIIX_INSTANCE: Config, "1",
        "This worker's instance number (systemd passes %i; the launcher its slot).";
    COREIIX_DRAIN_TIMEOUT: Config, "30",
        "Seconds a stopping worker waits for in-flight requests, 0 to 3600.";
    COREIIX_REQUEST_TIMEOUT: Config, "30",
        "Seconds a request may take before it is answered 503, 1 to 3600.";
    COREIIX_HEADER_TIMEOUT: Config, "10",
        "Seconds a client has to send a request's headers, 1 to 600; also how long an idle keep-alive connection stays open.";
    COREIIX_MAX_HEADER_BYTES: Config, "16384",
        "Largest request head (request line and headers) in bytes, 8192 to 1048576; larger gets 431.";
    COREIIX_MAX_BODY_BYTES: Config, "65536",
        "Largest request body in bytes, 0 to 1073741824; larger gets 413.";
    COREIIX_LOG: Config, "info",
        "Log filter in tracing's syntax, e.g. warn or info,coreiix::access=off.";
    COREIIX_DIAGNOSTICS: Config, "false",
        "true enables GET /debug/delay?ms=N, a slow endpoint for drain and load tests.";
    COREIIX_ACCEPT: Config, "thread",
        "How workers accept: thread (an accept thread, fair across workers) or runtime (its epoll).";
    COREIIX_WORKER_BIN: Config, "coreiix next to coreiix-plan",
        "Worker executable that coreiix-plan up starts.";
    COREIIX_READY_TIMEOUT: Config, "60",
        "Seconds coreiix-plan waits for a started worker's READY=1, 1 to 3600.";
    LISTEN_FDS: Protocol, "unset",
        "Number of inherited listening sockets, from fd 3 (socket activation).";
    LISTEN_FDS_FIRST_FD: Protocol, "3",
        "First inherited fd, if not 3 (an extension of systemfd, read by listenfd).";
    LISTEN_PID: Protocol, "unset",
        "PID that the inherited sockets are meant for.";
    LISTEN_FDNAMES: Protocol, "unset",
        "Names of the inherited sockets.";
    NOTIFY_SOCKET: Protocol, "unset",
        "Where READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 are sent.";
    WATCHDOG_USEC: Protocol, "unset",
        "Watchdog interval; the worker pings at half of it.";
    WATCHDOG_PID: Protocol, "unset",
        "PID the watchdog is meant for.";
    JOURNAL_STREAM: Protocol, "unset",
        "Set by systemd when stderr is the journal: logs become structured journal entries.";
}

/// The catalogued setting with this name.
pub fn find(name: &str) -> Option<&'static Setting> {
    ALL.iter().copied().find(|s| s.name == name)
}

/// The known name closest to an unknown one, for "did you mean" hints.
pub fn closest(name: &str) -> Option<&'static str> {
    ALL.iter()
        .filter(|s| s.kind == Kind::Config)
        .map(|s| (strsim::jaro_winkler(name, s.name), s.name))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}
