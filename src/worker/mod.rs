//! One worker process: takes its listening socket, serves HTTP with axum, reports to systemd,
//! and drains gracefully on SIGTERM/SIGINT.

pub mod app;
pub mod metrics;
mod serve;

use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, Environment, Value};
use crate::error::ConfigError;
use crate::logging::Logging;
use crate::notify::Notifier;
use crate::plan::{self, Overrides, Plan};
use crate::settings::{self, Setting};
use crate::socket::{ListenAddr, StdListener};

/// Everything a worker needs, read before its runtime starts.
#[derive(Debug)]
pub struct WorkerSettings {
    pub plan: Plan,
    pub instance: u32,
    pub listen: ListenAddr,
    pub drain_timeout: Duration,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub diagnostics: bool,
    pub accept: AcceptMode,
}

/// How a worker accepts connections on its (shared) listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptMode {
    /// poll(2) and a non-blocking accept on a thread of its own, sharing bursts out among the
    /// workers (fair).
    Thread,
    /// The runtime's epoll: every worker is woken for every connection.
    Runtime,
}

impl WorkerSettings {
    pub fn from_config(config: &Config) -> Result<WorkerSettings, ConfigError> {
        let plan = plan::plan(&Overrides::default(), config, plan::detect_cpus())?;
        let get = |s: &'static Setting| {
            config
                .value(s)
                .unwrap_or(Value { text: s.default.to_owned(), origin: crate::config::Origin::Default })
        };
        let seconds = |s, min, max| get(s).parse_in_range(min, max).map(Duration::from_secs);
        Ok(WorkerSettings {
            instance: get(&settings::COREIIX_INSTANCE).parse_in_range(1, 1_000_000)? as u32,
            listen: ListenAddr::parse(&get(&settings::COREIIX_LISTEN))?,
            drain_timeout: seconds(&settings::COREIIX_DRAIN_TIMEOUT, 0, 3600)?,
            request_timeout: seconds(&settings::COREIIX_REQUEST_TIMEOUT, 1, 3600)?,
            header_timeout: seconds(&settings::COREIIX_HEADER_TIMEOUT, 1, 600)?,
            max_header_bytes: get(&settings::COREIIX_MAX_HEADER_BYTES).parse_in_range(8192, 1 << 20)?
                as usize,
            max_body_bytes: get(&settings::COREIIX_MAX_BODY_BYTES).parse_in_range(0, 1 << 30)?,
            diagnostics: get(&settings::COREIIX_DIAGNOSTICS).parse_bool()?,
            accept: {
                let v = get(&settings::COREIIX_ACCEPT);
                match v.text.trim() {
                    "thread" => AcceptMode::Thread,
                    "runtime" => AcceptMode::Runtime,
                    _ => return Err(v.invalid("thread or runtime")),
                }
            },
            plan,
        })
    }
}

/// Checks everything a worker would read from `config`, as a worker starting now would.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    WorkerSettings::from_config(config)?;
    Logging::from_config(config)?;
    Ok(())
}

/// The worker's `main`: reads all configuration and takes the sockets on this one thread,
/// then starts the runtime sized by the plan and serves until told to stop.
pub fn main() -> anyhow::Result<()> {
    let env = Environment::capture();
    let notifier = Notifier::from_env(&env);
    let config = Config::from_sources(env, None)?;
    let settings = WorkerSettings::from_config(&config)?;
    Logging::from_config(&config)?.init("coreiix");
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }

    let mut listeners = StdListener::inherited(&config.env)?;
    if listeners.is_empty() {
        listeners.push(settings.listen.bind()?);
    }

    let threads = settings.plan.threads as usize;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(serve::serve(settings, listeners, notifier))
}
