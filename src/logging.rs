//! Logging: structured journal entries when stderr is the journal, readable lines otherwise.

use std::os::fd::AsRawFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;
use crate::error::ConfigError;
use crate::settings::{COREIIX_LOG, JOURNAL_STREAM};

/// How to log, decided in `main` from the configuration.
#[derive(Debug)]
pub struct Logging {
    filter: EnvFilter,
    journal: bool,
}

impl Logging {
    pub fn from_config(config: &Config) -> Result<Logging, ConfigError> {
        let value = config.value_or_default(&COREIIX_LOG);
        let filter = EnvFilter::builder().parse(value.text.trim()).map_err(|e| {
            value.invalid(&format!("a tracing filter such as info or warn,coreiix=debug ({e})"))
        })?;
        let journal = config.env.get(&JOURNAL_STREAM).is_some_and(stderr_is);
        Ok(Logging { filter, journal })
    }

    /// Installs the subscriber. With the journal unreachable it falls back to stderr.
    pub fn init(self, identifier: &str) {
        let registry = tracing_subscriber::registry().with(self.filter);
        if self.journal {
            match tracing_journald::layer() {
                Ok(layer) => {
                    let layer = layer.with_field_prefix(None).with_syslog_identifier(identifier.to_owned());
                    registry.with(layer).init();
                    return;
                }
                Err(e) => eprintln!("{identifier}: journald unreachable ({e}); logging to stderr"),
            }
        }
        use std::io::IsTerminal;
        let ansi = std::io::stderr().is_terminal();
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).init();
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`) names the file stderr is, as systemd documents.
fn stderr_is(journal_stream: &str) -> bool {
    let Some((dev, ino)) = journal_stream.split_once(':') else { return false };
    // SAFETY: fstat fills a plain struct for a valid fd (stderr).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(std::io::stderr().as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}
