//! Errors and exit statuses shared by both binaries.
//!
//! Status 2 means "the configuration is wrong": a supervisor (systemd's
//! `RestartPreventExitStatus=2`, or `coreiix-plan up`) must not restart on it. Status 1 is any
//! other failure, which a restart may cure.

use std::fmt;
use std::process::ExitCode;

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status for a runtime or startup failure that a restart may cure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a configuration error: restarting will not help.
pub const EXIT_CONFIG: u8 = 2;

/// A configuration error: names the value, where it came from and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The exit status for an error: [`EXIT_CONFIG`] if a [`ConfigError`] is anywhere in its chain.
pub fn exit_status(err: &anyhow::Error) -> u8 {
    if err.chain().any(|cause| cause.is::<ConfigError>()) { EXIT_CONFIG } else { EXIT_FAILURE }
}

/// Prints the whole error chain once, on one line, and turns it into an exit code.
pub fn report(program: &str, err: &anyhow::Error) -> ExitCode {
    eprintln!("{program}: error: {err:#}");
    ExitCode::from(exit_status(err))
}
