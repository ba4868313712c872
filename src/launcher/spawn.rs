//! Starting one worker: the LISTEN_FDS protocol by hand, as systemd does it.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context as _;

use crate::config::Config;
use crate::plan::Plan;
use crate::settings;
use crate::socket::StdListener;

/// Inherited fds start here in the child, as the protocol says.
const FIRST_FD: RawFd = 3;

/// How to start a worker; cheap to reuse for every spawn.
pub struct WorkerCommand {
    pub program: Option<PathBuf>,
    env: Vec<(&'static str, OsString)>,
    /// The listening sockets, kept at fd numbers above any the child will be given.
    fds: Vec<OwnedFd>,
}

impl WorkerCommand {
    pub fn new(
        program: Option<PathBuf>,
        plan: &Plan,
        config: &Config,
        listeners: Vec<StdListener>,
    ) -> anyhow::Result<WorkerCommand> {
        // The plan travels in the environment, which beats the env file, so every worker sizes
        // itself exactly as planned here (command-line overrides included).
        let mut env: Vec<(&'static str, OsString)> = vec![
            (settings::DEPLOYMENT_PROFILE.name, plan.profile.name().into()),
            (settings::WORKERS.name, plan.workers.to_string().into()),
            (settings::COREIIX_CPUS.name, plan.cpus.to_string().into()),
            (settings::COREIIX_THREADS.name, plan.threads.to_string().into()),
            (settings::LISTEN_FDS.name, listeners.len().to_string().into()),
            (settings::LISTEN_FDNAMES.name, vec!["coreiix"; listeners.len()].join(":").into()),
        ];
        if let Some(file) = &config.file {
            env.push((settings::COREIIX_ENV_FILE.name, file.path().as_os_str().to_owned()));
        }
        let mut fds = Vec::new();
        for listener in &listeners {
            // Move each socket out of the range 3..3+n so that placing them in the child can
            // never overwrite one not yet placed.
            // SAFETY: F_DUPFD_CLOEXEC returns a new fd that we own, or -1.
            let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_FD + 64) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("cannot duplicate the listening socket");
            }
            // SAFETY: `fd` was just created and is owned by nothing else.
            fds.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
        Ok(WorkerCommand { program, env, fds })
    }

    /// A command for `slot`, reporting to the notify socket `notify` (abstract, `@...`).
    pub fn command(&self, slot: u32, notify: &str) -> anyhow::Result<tokio::process::Command> {
        let program = self.program.as_ref().context("no worker executable yet")?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(settings::COREIIX_INSTANCE.name, slot.to_string())
            .env(settings::NOTIFY_SOCKET.name, notify)
            // Our own watchdog and socket bookkeeping are not the worker's.
            .env_remove(settings::LISTEN_PID.name)
            .env_remove(settings::WATCHDOG_USEC.name)
            .env_remove(settings::WATCHDOG_PID.name)
            .stdin(Stdio::null())
            // Its own process group: a terminal's Ctrl-C reaches only the launcher, which then
            // drains each worker once instead of every worker seeing two signals.
            .process_group(0)
            .kill_on_drop(false);
        let fds: Vec<RawFd> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: between fork and exec this only calls async-signal-safe functions (dup2,
        // fcntl, prctl, getppid, kill) on fds owned by the parent, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &fd) in fds.iter().enumerate() {
                    // dup2 clears FD_CLOEXEC on the copy, so the worker inherits it.
                    if libc::dup2(fd, FIRST_FD + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // A worker must not outlive a launcher killed with SIGKILL.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        Ok(cmd)
    }
}
