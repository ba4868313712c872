//! A real systemd, booted as PID 1 of its own namespaces, for integration tests.
//!
//! Thin wrapper around `tests/support/systemd-box.sh` (read its header for how the box
//! is built). Needs root and systemd; there is no skip mode: if the box cannot boot,
//! [`SystemdBox::start`] panics with the reason and the tail of the box's log.
//!
//! Inside the box, `/` is a throw-away overlay of the host's `/`: build output under the
//! repository is visible, and files written inside never reach the host. The box has
//! its own `/tmp` (host `/tmp` is not visible) but shares the host's network, so pick
//! ports that do not collide with other tests running at the same time.
//!
//! ```ignore
//! let b = SystemdBox::start();
//! b.write_file("/etc/systemd/system/x.service", "[Service]\nExecStart=/bin/true\n");
//! b.sh_ok("systemctl daemon-reload && systemctl start x.service");
//! // `b` powers off when dropped.
//! ```
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Upper bound for one command run with [`SystemdBox::sh`], so a hung command fails the
/// test instead of hanging it. Override with `SYSTEMD_BOX_CMD_TIMEOUT` (seconds).
const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(300);

/// A running box. Powered off (and its temporary files removed) on drop.
pub struct SystemdBox {
    pid: u32,
    stopped: bool,
}

fn script() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let this = Path::new(file!());
    let this = if this.is_absolute() { this.to_path_buf() } else { manifest.join(this) };
    let beside = this.with_file_name("systemd-box.sh");
    if beside.is_file() { beside } else { manifest.join("tests/support/systemd-box.sh") }
}

fn cmd_timeout() -> String {
    std::env::var("SYSTEMD_BOX_CMD_TIMEOUT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_CMD_TIMEOUT.as_secs().to_string())
}

fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl SystemdBox {
    /// Boots a box and waits until its systemd has finished booting ("running" or
    /// "degraded"). Panics with the reason and the box log tail on failure.
    pub fn start() -> SystemdBox {
        let script = script();
        // The repository and the build output must be visible inside even when they live
        // under /tmp or /run, which the box replaces with its own.
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let build = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
            .filter(|dir| !dir.starts_with(&manifest));
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&manifest)
            .args(build)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("systemd box: cannot run {}: {e}", script.display()));
        if !out.status.success() {
            panic!("systemd box failed to start\n{}", describe(&out));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pid = stdout
            .trim()
            .parse::<u32>()
            .unwrap_or_else(|_| panic!("systemd box: `start` printed no PID\n{}", describe(&out)));
        SystemdBox { pid, stopped: false }
    }

    /// The box's PID 1 as seen from the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn command(&self, stdin: Stdio, cmd: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(script())
            .arg("exec")
            .arg(self.pid.to_string())
            .args(["timeout", "-k", "5", &cmd_timeout(), "sh", "-c", cmd])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs `sh -c cmd` inside the box (as root, clean environment, cwd `/`).
    pub fn sh(&self, cmd: &str) -> Output {
        self.command(Stdio::null(), cmd)
            .output()
            .unwrap_or_else(|e| panic!("systemd box: cannot run `{cmd}`: {e}"))
    }

    /// Like [`sh`](Self::sh), but panics unless the command succeeds; returns its stdout.
    pub fn sh_ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        if !out.status.success() {
            panic!("command failed in systemd box: {cmd}\n{}", describe(&out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `contents` to `path` inside the box (creating parent directories).
    pub fn write_file(&self, path: &str, contents: impl AsRef<[u8]>) {
        let mut child = self
            .command(Stdio::piped(), r#"mkdir -p "$(dirname "$0")" && cat > "$0""#)
            .arg(path)
            .spawn()
            .unwrap_or_else(|e| panic!("systemd box: cannot write {path}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(contents.as_ref())
            .unwrap_or_else(|e| panic!("systemd box: cannot write {path}: {e}"));
        let out = child.wait_with_output().expect("wait for writer");
        if !out.status.success() {
            panic!("systemd box: writing {path} failed\n{}", describe(&out));
        }
    }

    /// Powers the box off now; panics if that fails. (Dropping the box does the same.)
    pub fn stop(mut self) {
        self.stopped = true;
        if let Err(msg) = self.power_off() {
            panic!("{msg}");
        }
    }

    fn power_off(&self) -> Result<(), String> {
        let out = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("systemd box: cannot run stop: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("systemd box {} did not stop cleanly\n{}", self.pid, describe(&out)))
        }
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Err(msg) = self.power_off() {
            // Panicking while already unwinding would abort the test binary.
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}
