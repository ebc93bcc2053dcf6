//! One log line per event, to stderr or a log file (`--log-file`, reopened
//! on SIGUSR1 so logrotate needs no copytruncate): time, level, service key,
//! pid, what happened (`2026-11-21T17:40:00.123Z info system.echo.0.raw
//! pid=1234: started`); to systemd's journal, the `<N>` priority instead of
//! the time and level (`<6>system.echo.0.raw pid=1234: started`).
//! Formatting and the destination only; deciding what to log is left to
//! callers.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The log file and its path; None: stderr. A mutex although the loop is
/// one thread, because the `/metrics` thread may log too.
static FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Sends the log to `path` (appending) from now on.
///
/// # Errors
///
/// The file cannot be opened; the log stays where it was.
pub(crate) fn to_file(path: &Path) -> std::io::Result<()> {
    let f = open(path)?;
    let mut g = FILE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *g = Some((path.to_path_buf(), f));
    Ok(())
}

/// Reopens the log file at its path (SIGUSR1). If that fails, the old file
/// is kept and the failure is logged there.
pub(crate) fn reopen() {
    let mut g = FILE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some((path, _)) = g.as_ref() else {
        return;
    };
    let path = path.clone();
    let failed = match open(&path) {
        Ok(f) => {
            *g = Some((path.clone(), f));
            None
        }
        Err(e) => Some(e),
    };
    drop(g);
    match failed {
        None => line(
            Level::Info,
            None,
            None,
            format_args!("log reopened ({})", path.display()),
        ),
        Some(e) => line(
            Level::Warn,
            None,
            None,
            format_args!(
                "unable to reopen log file {}: {e}; still writing to the old one",
                path.display()
            ),
        ),
    }
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Info,
    Warn,
}

impl Level {
    /// The sd-daemon(3) priority prefix: `<6>` (SD_INFO), `<4>`
    /// (SD_WARNING).
    const fn journal_prefix(self) -> &'static str {
        match self {
            Level::Info => "<6>",
            Level::Warn => "<4>",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "info",
            Level::Warn => "warn",
        })
    }
}

/// True when stderr is systemd's journal stream: `JOURNAL_STREAM`
/// (`DEV:INODE`, systemd.exec(5)) names stderr's device and inode. Asked
/// once.
fn stderr_is_journal() -> bool {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let var = std::env::var("JOURNAL_STREAM").ok();
        nix::sys::stat::fstat(std::io::stderr())
            .is_ok_and(|st| journal_matches(var.as_deref(), st.st_dev, st.st_ino))
    })
}

/// `JOURNAL_STREAM`'s `DEV:INODE` (decimal) is this device and inode.
fn journal_matches(var: Option<&str>, dev: u64, ino: u64) -> bool {
    var.and_then(|v| v.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        .is_some_and(|(d, i)| d == dev && i == ino)
}

/// Writes one line. `key` and `pid` are omitted when not known. A failing
/// log is ignored: the manager must not stop because its log is gone.
/// To the journal (stderr is `JOURNAL_STREAM`), a line starts with its
/// `<N>` priority instead of the time and level: the journal keeps both.
pub(crate) fn line(level: Level, key: Option<&str>, pid: Option<i32>, msg: fmt::Arguments<'_>) {
    let mut g = FILE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let at = (g.is_some() || !stderr_is_journal()).then(SystemTime::now);
    let s = format_line(level, key, pid, msg, at);
    match g.as_mut() {
        Some((_, f)) => {
            let _ = f.write_all(s.as_bytes());
        }
        None => {
            let _ = std::io::stderr().lock().write_all(s.as_bytes());
        }
    }
}

/// One line: `TIME LEVEL KEY pid=PID: MESSAGE`, or with `at` None (the
/// journal) `<N>KEY pid=PID: MESSAGE`.
fn format_line(
    level: Level,
    key: Option<&str>,
    pid: Option<i32>,
    msg: fmt::Arguments<'_>,
    at: Option<SystemTime>,
) -> String {
    let mut head = Vec::with_capacity(4);
    if let Some(t) = at {
        head.push(timestamp(t));
        head.push(level.to_string());
    }
    head.extend(key.map(str::to_string));
    head.extend(pid.map(|p| format!("pid={p}")));
    let prefix = if at.is_none() {
        level.journal_prefix()
    } else {
        ""
    };
    if head.is_empty() {
        format!("{prefix}{msg}\n")
    } else {
        format!("{prefix}{}: {msg}\n", head.join(" "))
    }
}

/// `info` line.
macro_rules! info {
    ($key:expr, $pid:expr, $($arg:tt)*) => {
        $crate::log::line($crate::log::Level::Info, $key, $pid, format_args!($($arg)*))
    };
}

/// `warn` line, for a problem or a failure: the level says so once, so the
/// message reads `unable to <verb> <object>: <cause>` (no `warning:`).
macro_rules! warning {
    ($key:expr, $pid:expr, $($arg:tt)*) => {
        $crate::log::line($crate::log::Level::Warn, $key, $pid, format_args!($($arg)*))
    };
}

pub(crate) use info;
pub(crate) use warning;

/// RFC 3339 UTC with milliseconds, computed without a calendar crate.
pub(crate) fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's algorithm
/// (<http://howardhinnant.github.io/date_algorithms.html#civil_from_days>).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_start_with_the_priority_instead_of_time_and_level() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_283_200_123);
        let k = Some("a.b.0.raw");
        assert_eq!(
            format_line(Level::Warn, k, Some(7), format_args!("x: y"), Some(t)),
            "2026-11-21T17:46:40.123Z warn a.b.0.raw pid=7: x: y\n"
        );
        assert_eq!(
            format_line(Level::Warn, k, Some(7), format_args!("x"), None),
            "<4>a.b.0.raw pid=7: x\n"
        );
        assert_eq!(
            format_line(Level::Info, None, None, format_args!("started"), None),
            "<6>started\n"
        );
        assert_eq!(
            format_line(Level::Info, None, None, format_args!("started"), Some(t)),
            "2026-11-21T17:46:40.123Z info: started\n"
        );
    }

    #[test]
    fn journal_stream_must_name_this_device_and_inode() {
        assert!(journal_matches(Some("8:1234"), 8, 1234));
        assert!(!journal_matches(Some("8:1234"), 8, 1235));
        assert!(!journal_matches(Some("9:1234"), 8, 1234));
        assert!(!journal_matches(None, 8, 1234));
        assert!(!journal_matches(Some("garbage"), 8, 1234));
        assert!(!journal_matches(Some("8:"), 8, 0));
    }
    use std::time::Duration;

    /// The level is said once: a `warn` line's message does not start with
    /// the word warning again. Checked over the sources, since any module
    /// may log.
    #[test]
    fn no_message_repeats_the_level() {
        let mut dirs = vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        let mut offenders = Vec::new();
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let needle = ["\"warning", ": "].concat();
                    for (n, l) in text.lines().enumerate() {
                        if l.contains(&needle) {
                            offenders.push(format!("{}:{}", path.display(), n + 1));
                        }
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "messages that say the level again: {offenders:?}"
        );
    }

    #[test]
    fn formats_utc_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_283_200_123);
        assert_eq!(timestamp(t), "2026-11-21T17:46:40.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
