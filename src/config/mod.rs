//! Reading configuration: a snapshot of the process environment plus the env file.
//!
//! Everything here runs in a plain `fn main`, before any thread exists: the snapshot is taken
//! once and the rest of the program only reads it.

mod env_file;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use env_file::{EnvFile, assigns};

use crate::error::ConfigError;
use crate::settings::{self, Kind, Setting};

/// The env file an installed host uses; the units, the generator and every `coreiix-plan`
/// command read it by default when it exists.
pub const SYSTEM_ENV_FILE: &str = "/etc/coreiix/coreiix.env";
/// The env file a checkout uses when there is no system one.
pub const LOCAL_ENV_FILE: &str = ".env";

/// Where a value came from, in the short form the plan's JSON uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Cli,
    Env,
    EnvFile,
    Default,
    Detected,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cli => "cli",
            Source::Env => "env",
            Source::EnvFile => "env-file",
            Source::Default => "default",
            Source::Detected => "detected",
        })
    }
}

/// Where a value came from, precisely enough for an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Cli { flag: &'static str },
    Env { name: &'static str },
    EnvFile { name: &'static str, path: PathBuf, line: usize },
    Default,
    Detected,
}

impl Origin {
    pub fn source(&self) -> Source {
        match self {
            Origin::Cli { .. } => Source::Cli,
            Origin::Env { .. } => Source::Env,
            Origin::EnvFile { .. } => Source::EnvFile,
            Origin::Default => Source::Default,
            Origin::Detected => Source::Detected,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Cli { flag } => write!(f, "{flag} on the command line"),
            Origin::Env { name } => write!(f, "the environment variable {name}"),
            Origin::EnvFile { name, path, line } => {
                write!(f, "{name} in {} line {line}", path.display())
            }
            Origin::Default => f.write_str("the default"),
            Origin::Detected => f.write_str("detection"),
        }
    }
}

/// A raw configuration value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub text: String,
    pub origin: Origin,
}

impl Value {
    pub fn cli(flag: &'static str, text: impl Into<String>) -> Value {
        Value { text: text.into(), origin: Origin::Cli { flag } }
    }

    /// Parses the value, or explains which value, from where, and what is accepted.
    pub fn parse<T: std::str::FromStr>(&self, accepted: &str) -> Result<T, ConfigError> {
        self.text.trim().parse().map_err(|_| self.invalid(accepted))
    }

    /// Parses an integer and checks it lies in `min..=max`.
    pub fn parse_in_range(&self, min: u64, max: u64) -> Result<u64, ConfigError> {
        let accepted = format!("a whole number from {min} to {max}");
        let n: u64 = self.parse(&accepted)?;
        if (min..=max).contains(&n) { Ok(n) } else { Err(self.invalid(&accepted)) }
    }

    pub fn parse_bool(&self) -> Result<bool, ConfigError> {
        match self.text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(self.invalid("true or false (also 1/0, yes/no, on/off)")),
        }
    }

    /// The error for this value: names the value, its origin and what is accepted.
    pub fn invalid(&self, accepted: &str) -> ConfigError {
        ConfigError::new(format!("invalid value {:?} from {}: expected {accepted}", self.text, self.origin))
    }
}

