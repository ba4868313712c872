//! `coreiix-plan up`: runs the plan without systemd. Binds the socket once (or reuses one it
//! inherited), starts N `coreiix` workers that inherit it through `LISTEN_FDS` exactly as
//! under systemd, and supervises them.

mod dev;
mod spawn;
mod supervisor;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{self, Context};
use crate::config::Value;
use crate::error::ConfigError;
use crate::notify::Notifier;
use crate::settings::{COREIIX_READY_TIMEOUT, COREIIX_WORKER_BIN};
use crate::socket::StdListener;

pub use spawn::WorkerCommand;

/// The launcher's `main`: everything is read and the socket is bound before the (single
/// threaded) runtime starts.
pub fn main(ctx: Context, listen: Option<Value>) -> anyhow::Result<ExitCode> {
    let plan = ctx.plan()?;
    let addr = cli::listen_addr(listen, &ctx.config)?;
    let ready_timeout = ready_timeout(&ctx.config)?;
    let notifier = Notifier::from_env(&ctx.env);

    let mut listeners = StdListener::inherited(&ctx.env)?;
    let inherited = !listeners.is_empty();
    if !inherited {
        listeners.push(addr.bind()?);
    }
    let where_ = listeners.iter().map(StdListener::local_addr).collect::<Vec<_>>().join(", ");

    let dev = if plan.reload { dev::DevLoop::detect() } else { None };
    let program = match &dev {
        Some(_) => None, // built by the dev loop before the first worker starts
        None => Some(worker_binary(&ctx)?),
    };
    let command = WorkerCommand::new(program, &plan, &ctx.config, &ctx.env, listeners)?;

    // Writes to a closed stdout (e.g. `| head -1`) are ignored: serving matters more.
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "coreiix-plan up: {} profile, {} worker{}, {} thread{} each, on {where_}{}",
        plan.profile,
        plan.workers,
        if plan.workers == 1 { "" } else { "s" },
        plan.threads,
        if plan.threads == 1 { "" } else { "s" },
        if inherited { " (inherited socket)" } else { "" },
    );
    for note in &plan.notes {
        println!("note: {note}");
    }
    if plan.reload && dev.is_none() {
        println!(
            "note: auto-reload needs a Coreiix checkout (run `up` where its Cargo.toml is); serving without it"
        );
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(supervisor::run(supervisor::Options {
        command,
        workers: plan.workers,
        ready_timeout,
        notifier,
        dev,
    }))?;
    Ok(ExitCode::from(code))
}

fn is_executable(path: &std::path::Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `COREIIX_READY_TIMEOUT`: how long a new worker may take to send READY=1.
pub fn ready_timeout(config: &crate::config::Config) -> Result<Duration, ConfigError> {
    let value = config.value_or_default(&COREIIX_READY_TIMEOUT);
    Ok(Duration::from_secs(value.parse_in_range(1, 3600)?))
}

/// `COREIIX_WORKER_BIN`, else `coreiix` next to this executable.
pub fn worker_binary(ctx: &Context) -> anyhow::Result<PathBuf> {
    if let Some(v) = ctx.config.value(&COREIIX_WORKER_BIN) {
        let path = PathBuf::from(v.text.trim());
        if !is_executable(&path) {
            return Err(v.invalid("the path of an existing, executable coreiix binary").into());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let sibling = exe.with_file_name("coreiix");
    if is_executable(&sibling) {
        Ok(sibling)
    } else {
        Err(ConfigError::new(format!(
            "no worker executable at {} (next to coreiix-plan); build both binaries \
             (cargo build --release) or set {} to the coreiix executable",
            sibling.display(),
            COREIIX_WORKER_BIN.name
        ))
        .into())
    }
}
