//! Starting one worker: the LISTEN_FDS protocol by hand, exactly as systemd does it, including
//! a `LISTEN_PID` that names the worker itself.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context as _;

use crate::config::{Config, Environment};
use crate::plan::Plan;
use crate::settings;
use crate::socket::StdListener;

/// Inherited fds start here in the child, as the protocol says.
const FIRST_FD: RawFd = 3;
/// Room for the decimal PID in `LISTEN_PID=`, plus its terminating NUL.
const PID_DIGITS: usize = 12;

/// How to start a worker; reused for every spawn.
pub struct WorkerCommand {
    pub program: Option<PathBuf>,
    /// The environment every worker gets (before its slot and notify socket are added).
    env: Vec<(String, String)>,
    /// The listening sockets, kept at fd numbers above any the child will be given.
    fds: Vec<OwnedFd>,
    /// The originals, kept open so that fds 3.. stay taken in the launcher: a pipe that
    /// spawning opens (std reports exec errors through one) can then never land where the
    /// child's dup2 would overwrite it.
    _originals: Vec<StdListener>,
}

impl WorkerCommand {
    pub fn new(
        program: Option<PathBuf>,
        plan: &Plan,
        config: &Config,
        base: &Environment,
        listeners: Vec<StdListener>,
    ) -> anyhow::Result<WorkerCommand> {
        // The plan travels in the environment, which beats the env file, so every worker sizes
        // itself exactly as planned here (command-line overrides included).
        let mut ours: Vec<(&str, String)> = vec![
            (settings::DEPLOYMENT_PROFILE.name, plan.profile.name().to_owned()),
            (settings::WORKERS.name, plan.workers.to_string()),
            (settings::COREIIX_CPUS.name, plan.cpus.to_string()),
            (settings::COREIIX_THREADS.name, plan.threads.to_string()),
            (settings::LISTEN_FDS.name, listeners.len().to_string()),
            (settings::LISTEN_FDNAMES.name, vec!["coreiix"; listeners.len()].join(":")),
        ];
        if let Some(file) = &config.file {
            ours.push((settings::COREIIX_ENV_FILE.name, file.path().display().to_string()));
        }
        // Our own socket-activation and watchdog variables are not the worker's; the slot,
        // notify socket and LISTEN_PID are set per spawn.
        let dropped = [
            settings::LISTEN_PID.name,
            settings::LISTEN_FDS_FIRST_FD.name,
            settings::WATCHDOG_USEC.name,
            settings::WATCHDOG_PID.name,
            settings::NOTIFY_SOCKET.name,
            settings::COREIIX_INSTANCE.name,
        ];
        let mut env: Vec<(String, String)> = base
            .iter()
            .filter(|(k, _)| !dropped.contains(k) && !ours.iter().any(|(o, _)| o == k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        env.extend(ours.into_iter().map(|(k, v)| (k.to_owned(), v)));

        let mut fds = Vec::new();
        for listener in &listeners {
            // Move each socket out of the range 3..3+n (F_DUPFD picks the lowest free fd at or
            // above its argument) so that placing them in the child never overwrites one not
            // yet placed.
            let above = FIRST_FD + listeners.len() as RawFd;
            // SAFETY: F_DUPFD_CLOEXEC returns a new fd that we own, or -1.
            let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("cannot duplicate the listening socket");
            }
            // SAFETY: `fd` was just created and is owned by nothing else.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(WorkerCommand { program, env, fds, _originals: listeners })
    }

    /// A command for `slot`, reporting to the notify socket at `notify`.
    pub fn command(&self, slot: u32, notify: &str) -> anyhow::Result<tokio::process::Command> {
        let program = self.program.as_ref().context("no worker executable yet")?;
        let mut exec = Exec::new(program, &self.env, slot, notify)?;
        let fds: Vec<RawFd> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let parent = std::process::id() as libc::pid_t;

        let mut cmd = tokio::process::Command::new(program);
        cmd.stdin(Stdio::null())
            // Its own process group: a terminal's Ctrl-C reaches only the launcher, which then
            // drains each worker once instead of every worker seeing two signals.
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: between fork and exec this calls only async-signal-safe functions (dup2,
        // prctl, getpid, execve) and writes into memory prepared before the fork; it
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &fd) in fds.iter().enumerate() {
                    // dup2 clears FD_CLOEXEC on the copy, so the worker inherits it.
                    if libc::dup2(fd, FIRST_FD + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // A worker must not outlive a launcher killed with SIGKILL. The signal is tied to
                // the forking thread, which is why the launcher's runtime is single-threaded;
                // and if the launcher died before prctl took effect, give up now.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the launcher exited while starting a worker"));
                }
                exec.run()
            });
        }
        Ok(cmd)
    }
}

