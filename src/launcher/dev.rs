//! The `dev` profile's reload loop: watchexec notices a change, cargo rebuilds the worker, and
//! only a successful build replaces the running worker (the same rolling restart as SIGHUP).
//! The socket stays open the whole time, so a request made during a rebuild waits in the
//! backlog and is answered.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How to install the tools the loop needs, for error messages.
pub const WATCHEXEC_HINT: &str =
    "install watchexec with `cargo install --locked watchexec-cli` (or use `nix develop`)";

pub struct DevLoop {
    /// The checkout holding Coreiix's Cargo.toml.
    pub root: PathBuf,
}

impl DevLoop {
    /// A dev loop is possible where the current directory is a Coreiix checkout.
    pub fn detect() -> Option<DevLoop> {
        let root = std::env::current_dir().ok()?;
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).ok()?;
        manifest.lines().any(|l| l.trim() == "name = \"coreiix\"").then_some(DevLoop { root })
    }

    /// Builds the worker; returns the executable's path, or the build's failure.
    pub async fn build(&self) -> anyhow::Result<PathBuf> {
        let mut child = tokio::process::Command::new("cargo")
            .args(["build", "--bin", "coreiix", "--message-format=json-render-diagnostics"])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // A launcher stopped mid-build takes its build down with it.
            .kill_on_drop(true)
            .spawn()
            .context("cannot run cargo (install Rust from https://rustup.rs or use `nix develop`)")?;
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut executable = None;
        while let Some(line) = lines.next_line().await? {
            if let Some(path) = artifact_executable(&line) {
                executable = Some(path);
            }
        }
        let status = child.wait().await?;
        match executable {
            Some(path) if status.success() => Ok(path),
            _ => bail!("cargo build failed ({status}); the running worker keeps serving"),
        }
    }

    /// Starts watchexec; each change to the sources sends this process SIGHUP.
    pub fn watch(&self) -> anyhow::Result<tokio::process::Child> {
        let me = std::process::id().to_string();
        tokio::process::Command::new("watchexec")
            .args(["--postpone", "--debounce", "300ms", "--exts", "rs,toml,lock"])
            .args(["--watch", "src", "--watch", "Cargo.toml", "--watch", "Cargo.lock"])
            .args(["--", "kill", "-HUP", &me])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run watchexec: {WATCHEXEC_HINT}"))
    }
}

/// The `executable` of cargo's `compiler-artifact` message for the `coreiix` binary.
fn artifact_executable(line: &str) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" || msg["target"]["name"] != "coreiix" {
        return None;
    }
    let path = Path::new(msg["executable"].as_str()?);
    Some(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_worker_executable_in_cargo_messages() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"coreiix","kind":["bin"]},"executable":"/t/debug/coreiix"}"#;
        assert_eq!(artifact_executable(line), Some(PathBuf::from("/t/debug/coreiix")));
        let lib =
            r#"{"reason":"compiler-artifact","target":{"name":"coreiix","kind":["lib"]},"executable":null}"#;
        assert_eq!(artifact_executable(lib), None);
        assert_eq!(artifact_executable("not json"), None);
    }
}
