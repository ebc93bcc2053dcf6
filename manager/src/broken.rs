//! Broken config files: a file with errors for a key that has no running
//! service (at start-up, or a new file at a reload) does not vanish. Its
//! key is listed by `charon stats` and `ps` as `broken` with each error
//! (`FILE:LINE: KEY: message`), and its socket is bound so that a client
//! is told at once that the config is broken (an `Unavailable` answer whose
//! reason names the file) instead of "no such service". A reload that finds
//! the file fixed (or removed) takes the key off this list before the
//! service starts.
//!
//! Pure grouping ([`wanted`]) and a thin shell owning the sockets
//! ([`BrokenKeys`]); the event loop only routes readiness here.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use charon_protocol::{encode_response, Limits as WireLimits, Response};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use serde_json::{json, Value};

use crate::config::{ConfigError, ServiceConfig};
use crate::log::warning;
use crate::tokens::{token, Owner};

/// What clients are told to wait before they try again: the file needs a
/// person, so no short retry.
const RETRY_AFTER_S: u32 = 60;

/// One broken file: its path and every error in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BrokenFile {
    pub file: PathBuf,
    pub errors: Vec<String>,
}

/// The broken files by key: every file with errors whose key is not in
/// `running` (a running service keeps its previous config instead).
pub(crate) fn wanted(
    errors: &[ConfigError],
    running: impl Fn(&str) -> bool,
) -> BTreeMap<String, BrokenFile> {
    let mut out: BTreeMap<String, BrokenFile> = BTreeMap::new();
    for e in errors {
        let Ok(key) = crate::config::key_from_path(&e.file) else {
            continue;
        };
        let key = key.as_str().to_string();
        if running(&key) {
            continue;
        }
        out.entry(key)
            .or_insert_with(|| BrokenFile {
                file: e.file.clone(),
                errors: Vec::new(),
            })
            .errors
            .push(e.to_string());
    }
    out
}

/// The reason a client gets: the file, its first error, how many more.
pub(crate) fn reason(b: &BrokenFile) -> String {
    let mut r = format!(
        "the config file {} has errors, so the service does not run: {}",
        b.file.display(),
        b.errors.first().map_or("", String::as_str)
    );
    if b.errors.len() > 1 {
        r.push_str(&format!(" (and {} more)", b.errors.len() - 1));
    }
    r.push_str("; fix it, then `charon reload`");
    r
}

struct Entry {
    key: String,
    broken: BrokenFile,
    /// The bound socket; None if it could not be bound (still listed).
    listen: Option<(OwnedFd, PathBuf)>,
    fast_failed: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.listen {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The broken keys the manager answers for; an index is a token offset
/// (`Owner::Broken`), reused once its key is gone.
#[derive(Default)]
pub(crate) struct BrokenKeys {
    entries: Vec<Option<Entry>>,
}

impl BrokenKeys {
    /// Makes the list `want`: keys no longer wanted are dropped (socket
    /// closed and removed), new ones bound and watched, the others get
    /// their new errors.
    pub(crate) fn set(
        &mut self,
        reg: &Registry,
        run_dir: &Path,
        mut want: BTreeMap<String, BrokenFile>,
    ) {
        for slot in &mut self.entries {
            let Some(e) = slot else { continue };
            match want.remove(&e.key) {
                Some(b) => e.broken = b,
                None => {
                    if let Some((fd, _)) = &e.listen {
                        let _ = reg.deregister(&mut SourceFd(&fd.as_raw_fd()));
                    }
                    *slot = None;
                }
            }
        }
        for (key, broken) in want {
            let i = match self.entries.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.entries.push(None);
                    self.entries.len() - 1
                }
            };
            let listen = bind(reg, run_dir, &key, &broken, i);
            warning!(Some(&key), None, "not running: {}", reason(&broken));
            self.entries[i] = Some(Entry {
                key,
                broken,
                listen,
                fast_failed: 0,
            });
        }
    }

