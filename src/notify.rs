//! Talking to the service manager (`sd_notify`): READY, STATUS, STOPPING, WATCHDOG.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a silent no-op. Whether the socket and
//! watchdog are set is read once in `main`; sending only reads the environment, never changes it.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::config::Environment;
use crate::settings::NOTIFY_SOCKET;

#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier {
    enabled: bool,
    /// Half the watchdog interval, when systemd asked for watchdog pings.
    pub watchdog_every: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`. Call from `main`.
    pub fn from_env(env: &Environment) -> Notifier {
        let enabled = env.get(&NOTIFY_SOCKET).is_some();
        let watchdog_every =
            sd_notify::watchdog_enabled().filter(|d| enabled && !d.is_zero()).map(|interval| interval / 2);
        Notifier { enabled, watchdog_every }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                tracing::debug!("sd_notify failed: {e}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}
