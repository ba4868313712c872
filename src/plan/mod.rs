//! The plan: which profile, how many workers, whether auto-reload is on, how many CPUs were
//! counted, and where each answer came from. One pure function, [`plan`], computes it for
//! every front end (the CLI, the generator, the launcher and the workers themselves).

mod cpus;
mod report;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use cpus::detect_cpus;
pub use report::{Format, render};

use crate::config::{Config, Origin, Source, Value};
use crate::error::ConfigError;
use crate::settings::{COREIIX_CPUS, COREIIX_THREADS, DEPLOYMENT_PROFILE, WORKERS};

/// The documented ceiling for `WORKERS`.
pub const MAX_WORKERS: u64 = 1024;
/// The ceiling for `COREIIX_CPUS`.
pub const MAX_CPUS: u64 = 4096;
/// The ceiling for `COREIIX_THREADS`.
pub const MAX_THREADS: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Dev,
    Small,
    Enterprise,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Dev, Profile::Small, Profile::Enterprise];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Small => "small",
            Profile::Enterprise => "enterprise",
        }
    }

    /// The worker count this profile gives on its own.
    pub fn workers(self, cpus: u32) -> u32 {
        match self {
            Profile::Dev => 1,
            Profile::Small => 2,
            Profile::Enterprise => cpus.saturating_mul(2).saturating_add(1),
        }
    }

    fn parse(value: &Value) -> Result<Profile, ConfigError> {
        let wanted = value.text.trim().to_ascii_lowercase();
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == wanted)
            .ok_or_else(|| value.invalid("one of dev, small, enterprise"))
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Values given on a command line; they beat every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub profile: Option<String>,
    pub workers: Option<String>,
    pub cpus: Option<String>,
}

/// Where each answer of the plan came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sources {
    pub profile: Source,
    pub workers: Source,
    pub cpus: Source,
    pub threads: Source,
}

/// The same, in words, for explanations and errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origins {
    pub profile: String,
    pub workers: String,
    pub cpus: String,
    pub threads: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub profile: Profile,
    pub workers: u32,
    pub reload: bool,
    pub cpus: u32,
    /// Runtime threads per worker (1 = a single-threaded runtime).
    pub threads: u32,
    /// What the profile alone would have given.
    pub profile_workers: u32,
    pub sources: Sources,
    pub origins: Origins,
    /// The env file that was read, if any.
    pub env_file: Option<PathBuf>,
    /// Plain-language remarks (e.g. why auto-reload is off).
    pub notes: Vec<String>,
}

/// Computes the plan from the command line, the configuration and the detected CPU count.
///
/// Pure: no I/O, so every front end that calls it with the same inputs gets the same plan.
pub fn plan(cli: &Overrides, config: &Config, detected_cpus: u32) -> Result<Plan, ConfigError> {
    let cli_value = |flag, text: &Option<String>| text.as_ref().map(|t| Value::cli(flag, t.clone()));

    let profile_value = config.layered(cli_value("--profile", &cli.profile), &DEPLOYMENT_PROFILE);
    let (profile, profile_origin) = match &profile_value {
        Some(v) => (Profile::parse(v)?, v.origin.clone()),
        None => (Profile::Dev, Origin::Default),
    };

    let cpus_value = config.layered(cli_value("--cpus", &cli.cpus), &COREIIX_CPUS);
    let (cpus, cpus_origin) = match &cpus_value {
        Some(v) => (v.parse_in_range(1, MAX_CPUS)? as u32, v.origin.clone()),
        None => (detected_cpus.max(1), Origin::Detected),
    };

    let profile_workers = profile.workers(cpus).min(MAX_WORKERS as u32);
    let workers_value = config.layered(cli_value("--workers", &cli.workers), &WORKERS);
    let (workers, workers_origin) = match &workers_value {
        Some(v) => (v.parse_in_range(1, MAX_WORKERS)? as u32, v.origin.clone()),
        None => (profile_workers, Origin::Default),
    };

    let (threads, threads_origin) = match config.value(&COREIIX_THREADS) {
        Some(v) => (v.parse_in_range(1, MAX_THREADS)? as u32, v.origin),
        None => (threads_per_worker(cpus, workers), Origin::Default),
    };

    let mut notes = Vec::new();
    let reload = profile == Profile::Dev && workers == 1;
    if profile == Profile::Dev && workers > 1 {
        notes.push(format!(
            "auto-reload is off: it needs exactly one worker, and {workers_origin} asks for {workers}"
        ));
    }
    if profile_workers < profile.workers(cpus) {
        notes.push(format!("the profile's count was capped at {MAX_WORKERS} workers"));
    }

    Ok(Plan {
        profile,
        workers,
        reload,
        cpus,
        threads,
        profile_workers,
        sources: Sources {
            profile: profile_origin.source(),
            workers: workers_origin.source(),
            cpus: cpus_origin.source(),
            threads: threads_origin.source(),
        },
        origins: Origins {
            profile: match profile_origin {
                Origin::Default => "the default (no profile given)".to_owned(),
                other => other.to_string(),
            },
            workers: match workers_origin {
                Origin::Default => format!("the {profile} profile"),
                other => other.to_string(),
            },
            cpus: cpus_origin.to_string(),
            threads: threads_origin.to_string(),
        },
        env_file: config.file.as_ref().map(|f| f.path().to_owned()),
        notes,
    })
}

/// Threads per worker so that all workers together use about the CPUs granted, never fewer
/// than one: N multi-threaded runtimes on fewer cores only add context switches.
pub fn threads_per_worker(cpus: u32, workers: u32) -> u32 {
    (cpus / workers.max(1)).max(1)
}

#[cfg(test)]
mod tests;