    /// Number of broken keys.
    pub(crate) fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// Connections wait on broken key `i`'s socket: answer each at once.
    pub(crate) fn ready(&mut self, i: usize) {
        let Some(Some(e)) = self.entries.get_mut(i) else {
            return;
        };
        let Some((fd, _)) = &e.listen else { return };
        let text = reason(&e.broken);
        let mut frame = Vec::new();
        let resp = Response::Unavailable {
            retry_after: RETRY_AFTER_S,
            reason: &text,
        };
        if encode_response(&resp, &WireLimits::default(), &mut frame).is_err() {
            return;
        }
        while let Ok(conn) = crate::sys::accept(fd.as_fd()) {
            crate::refuse::refuse(&conn, &frame);
            e.fast_failed += 1;
        }
    }

    /// Each broken key (only `key` if given) as `charon stats` lists it.
    pub(crate) fn stats(&self, key: Option<&str>) -> Vec<Value> {
        self.matching(key)
            .map(|e| {
                json!({
                    "key": e.key,
                    "state": "broken",
                    "config_file": e.broken.file.display().to_string(),
                    "config_errors": e.broken.errors,
                    "fast_failed": e.fast_failed,
                })
            })
            .collect()
    }

    /// Each broken key (only `key` if given) as `charon ps` lists it.
    pub(crate) fn ps(&self, key: Option<&str>) -> Vec<Value> {
        self.matching(key)
            .map(|e| {
                json!({
                    "key": e.key,
                    "config_file": e.broken.file.display().to_string(),
                    "config_errors": e.broken.errors,
                })
            })
            .collect()
    }

    fn matching<'a>(&'a self, key: Option<&'a str>) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .flatten()
            .filter(move |e| key.is_none_or(|k| e.key == k))
    }
}

/// Binds and watches the socket of broken key `key` (index `i`), with the
/// defaults a service socket has; a failure is logged and leaves the key
/// listed without a socket.
fn bind(
    reg: &Registry,
    run_dir: &Path,
    key: &str,
    broken: &BrokenFile,
    i: usize,
) -> Option<(OwnedFd, PathBuf)> {
    let k = crate::config::key_from_path(&broken.file).ok()?;
    let path = run_dir.join(k.socket_file_name());
    let c = ServiceConfig::defaults(k, broken.file.clone(), Vec::new());
    let (fd, path) = match crate::startup::bind_socket_at(&c, path) {
        Ok(b) => b,
        Err(e) => {
            warning!(
                Some(key),
                None,
                "unable to answer for the broken config: {e}"
            );
            return None;
        }
    };
    if let Err(e) = reg.register(
        &mut SourceFd(&fd.as_raw_fd()),
        token(Owner::Broken(i)),
        Interest::READABLE,
    ) {
        warning!(
            Some(key),
            None,
            "unable to watch the socket of the broken config: {e}"
        );
        let _ = std::fs::remove_file(&path);
        return None;
    }
    Some((fd, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(file: &str, line: usize, message: &str) -> ConfigError {
        ConfigError {
            file: PathBuf::from(file),
            line: Some(line),
            key: Some("maximum-processes".into()),
            message: message.into(),
        }
    }

    #[test]
    fn errors_are_grouped_by_key_and_running_keys_left_out() {
        let errors = [
            err("/c/a.b.0.raw.toml", 2, "too big"),
            err("/c/a.b.0.raw.toml", 5, "too small"),
            err("/c/x.y.1.raw.toml", 1, "bad"),
            err("/c/not-a-key.toml", 1, "ignored"),
        ];
        let w = wanted(&errors, |k| k == "x.y.1.raw");
        assert_eq!(w.len(), 1, "{w:?}");
        let b = &w["a.b.0.raw"];
        assert_eq!(b.file, PathBuf::from("/c/a.b.0.raw.toml"));
        assert_eq!(b.errors.len(), 2);
        assert!(b.errors[0].starts_with("/c/a.b.0.raw.toml:2: maximum-processes: too big"));
    }

    #[test]
    fn the_reason_names_the_file_and_the_first_error() {
        let b = BrokenFile {
            file: PathBuf::from("/c/a.b.0.raw.toml"),
            errors: vec!["/c/a.b.0.raw.toml:2: k: one".into(), "two".into()],
        };
        assert_eq!(
            reason(&b),
            "the config file /c/a.b.0.raw.toml has errors, so the service does not run: \
             /c/a.b.0.raw.toml:2: k: one (and 1 more); fix it, then `charon reload`"
        );
    }
}
