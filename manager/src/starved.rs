//! The manager's own resource failures: charond out of file descriptors
//! (`EMFILE`), the system out of them (`ENFILE`), out of memory
//! (`ENOMEM`), or `fork` refused (`EAGAIN`). They are the manager's
//! problem, not a service's: they are logged as such, never counted as a
//! launch failure and never put a service into backoff. A service left
//! without the instances it wants is *starved*: the manager tries again on
//! its own pacing (`RETRY`), and while such a service has no instance at all
//! its clients get `Unavailable` at once, with a reason that names the
//! manager's problem. What to start on a retry is the automaton's decision
//! (`Event::Resume`).
//!
//! This file holds the manager's side of it ([`Starvation`]: the retry
//! time and the spare fd) and what a failed call means; the loop's work on
//! a starved service (logging, the watch, the fast-fail answers) is
//! `runtime/starved.rs`'s.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long the manager waits before it tries again to start what its own
/// resource failure kept from starting.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// The manager's side of starvation: when to retry, and a spare fd that is
/// given up for a moment to answer a client when no fd is left.
pub(crate) struct Starvation {
    retry_at: Option<Instant>,
    spare: Option<OwnedFd>,
}

impl Starvation {
    /// With its spare fd (`/dev/null`) open.
    pub(crate) fn new() -> Starvation {
        Starvation {
            retry_at: None,
            spare: open_spare(),
        }
    }

    /// A start failed for want of resources: the retry is due [`RETRY`]
    /// after the first such failure since the last retry. Returns when
    /// (the caller sets that deadline).
    pub(crate) fn schedule(&mut self, now: Instant) -> Instant {
        *self.retry_at.get_or_insert(now + RETRY)
    }

    /// True (once) when the retry is due at `now`; the spare fd is taken
    /// back then.
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        if self.retry_at.is_none_or(|t| t > now) {
            return false;
        }
        self.retry_at = None;
        self.take_back_spare();
        true
    }

    /// Whole seconds until the retry (at least 1), for a client's
    /// `retry_after`.
    pub(crate) fn retry_after(&self, now: Instant) -> u32 {
        self.retry_at.map_or(1, |t| {
            let left = t.saturating_duration_since(now);
            u32::try_from(left.as_millis().div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }

    /// Closes the spare fd so that one `accept` can succeed with none
    /// left; false if it is already given up.
    pub(crate) fn give_up_spare(&mut self) -> bool {
        self.spare.take().is_some()
    }

    /// Opens the spare fd again (once the connection it made room for is
    /// closed).
    pub(crate) fn take_back_spare(&mut self) {
        if self.spare.is_none() {
            self.spare = open_spare();
        }
    }
}

fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// charond's open fds and its soft fd limit, from `/proc/self/fd` and
/// `getrlimit`; None where they cannot be read (no `/proc`, or not even
/// one fd left to read it with).
pub(crate) fn fd_use() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    // The directory's own fd is listed too: not counted.
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .count()
        .saturating_sub(1);
    Some((open as u64, soft))
}

/// Raises charond's soft `RLIMIT_NOFILE` to its hard limit, as the usual
/// daemons do: each instance costs the manager two fds. Returns the soft
/// limit before and after.
///
/// # Errors
///
/// The error of `getrlimit` or `setrlimit`.
pub(crate) fn raise_fd_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}

/// What a failed system call says about the manager's own resources, or
/// None when it is not a resource failure (the service's problem, or a
/// bug).
pub(crate) fn resource_failure(e: &io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error()? {
        libc::EMFILE => "charond is out of file descriptors (EMFILE)",
        libc::ENFILE => "the system is out of file descriptors (ENFILE)",
        libc::ENOMEM | libc::ENOBUFS => "charond is out of memory (ENOMEM)",
        libc::EAGAIN => "fork was refused (EAGAIN: process limit or memory)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_are_the_managers_and_others_are_not() {
        for (errno, word) in [
            (libc::EMFILE, "EMFILE"),
            (libc::ENFILE, "ENFILE"),
            (libc::ENOMEM, "ENOMEM"),
            (libc::EAGAIN, "EAGAIN"),
        ] {
            let why = resource_failure(&io::Error::from_raw_os_error(errno));
            assert!(why.is_some_and(|w| w.contains(word)), "{errno}: {why:?}");
        }
        for errno in [libc::ENOENT, libc::EACCES, libc::EINVAL] {
            assert_eq!(resource_failure(&io::Error::from_raw_os_error(errno)), None);
        }
        assert_eq!(resource_failure(&io::Error::other("no errno")), None);
    }

    #[test]
    fn the_retry_is_due_once_a_second_after_the_first_failure() {
        let t0 = Instant::now();
        let mut st = Starvation::new();
        assert!(!st.take_due(t0 + RETRY));
        assert_eq!(st.retry_after(t0), 1);
        assert_eq!(st.schedule(t0), t0 + RETRY);
        // A later failure does not push the retry back.
        assert_eq!(st.schedule(t0 + RETRY / 2), t0 + RETRY);
        assert_eq!(st.retry_after(t0), 1);
        assert_eq!(st.retry_after(t0 + RETRY * 2), 1);
        assert!(!st.take_due(t0));
        assert!(st.take_due(t0 + RETRY));
        assert!(!st.take_due(t0 + RETRY));
    }

    #[test]
    fn the_spare_is_given_up_once_and_taken_back() {
        let mut st = Starvation::new();
        assert!(st.give_up_spare());
        assert!(!st.give_up_spare());
        st.take_back_spare();
        assert!(st.give_up_spare());
    }
}
