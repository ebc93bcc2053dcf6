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

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use charon_protocol::{encode_response, Limits as WireLimits, Response};

use crate::log::{info, warning};
use crate::refuse::{refuse, waiting};
use crate::runtime::Manager;
use crate::service::transition::Event;
use crate::services::Watch;

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

    /// When the next retry is due, if one is.
    pub(crate) const fn deadline(&self) -> Option<Instant> {
        self.retry_at
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

impl Manager {
    /// Service `s` could not get an instance because of the manager's own
    /// `problem`: log it as the manager's, retry later, and fast-fail its
    /// clients while it has no instance.
    pub(crate) fn starved(&mut self, s: usize, problem: &str) {
        let now = Instant::now();
        let retry_at = *self.starvation.retry_at.get_or_insert(now + RETRY);
        let svc = &mut self.services[s];
        let first = svc.starved.is_none();
        svc.starved = Some(format!(
            "charond cannot start an instance: {problem}; retrying"
        ));
        if first {
            warning!(
                Some(svc.key()),
                None,
                "unable to start an instance: {problem}: the manager's problem, not the service's (no backoff); retrying in {:.1}s",
                retry_at.saturating_duration_since(now).as_secs_f64()
            );
        }
        if self.live_count(s) == 0 && self.services[s].watch != Watch::Starved {
            self.set_watch(s, Watch::Starved);
        }
    }

    /// The retry is due: every starved service asks its automaton again
    /// what to start.
    pub(crate) fn starved_retry(&mut self, now: Instant) {
        if self.starvation.retry_at.is_none_or(|t| t > now) {
            return;
        }
        self.starvation.retry_at = None;
        self.starvation.take_back_spare();
        for s in self.services.ids() {
            if self.services[s].starved.is_none() {
                continue;
            }
            if self.services[s].watch == Watch::Starved {
                self.set_watch(s, Watch::Off);
            }
            let remaining = self.live_count(s);
            self.events.push_back((s, Event::Resume { remaining }));
        }
    }

    /// Answers every waiting connection of a starved service with
    /// Unavailable naming the manager's problem. With no fd left for
    /// `accept`, the spare one is given up for the moment.
    pub(crate) fn starved_fail(&mut self, s: usize) {
        let Some(reason) = self.services[s].starved.clone() else {
            return;
        };
        let retry_after = self.starvation.retry_at.map_or(1, |t| {
            let left = t.saturating_duration_since(Instant::now());
            u32::try_from(left.as_millis().div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1)
        });
        let mut frame = Vec::new();
        let resp = Response::Unavailable {
            retry_after,
            reason: &reason,
        };
        if encode_response(&resp, &WireLimits::default(), &mut frame).is_err() {
            return;
        }
        while waiting(&self.services[s].listen) {
            let conn = match self.accept_with_spare(s) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warning!(
                        Some(self.services[s].key()),
                        None,
                        "unable to accept a connection to answer it unavailable: {e}"
                    );
                    return;
                }
            };
            // Read what the client sent, or the close resets the answer.
            refuse(&conn, &frame);
            drop(conn);
            self.starvation.take_back_spare();
            self.services[s].stats.fast_failed += 1;
        }
    }

    /// An instance of `s` started: its starvation, if any, is over.
    pub(crate) fn fed(&mut self, s: usize) {
        if self.services[s].starved.take().is_none() {
            return;
        }
        info!(
            Some(self.services[s].key()),
            None, "started an instance again after the manager's resource failure"
        );
        if self.services[s].watch == Watch::Starved {
            self.set_watch(s, Watch::Off);
        }
    }

    fn accept_with_spare(&mut self, s: usize) -> io::Result<OwnedFd> {
        let listen = self.services[s].listen.as_fd();
        match crate::sys::accept(listen) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // Free one fd for this connection; the caller takes the
                // spare back once the connection is closed.
                if !self.starvation.give_up_spare() {
                    return Err(e);
                }
                crate::sys::accept(self.services[s].listen.as_fd())
            }
            r => r,
        }
    }
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
}