/// An `execve` prepared before the fork, so that the child only has to write its own PID
/// into `LISTEN_PID=` (which only the child knows) and exec.
struct Exec {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// The buffers `envp_ptrs` and `pid_at` point into: kept alive, never read directly.
    _envp: Vec<Vec<u8>>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Where the PID digits go, inside one of `envp`'s buffers.
    pid_at: *mut u8,
}

// SAFETY: the raw pointers point into buffers owned by the same value, which moves as a whole.
unsafe impl Send for Exec {}
unsafe impl Sync for Exec {}

impl Exec {
    fn new(
        program: &std::path::Path,
        env: &[(String, String)],
        slot: u32,
        notify: &str,
    ) -> anyhow::Result<Exec> {
        let cstring =
            |bytes: &[u8]| CString::new(bytes).context("a NUL byte in the worker's command or environment");
        let program = cstring(program.as_os_str().as_bytes())?;
        let argv = vec![program.clone()];
        let mut envp: Vec<Vec<u8>> = Vec::with_capacity(env.len() + 3);
        let per_spawn = [
            (settings::COREIIX_INSTANCE.name, slot.to_string()),
            (settings::NOTIFY_SOCKET.name, notify.to_owned()),
        ];
        for (k, v) in env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(per_spawn.iter().map(|(k, v)| (*k, v.as_str())))
        {
            let entry = cstring(format!("{k}={v}").as_bytes())?;
            envp.push(entry.into_bytes_with_nul());
        }
        let mut listen_pid = format!("{}=", settings::LISTEN_PID.name).into_bytes();
        let digits_from = listen_pid.len();
        listen_pid.resize(digits_from + PID_DIGITS, 0);
        envp.push(listen_pid);
        let last = envp.len() - 1;
        // SAFETY: `digits_from` is within the buffer just pushed; its heap storage never moves.
        let pid_at = unsafe { envp[last].as_mut_ptr().add(digits_from) };

        let argv_ptrs = argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        let envp_ptrs = envp.iter().map(|e| e.as_ptr().cast()).chain([std::ptr::null()]).collect();
        Ok(Exec { program, _argv: argv, argv_ptrs, _envp: envp, envp_ptrs, pid_at })
    }

    /// In the forked child: fill in `LISTEN_PID` and exec. Returns only on failure.
    fn run(&mut self) -> std::io::Result<()> {
        // SAFETY: getpid is async-signal-safe; the digits fit in PID_DIGITS - 1 bytes (a pid
        // is at most 10 digits) and the buffer stays NUL-terminated.
        unsafe {
            let mut pid = libc::getpid() as u32;
            let mut digits = [0u8; PID_DIGITS];
            let mut n = 0;
            loop {
                digits[n] = b'0' + (pid % 10) as u8;
                n += 1;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            for i in 0..n {
                *self.pid_at.add(i) = digits[n - 1 - i];
            }
            *self.pid_at.add(n) = 0;
            libc::execve(self.program.as_ptr(), self.argv_ptrs.as_ptr(), self.envp_ptrs.as_ptr());
        }
        Err(std::io::Error::last_os_error())
    }
}
