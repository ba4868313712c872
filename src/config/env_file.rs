//! The env file: `KEY=value` lines in the dotenv format (parsed by dotenvy), remembered with
//! the line each key came from so that errors can point at it.

use std::path::{Path, PathBuf};

use super::{Origin, Value};
use crate::error::ConfigError;
use crate::settings::{self, Kind, Setting};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    path: PathBuf,
    /// (key, value, 1-based line), in file order; a later duplicate wins.
    entries: Vec<(String, String, usize)>,
}

impl EnvFile {
    pub fn read(path: &Path) -> Result<EnvFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read env file {}: {e}", path.display())))?;
        EnvFile::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<EnvFile, ConfigError> {
        let mut entries = Vec::new();
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            match item {
                Ok((key, value)) => {
                    // The n-th assignment of a key is on the n-th line that assigns it.
                    let nth = entries.iter().filter(|(k, _, _): &&(String, String, usize)| *k == key).count();
                    let line = lines_of_key(text, &key).nth(nth).unwrap_or(0);
                    entries.push((key, value, line));
                }
                Err(dotenvy::Error::LineParse(bad, _)) => {
                    let line = line_of_text(text, &bad).unwrap_or(0);
                    return Err(ConfigError::new(format!(
                        "{} line {line}: cannot parse {:?}: expected KEY=value, a # comment or a blank line",
                        path.display(),
                        bad.lines().next().unwrap_or_default()
                    )));
                }
                Err(e) => {
                    return Err(ConfigError::new(format!("{}: {e}", path.display())));
                }
            }
        }
        Ok(EnvFile { path: path.to_owned(), entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of a setting; the last assignment in the file wins, and an empty one unsets.
    pub fn value(&self, setting: &'static Setting) -> Option<Value> {
        let (_, v, line) = self.entries.iter().rev().find(|(k, _, _)| k == setting.name)?;
        (!v.is_empty()).then(|| Value {
            text: v.clone(),
            origin: Origin::EnvFile { name: setting.name, path: self.path.clone(), line: *line },
        })
    }

    /// Keys that are not configuration settings, with their lines.
    pub fn unknown_names(&self) -> impl Iterator<Item = (&str, usize)> {
        self.entries.iter().filter_map(|(k, _, line)| match settings::find(k) {
            Some(s) if s.kind == Kind::Config => None,
            _ => Some((k.as_str(), *line)),
        })
    }
}

/// The lines (1-based) that assign `key` (`KEY=`, `export KEY=`, with optional spaces).
fn lines_of_key<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = usize> + 'a {
    text.lines().enumerate().filter(move |(_, line)| assigns(line, key)).map(|(i, _)| i + 1)
}

/// Whether a line of an env file assigns `key` (`KEY=`, `export KEY=`, optional spaces).
pub fn assigns(line: &str, key: &str) -> bool {
    let line = line.trim_start();
    let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
    line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// The first line whose content matches the start of a fragment dotenvy rejected.
fn line_of_text(text: &str, fragment: &str) -> Option<usize> {
    let first = fragment.lines().next()?.trim();
    text.lines().position(|line| line.trim() == first).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{DEPLOYMENT_PROFILE, WORKERS};

    #[test]
    fn values_remember_their_lines() {
        let f = EnvFile::parse(
            Path::new("x.env"),
            "# comment\nDEPLOYMENT_PROFILE=small\n\nexport WORKERS = 3\nWORKERS=\"4\"\n",
        )
        .unwrap();
        let w = f.value(&WORKERS).unwrap();
        assert_eq!(w.text, "4");
        assert_eq!(w.origin.to_string(), "WORKERS in x.env line 5");
        assert_eq!(f.value(&DEPLOYMENT_PROFILE).unwrap().text, "small");
    }

    #[test]
    fn a_later_empty_assignment_unsets() {
        let f = EnvFile::parse(Path::new("x.env"), "WORKERS=3\nWORKERS=\n").unwrap();
        assert_eq!(f.value(&WORKERS), None);
        let f = EnvFile::parse(Path::new("x.env"), "WORKERS=3\n#\nWORKERS=4\n").unwrap();
        assert_eq!(f.value(&WORKERS).unwrap().origin.to_string(), "WORKERS in x.env line 3");
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let err = EnvFile::parse(Path::new("bad.env"), "WORKERS=2\nthis is not valid\n").unwrap_err();
        assert!(err.0.starts_with("bad.env line 2: cannot parse"), "{err}");
    }

    #[test]
    fn unknown_keys_are_reported_with_lines() {
        let f = EnvFile::parse(Path::new("x.env"), "WORKRES=2\nCOREIIX_LOG=info\n").unwrap();
        assert_eq!(f.unknown_names().collect::<Vec<_>>(), vec![("WORKRES", 1)]);
    }
}
