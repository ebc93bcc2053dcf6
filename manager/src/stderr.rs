//! Instances' stderr, line by line: give the pipe a large buffer (so that a
//! stopped or slow manager does not stall an instance that logs), split the
//! pipe's bytes into whole lines (never cutting one mid-line unless it
//! outgrows [`MAX_LINE`]) and ration them per service so that a crash loop
//! cannot flood the log. Reading the pipe and writing the log are the
//! loop's.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The capture pipe's buffer: how much an instance can write to stderr
/// unread (while the manager is stopped or busy) before its write blocks.
/// Capped by `/proc/sys/fs/pipe-max-size` (1 MiB by default). The kernel
/// allocates the pages only as they fill.
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// Gives a capture pipe [`PIPE_SIZE`] bytes of buffer, or as much as the
/// system allows; on failure the pipe keeps the kernel's default (64 KiB),
/// said once in the log.
pub(crate) fn enlarge_pipe(fd: impl AsFd) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(PIPE_SIZE);
    let size = i32::try_from(PIPE_SIZE.min(max)).unwrap_or(i32::MAX);
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            crate::log::warning!(
                None,
                None,
                "unable to enlarge an instance's stderr pipe to {size} bytes: {e} (it keeps the default; an instance can then block on stderr sooner while charond does not read)"
            );
        }
    }
}

/// A line longer than this is logged in pieces marked `[continued]`.
pub(crate) const MAX_LINE: usize = 16 * 1024;
/// Lines a service may log per second, on average.
pub(crate) const LINES_PER_SEC: u32 = 100;
/// Lines a service may log in a burst.
pub(crate) const BURST: u32 = 200;

/// Bytes not yet ending in a newline, plus the last whole line seen.
#[derive(Debug, Default)]
pub(crate) struct LineBuf {
    partial: Vec<u8>,
    /// Last complete non-empty line (for exit reasons).
    last: String,
}

impl LineBuf {
    /// Adds bytes, returning the whole lines they complete (without their
    /// newline).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = clean(&self.partial);
                self.partial.clear();
                self.keep(&line);
                out.push(line);
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    let mut line = clean(&self.partial);
                    line.push_str(" [continued]");
                    self.partial.clear();
                    out.push(line);
                }
            }
        }
        out
    }

    /// The last complete non-empty line (at most 512 characters).
    pub(crate) fn last(&self) -> &str {
        &self.last
    }

    /// At end of stream: the unterminated rest, if any.
    pub(crate) fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let line = clean(&self.partial);
        self.partial.clear();
        self.keep(&line);
        Some(line)
    }

    fn keep(&mut self, line: &str) {
        if !line.trim().is_empty() {
            self.last = line.chars().take(512).collect();
        }
    }
}

/// A log-safe line: invalid UTF-8 replaced, a trailing `\r` dropped, and
/// other control characters (escape sequences, NUL) shown as `\u{..}` so
/// that an instance cannot forge or garble the manager's log lines.
fn clean(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A token bucket of lines per service, counting what it drops.
#[derive(Debug)]
pub(crate) struct RateLimit {
    tokens: f64,
    last: Instant,
    /// Lines dropped since the last summary.
    dropped: u64,
}

impl RateLimit {
    pub(crate) fn new(now: Instant) -> RateLimit {
        RateLimit {
            tokens: f64::from(BURST),
            last: now,
            dropped: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * f64::from(LINES_PER_SEC)).min(f64::from(BURST));
    }

    /// May a line be logged now? Counts it as dropped if not.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// The count of dropped lines to report, once there is room to log a
    /// summary again (at most every second).
    pub(crate) fn summary(&mut self, now: Instant) -> Option<u64> {
        self.refill(now);
        if self.dropped > 0 && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn splits_whole_lines_only() {
        let mut b = LineBuf::default();
        assert!(b.push(b"hel").is_empty());
        assert_eq!(b.push(b"lo\nwor"), ["hello"]);
        assert_eq!(b.push(b"ld\n\n"), ["world", ""]);
        assert_eq!(b.last, "world");
        assert_eq!(b.push(b"tail"), Vec::<String>::new());
        assert_eq!(b.finish().as_deref(), Some("tail"));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        let mut b = LineBuf::default();
        let out = b.push(b"crlf\r\n\x1b[31mred\x00\ttab\n");
        assert_eq!(out, ["crlf", "\\u{1b}[31mred\\u{0}\ttab"]);
    }

    #[test]
    fn overlong_lines_are_split_not_lost() {
        let mut b = LineBuf::default();
        let long = vec![b'x'; MAX_LINE + 10];
        let out = b.push(&long);
        assert_eq!(out.len(), 1);
        assert!(out[0].ends_with("[continued]"));
        assert_eq!(b.finish().map(|s| s.len()), Some(10));
    }

    #[test]
    fn rate_limit_drops_and_summarises() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(t0);
        let admitted = (0..BURST + 50).filter(|_| r.admit(t0)).count();
        assert_eq!(admitted, BURST as usize);
        assert_eq!(r.summary(t0), None);
        assert_eq!(r.summary(t0 + Duration::from_secs(1)), Some(50));
        assert_eq!(r.summary(t0 + Duration::from_secs(2)), None);
    }
}
