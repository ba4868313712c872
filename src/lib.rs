//! Coreiix: an axum HTTP service run as N identical worker processes that share one
//! listening socket, sized by a deployment profile.
//!
//! The library holds all the logic; `src/bin/` holds two thin front ends:
//! - `coreiix`: one worker ([`worker`]);
//! - `coreiix-plan`: the planner ([`plan`]) and the ways to run the plan: without systemd
//!   ([`launcher`]) and with it ([`pool`], including the systemd generator).

pub mod cli;
pub mod config;
pub mod error;
pub mod launcher;
pub mod logging;
pub mod notify;
pub mod plan;
pub mod pool;
pub mod settings;
pub mod socket;
pub mod worker;

/// The service's name, as it appears in responses, logs and metrics.
pub const SERVICE_NAME: &str = "coreiix";
/// The package version, reported by `GET /` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
