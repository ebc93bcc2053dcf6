//! Telling systemd how charond is doing, over `NOTIFY_SOCKET` (sd_notify(3),
//! through the `sd-notify` crate): the loop's figures go into the pure
//! automaton of `notify_policy.rs`, and the messages it returns are sent
//! here as one datagram. Without `NOTIFY_SOCKET` nothing is computed and
//! nothing is sent. Handing sockets to systemd's fd store is `fdstore.rs`'s
//! job.

use std::time::Instant;

use charon_protocol::scoreboard::SlotState;
use sd_notify::NotifyState;

use crate::generation::Gen;
use crate::log::warning;
use crate::notify_policy::{Event, Figures, Msg, Policy};
use crate::process_table::ProcessTable;
use crate::service::state::Mode;
use crate::services::Services;

/// The notification channel to systemd, when there is one.
pub(crate) struct Notifier {
    policy: Option<Policy>,
    /// A send failed: warn once, not per loop.
    warned: bool,
}

impl Notifier {
    /// On when `NOTIFY_SOCKET` is set; the watchdog interval from
    /// `WATCHDOG_USEC` (when `WATCHDOG_PID`, if set, is this process).
    pub(crate) fn from_env() -> Notifier {
        let on = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        Notifier {
            policy: on.then(|| Policy::new(sd_notify::watchdog_enabled())),
            warned: false,
        }
    }

    const fn is_on(&self) -> bool {
        self.policy.is_some()
    }

    /// When the loop must look again (None when off); it looks then, and
    /// once a reload is answered, not at every turn.
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.policy.as_ref().and_then(|p| p.next_deadline(now))
    }

    /// At [`Notifier::next_deadline`] and once a reload is answered:
    /// readiness, the end of a reload, the status line and the watchdog
    /// ping, as the policy decides. The figures are only gathered when
    /// notifying is on.
    pub(crate) fn look(&mut self, figures: impl FnOnce() -> Figures) {
        if self.is_on() {
            self.feed(Event::Look(figures()), Instant::now());
        }
    }

    /// A reload begins (before anything of it is done).
    pub(crate) fn reload_begun(&mut self) {
        if !self.is_on() {
            return;
        }
        if let Ok(NotifyState::MonotonicUsec(u)) = NotifyState::monotonic_usec_now() {
            self.feed(Event::ReloadBegun { monotonic_usec: u }, Instant::now());
        }
    }

    /// The stop begins.
    pub(crate) fn stop(&mut self) {
        self.feed(Event::Stop, Instant::now());
    }

    fn feed(&mut self, ev: Event, now: Instant) {
        let Some(p) = self.policy.as_mut() else {
            return;
        };
        let msgs = p.on_event(ev, now);
        if msgs.is_empty() {
            return;
        }
        let states: Vec<NotifyState<'_>> = msgs
            .iter()
            .flat_map(|m| match m {
                Msg::Ready => vec![NotifyState::Ready],
                Msg::Reloading { monotonic_usec } => vec![
                    NotifyState::Reloading,
                    NotifyState::MonotonicUsec(*monotonic_usec),
                ],
                Msg::Stopping => vec![NotifyState::Stopping],
                Msg::Status(s) => vec![NotifyState::Status(s)],
                Msg::Watchdog => vec![NotifyState::Watchdog],
            })
            .collect();
        if let Err(e) = sd_notify::notify(&states) {
            if !self.warned {
                self.warned = true;
                warning!(
                    None,
                    None,
                    "unable to notify systemd over NOTIFY_SOCKET: {e}"
                );
            }
        }
    }
}

/// What the policy looks at: the live generations, how many are in
/// backoff or not yet settled, and the instances (busy or not).
pub(crate) fn figures(services: &Services, procs: &ProcessTable, reloading: bool) -> Figures {
    let mut f = Figures {
        settled: true,
        reloading,
        ..Figures::default()
    };
    for (s, svc) in services.iter() {
        f.requests += svc.stats().requests();
        if svc.gen() != Gen::Live {
            continue;
        }
        f.services += 1;
        let backoff = matches!(svc.mode(), Mode::Backoff { .. });
        if backoff {
            f.backoff += 1;
        } else if !services.is_ready(s, procs) {
            f.settled = false;
        }
    }
    for (_, i) in procs.iter() {
        let Some(svc) = services.get(i.service()) else {
            continue;
        };
        f.total += 1;
        if let Some(SlotState::Busy) = svc.slot_state(i.slot()) {
            f.busy += 1;
        }
    }
    f
}
