//! The config error: file, line, key and a message saying what would be
//! valid.
//!
//! This module only carries and prints errors; `raw.rs` and `validate.rs`
//! decide what is wrong, and the binary decides where errors are printed.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one config file (or in the config dir itself).
///
/// [`Display`](fmt::Display) prints `FILE:LINE: KEY: message`, leaving out
/// `:LINE` and `KEY: ` when they are `None`, so `charond --check` can print
/// errors as they are.
///
/// ```
/// use std::path::PathBuf;
/// use charon_manager::config::ConfigError;
/// let e = ConfigError {
///     file: PathBuf::from("conf/system.echo.0.raw.toml"),
///     line: Some(3),
///     key: Some("maximum-processes".into()),
///     message: "must be between 1 and 10000, but it is 0".into(),
/// };
/// assert_eq!(
///     e.to_string(),
///     "conf/system.echo.0.raw.toml:3: maximum-processes: must be between 1 and 10000, but it is 0",
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or, for a config dir that cannot be read, the dir).
    pub file: PathBuf,
    /// The 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// The key as written (`env.NAME` inside `env`), when one is at fault.
    pub key: Option<String>,
    /// What is wrong and what would be valid, lowercase.
    pub message: String,
}

impl ConfigError {
    /// An error with no place in the file (unreadable file, bad file name).
    pub(crate) fn whole_file(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            key: None,
            message: message.into(),
        }
    }

    /// The order errors are reported in: by file, then line, then key.
    fn sort(errors: &mut [ConfigError]) {
        errors.sort_by(|a, b| {
            (&a.file, a.line, &a.key, &a.message).cmp(&(&b.file, b.line, &b.key, &b.message))
        });
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Errors reported per file: a file of garbage must not flood the log.
pub(crate) const MAX_ERRORS_PER_FILE: usize = 50;

/// Collects the errors of one file, so that parsing and validation can go
/// on after a problem and report every one.
pub(crate) struct Errors {
    file: PathBuf,
    list: Vec<ConfigError>,
}

impl Errors {
    pub(crate) fn new(file: &Path) -> Errors {
        Errors {
            file: file.to_path_buf(),
            list: Vec::new(),
        }
    }

    /// Records a problem with `key` at `line`.
    pub(crate) fn at(&mut self, line: Option<usize>, key: &str, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            line,
            key: Some(key.to_string()),
            message: message.into(),
        });
    }

    /// Records a problem that belongs to no key (a syntax error).
    pub(crate) fn at_line(&mut self, line: Option<usize>, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            line,
            key: None,
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The errors in line order, at most [`MAX_ERRORS_PER_FILE`] of them
    /// and then one that counts the rest.
    pub(crate) fn into_vec(self) -> Vec<ConfigError> {
        let mut list = self.list;
        ConfigError::sort(&mut list);
        if list.len() > MAX_ERRORS_PER_FILE {
            let more = list.len() - MAX_ERRORS_PER_FILE;
            list.truncate(MAX_ERRORS_PER_FILE);
            list.push(ConfigError::whole_file(
                &self.file,
                format!("{more} more errors in this file not shown"),
            ));
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_errors_is_cut_and_counted() {
        let mut errors = Errors::new(Path::new("x.toml"));
        for line in (1..=120).rev() {
            errors.at(Some(line), "k", "bad");
        }
        let list = errors.into_vec();
        assert_eq!(list.len(), MAX_ERRORS_PER_FILE + 1);
        assert_eq!(list[0].line, Some(1));
        assert_eq!(list[MAX_ERRORS_PER_FILE - 1].line, Some(50));
        assert_eq!(
            list[MAX_ERRORS_PER_FILE].to_string(),
            "x.toml: 70 more errors in this file not shown"
        );
    }

    #[test]
    fn display_leaves_out_what_does_not_apply() {
        let mut e = ConfigError::whole_file(Path::new("d/x.toml"), "unable to read: gone");
        assert_eq!(e.to_string(), "d/x.toml: unable to read: gone");
        e.line = Some(7);
        assert_eq!(e.to_string(), "d/x.toml:7: unable to read: gone");
        e.key = Some("exec".into());
        assert_eq!(e.to_string(), "d/x.toml:7: exec: unable to read: gone");
    }
}