/// A snapshot of the process environment, taken once before any thread starts.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// Reads the process environment. Call from `main` before starting threads.
    pub fn capture() -> Environment {
        Environment::from_pairs(
            std::env::vars_os()
                .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())),
        )
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Environment {
        Environment { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The value of a catalogued variable; empty values count as unset.
    pub fn get(&self, setting: &Setting) -> Option<&str> {
        self.vars.get(setting.name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn value(&self, setting: &'static Setting) -> Option<Value> {
        self.get(setting)
            .map(|text| Value { text: text.to_owned(), origin: Origin::Env { name: setting.name } })
    }

    /// Every variable, for handing the environment on to a child process.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `COREIIX_*` variables that no code reads: most likely typos.
    fn unknown_names(&self) -> impl Iterator<Item = &str> {
        self.vars
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with("COREIIX_") && settings::find(k).is_none())
    }
}

/// Which env file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvFileChoice {
    /// Named by `--env-file` or `COREIIX_ENV_FILE`: it must exist.
    Named { path: PathBuf, origin: Origin },
    /// A default location: read if it exists.
    Optional(PathBuf),
    /// No env file at all.
    None,
}

impl EnvFileChoice {
    /// `--env-file`, else `COREIIX_ENV_FILE`, else the system file if it exists, else `./.env`.
    pub fn resolve(cli: Option<&Path>, env: &Environment) -> EnvFileChoice {
        if let Some(path) = cli {
            return EnvFileChoice::Named {
                path: path.to_owned(),
                origin: Origin::Cli { flag: "--env-file" },
            };
        }
        if let Some(path) = env.get(&settings::COREIIX_ENV_FILE) {
            return EnvFileChoice::Named {
                path: PathBuf::from(path),
                origin: Origin::Env { name: settings::COREIIX_ENV_FILE.name },
            };
        }
        if Path::new(SYSTEM_ENV_FILE).exists() {
            EnvFileChoice::Optional(PathBuf::from(SYSTEM_ENV_FILE))
        } else {
            EnvFileChoice::Optional(PathBuf::from(LOCAL_ENV_FILE))
        }
    }
}

impl EnvFileChoice {
    /// For what systemd runs (the generator, the pool commands): a named file, else only the
    /// system file; never `./.env`, which depends on where a command happens to run.
    pub fn resolve_system(cli: Option<&Path>, env: &Environment) -> EnvFileChoice {
        match EnvFileChoice::resolve(cli, env) {
            named @ EnvFileChoice::Named { .. } => named,
            _ => EnvFileChoice::Optional(PathBuf::from(SYSTEM_ENV_FILE)),
        }
    }
}

/// All configuration a process sees: the environment snapshot and the env file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub env: Environment,
    pub file: Option<EnvFile>,
}

impl Config {
    /// Reads the chosen env file. A named file that is missing is an error; a default one is not.
    pub fn load(env: Environment, choice: &EnvFileChoice) -> Result<Config, ConfigError> {
        let file = match choice {
            EnvFileChoice::None => None,
            EnvFileChoice::Optional(path) if !path.exists() => None,
            EnvFileChoice::Optional(path) => Some(EnvFile::read(path)?),
            EnvFileChoice::Named { path, origin } => {
                if !path.exists() {
                    return Err(ConfigError::new(format!(
                        "env file {} (from {origin}) does not exist: give an existing file, \
                         or leave it unset to use {SYSTEM_ENV_FILE} or ./{LOCAL_ENV_FILE} when present",
                        path.display()
                    )));
                }
                Some(EnvFile::read(path)?)
            }
        };
        Ok(Config { env, file })
    }

    /// Convenience for front ends: resolve, then load.
    pub fn from_sources(env: Environment, cli_env_file: Option<&Path>) -> Result<Config, ConfigError> {
        let choice = EnvFileChoice::resolve(cli_env_file, &env);
        Config::load(env, &choice)
    }

    /// A setting's value: the process environment first, then the env file.
    pub fn value(&self, setting: &'static Setting) -> Option<Value> {
        if let Some(v) = self.env.value(setting) {
            return Some(v);
        }
        if setting.kind == Kind::Protocol {
            return None;
        }
        self.file.as_ref().and_then(|f| f.value(setting))
    }

    /// A setting's value, or its catalogued default.
    pub fn value_or_default(&self, setting: &'static Setting) -> Value {
        self.value(setting).unwrap_or(Value { text: setting.default.to_owned(), origin: Origin::Default })
    }

    /// The strongest of a command-line value and this configuration.
    pub fn layered(&self, cli: Option<Value>, setting: &'static Setting) -> Option<Value> {
        cli.or_else(|| self.value(setting))
    }

    /// Warnings about settings nothing reads, each naming the closest known one.
    pub fn warnings(&self) -> Vec<String> {
        let hint = |name: &str| match settings::closest(name) {
            Some(known) => format!("; did you mean {known}?"),
            None => String::new(),
        };
        let mut out: Vec<String> = self
            .env
            .unknown_names()
            .map(|name| format!("unknown environment variable {name} is ignored{}", hint(name)))
            .collect();
        if let Some(file) = &self.file {
            for (name, line) in file.unknown_names() {
                out.push(format!(
                    "unknown setting {name} in {} line {line} is ignored{}",
                    file.path().display(),
                    hint(name)
                ));
            }
        }
        out
    }
}
