//! The loop's work on a service the manager's own resource failure left
//! without the instances it wants (`starved.rs` says what such a failure
//! is and keeps the retry time and the spare fd): log it as the manager's
//! problem, fast-fail the service's clients while it has no instance, and
//! ask its automaton again at the retry.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use charon_protocol::{encode_response, Limits as WireLimits, Response};

use super::Manager;
use crate::log::{info, warning};
use crate::refuse::{refuse, waiting};
use crate::service::transition::Event;
use crate::services::Watch;
use crate::timers::Timer;

impl Manager {
    /// Service `s` could not get an instance because of the manager's own
    /// `problem`: log it as the manager's, retry later, and fast-fail its
    /// clients while it has no instance.
    pub(crate) fn starved(&mut self, s: usize, problem: &str) {
        let now = Instant::now();
        let retry_at = self.starvation.schedule(now);
        self.timers.set(Timer::Retry, Some(retry_at));
        let svc = &mut self.services[s];
        let first = svc.set_starved(format!(
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
        if self.live_count(s) == 0 && self.services[s].watch() != Watch::Starved {
            self.set_watch(s, Watch::Starved);
        }
    }

    /// The retry is due: every starved service asks its automaton again
    /// what to start.
    pub(crate) fn starved_retry(&mut self, now: Instant) {
        if !self.starvation.take_due(now) {
            return;
        }
        for s in self.services.ids() {
            if self.services[s].starved().is_none() {
                continue;
            }
            if self.services[s].watch() == Watch::Starved {
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
        let Some(reason) = self.services[s].starved().map(str::to_string) else {
            return;
        };
        let retry_after = self.starvation.retry_after(Instant::now());
        let mut frame = Vec::new();
        let resp = Response::Unavailable {
            retry_after,
            reason: &reason,
        };
        if encode_response(&resp, &WireLimits::default(), &mut frame).is_err() {
            return;
        }
        while waiting(self.services[s].listen()) {
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
            self.services[s].count_fast_fail();
        }
    }

    /// An instance of `s` started: its starvation, if any, is over.
    pub(crate) fn fed(&mut self, s: usize) {
        if !self.services[s].fed() {
            return;
        }
        info!(
            Some(self.services[s].key()),
            None, "started an instance again after the manager's resource failure"
        );
        if self.services[s].watch() == Watch::Starved {
            self.set_watch(s, Watch::Off);
        }
    }

    fn accept_with_spare(&mut self, s: usize) -> io::Result<OwnedFd> {
        let listen = self.services[s].listen().as_fd();
        match crate::sys::accept(listen) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // Free one fd for this connection; the caller takes the
                // spare back once the connection is closed.
                if !self.starvation.give_up_spare() {
                    return Err(e);
                }
                crate::sys::accept(self.services[s].listen().as_fd())
            }
            r => r,
        }
    }
}
