//! `coreiix-plan`: the command line of the planner and of every way to run the plan.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, EnvFileChoice, Environment, Value};
use crate::error::{self, ConfigError};
use crate::plan::{self, Format, Overrides, Plan};
use crate::socket::ListenAddr;
use crate::{launcher, pool};

/// The name under which the binary acts as a systemd generator.
pub const GENERATOR_NAME: &str = "coreiix-generator";

#[derive(Debug, Parser)]
#[command(
    name = "coreiix-plan",
    version,
    about = "Plan, start and resize a pool of Coreiix workers",
    long_about = "Computes how many Coreiix workers to run (from this command line, the environment, \
                  the env file and the profile's default, strongest first) and runs that plan: \
                  without systemd (`up`), or on a systemd pool (`apply`, `status`, `restart`)."
)]
pub struct Cli {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Output format of the plan
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Deployment profile: dev, small or enterprise [env: DEPLOYMENT_PROFILE]
    #[arg(long, global = true, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Number of workers, 1 to 1024; overrides the profile [env: WORKERS]
    #[arg(long, global = true, value_name = "N")]
    pub workers: Option<String>,
    /// Plan for this many CPUs instead of detecting them [env: COREIIX_CPUS]
    #[arg(long, global = true, value_name = "N")]
    pub cpus: Option<String>,
    /// Env file to read instead of /etc/coreiix/coreiix.env or ./.env [env: COREIIX_ENV_FILE]
    #[arg(long, global = true, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the plan (the default command)
    Show,
    /// Check the whole configuration; exit 2 with the error if it is invalid
    Check {
        /// Run by the generator's error unit: fail even once the configuration is fixed,
        /// because coreiix.target was planned from the invalid one until a daemon-reload
        #[arg(long, hide = true)]
        planned_invalid: bool,
    },
    /// Run the plan without systemd: bind the socket once and supervise N workers
    Up {
        /// Address to listen on when no socket is inherited [env: COREIIX_LISTEN]
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Move a running systemd pool to a new plan without failing a request
    Apply {
        /// Also write the change to the env file, so it survives a reboot
        #[arg(long)]
        persist: bool,
    },
    /// Show the plan beside the running systemd instances
    Status,
    /// Restart the systemd instances one at a time, each waiting for READY
    Restart,
    /// Act as a systemd generator: write coreiix.target's wants into DIR
    #[command(hide = true)]
    Generate { normal_dir: PathBuf, early_dir: Option<PathBuf>, late_dir: Option<PathBuf> },
}

impl PlanArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides { profile: self.profile.clone(), workers: self.workers.clone(), cpus: self.cpus.clone() }
    }
}

/// Everything a command needs, read before any thread starts.
pub struct Context {
    pub env: Environment,
    pub config: Config,
    pub overrides: Overrides,
}

impl Context {
    pub fn load(args: &PlanArgs) -> Result<Context, ConfigError> {
        let env = Environment::capture();
        let config = Config::from_sources(env.clone(), args.env_file.as_deref())?;
        Ok(Context { env, config, overrides: args.overrides() })
    }

    /// What the systemd pool's generator and instances see: the system env file (or the one
    /// named on the command line or by `COREIIX_ENV_FILE`) and not this shell's environment,
    /// which the units do not inherit.
    pub fn load_for_pool(args: &PlanArgs) -> Result<Context, ConfigError> {
        let env = Environment::capture();
        let choice = EnvFileChoice::resolve_system(args.env_file.as_deref(), &env);
        let config = Config::load(Environment::default(), &choice)?;
        Ok(Context { env, config, overrides: args.overrides() })
    }

    pub fn plan(&self) -> Result<Plan, ConfigError> {
        plan::plan(&self.overrides, &self.config, plan::detect_cpus())
    }

    fn warn(&self) {
        for warning in self.config.warnings() {
            eprintln!("coreiix-plan: warning: {warning}");
        }
    }
}

pub fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let as_generator = std::path::Path::new(&argv0).file_name().is_some_and(|n| n == GENERATOR_NAME);
    let result = if as_generator {
        pool::generator::main(std::env::args_os().skip(1).map(PathBuf::from).collect())
    } else {
        run(Cli::parse())
    };
    match result {
        Ok(code) => code,
        Err(e) => error::report(if as_generator { GENERATOR_NAME } else { "coreiix-plan" }, &e),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let for_pool = matches!(cli.command, Some(Command::Apply { .. } | Command::Status | Command::Restart));
    let ctx = if for_pool { Context::load_for_pool(&cli.plan)? } else { Context::load(&cli.plan)? };
    ctx.warn();
    match cli.command.unwrap_or(Command::Show) {
        Command::Show => {
            let plan = ctx.plan()?;
            let mut out = std::io::stdout().lock();
            out.write_all(plan::render(&plan, cli.format).as_bytes()).context("cannot write the plan")?;
        }
        Command::Check { planned_invalid } => {
            let plan = ctx.plan()?;
            crate::worker::validate(&ctx.config)?;
            launcher::ready_timeout(&ctx.config)?;
            if ctx.config.value(&crate::settings::COREIIX_WORKER_BIN).is_some() {
                launcher::worker_binary(&ctx)?;
            }
            if planned_invalid {
                return Err(ConfigError::new(
                    "the configuration is valid now, but coreiix.target was planned from an invalid \
                     one: run systemctl daemon-reload, then systemctl start coreiix.target",
                )
                .into());
            }
            println!(
                "configuration OK: {} profile, {} worker{}",
                plan.profile,
                plan.workers,
                if plan.workers == 1 { "" } else { "s" }
            );
        }
        Command::Up { listen } => {
            let listen = listen.map(|text| Value::cli("--listen", text));
            return launcher::main(ctx, listen);
        }
        Command::Apply { persist } => pool::apply(&ctx, &cli.plan, persist)?,
        Command::Status => pool::status(&ctx)?,
        Command::Restart => pool::restart(&ctx)?,
        Command::Generate { normal_dir, early_dir, late_dir } => {
            let dirs = [Some(normal_dir), early_dir, late_dir].into_iter().flatten().collect();
            return pool::generator::main(dirs);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `--listen`/`COREIIX_LISTEN` for the front ends that bind.
pub fn listen_addr(cli: Option<Value>, config: &Config) -> Result<ListenAddr, ConfigError> {
    let setting = &crate::settings::COREIIX_LISTEN;
    let value = cli.unwrap_or_else(|| config.value_or_default(setting));
    ListenAddr::parse(&value)
}
