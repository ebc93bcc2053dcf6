//! Every per-service and per-instance deadline of the loop in one place
//! (s6's `tain_earliest`): a map from what a deadline is for ([`Timer`]) to
//! when, ordered by time, so the poll timeout is the earliest entry and a
//! turn visits only the timers that are due, never every service and
//! instance. Setting a timer replaces its previous time; `None` cancels it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// What a deadline is for; the `usize` is a service's or instance's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timer {
    /// Advance a pending or draining generation.
    Generation(usize),
    /// Re-check saturation while every instance is busy.
    Saturation(usize),
    /// Advance recycling while a replacement comes up.
    Recycle(usize),
    /// Start replacements the fork pacer held back.
    Pace(usize),
    /// The service's backoff is over.
    Backoff(usize),
    /// An instance's start-up or kill deadline (`instance.rs`).
    Instance(usize),
    /// A busy instance's request may pass `unresponsive-timeout`.
    Unresponsive,
}

/// The deadlines, by timer and by time.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    at: BTreeMap<Timer, Instant>,
    order: BTreeSet<(Instant, Timer)>,
}

impl Timers {
    /// Sets `t` to fire at `when` (replacing its time), or cancels it.
    pub(crate) fn set(&mut self, t: Timer, when: Option<Instant>) {
        if let Some(old) = self.at.remove(&t) {
            self.order.remove(&(old, t));
        }
        if let Some(w) = when {
            self.at.insert(t, w);
            self.order.insert((w, t));
        }
    }

    /// Sets `t` to `when` unless it is already due sooner.
    pub(crate) fn set_earlier(&mut self, t: Timer, when: Instant) {
        let w = self.at.get(&t).map_or(when, |&old| old.min(when));
        self.set(t, Some(w));
    }

    /// When `t` fires, if set.
    #[cfg(test)]
    pub(crate) fn get(&self, t: Timer) -> Option<Instant> {
        self.at.get(&t).copied()
    }

    /// The earliest deadline.
    pub(crate) fn earliest(&self) -> Option<Instant> {
        self.order.first().map(|(w, _)| *w)
    }

    /// Takes every timer due at `now`, earliest first; they are cancelled.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some(&(w, t)) = self.order.first() {
            if w > now {
                break;
            }
            self.order.remove(&(w, t));
            self.at.remove(&t);
            due.push(t);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_due_replace_and_cancel() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timers::default();
        assert_eq!(t.earliest(), None);
        t.set(Timer::Instance(3), Some(t0 + ms(30)));
        t.set(Timer::Generation(1), Some(t0 + ms(10)));
        t.set(Timer::Unresponsive, Some(t0 + ms(20)));
        assert_eq!(t.earliest(), Some(t0 + ms(10)));
        // Replacing moves it; cancelling removes it.
        t.set(Timer::Generation(1), Some(t0 + ms(40)));
        t.set(Timer::Unresponsive, None);
        assert_eq!(t.earliest(), Some(t0 + ms(30)));
        assert_eq!(t.get(Timer::Unresponsive), None);
        // set_earlier keeps the sooner time.
        t.set_earlier(Timer::Generation(1), t0 + ms(50));
        assert_eq!(t.get(Timer::Generation(1)), Some(t0 + ms(40)));
        t.set_earlier(Timer::Generation(1), t0 + ms(5));
        assert_eq!(t.get(Timer::Generation(1)), Some(t0 + ms(5)));
        // Due ones come out earliest first, and only those.
        assert_eq!(
            t.take_due(t0 + ms(30)),
            [Timer::Generation(1), Timer::Instance(3)]
        );
        assert_eq!(t.take_due(t0 + ms(30)), []);
        assert_eq!(t.earliest(), None);
    }

    #[test]
    fn two_timers_at_the_same_time_both_fire() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set(Timer::Backoff(0), Some(t0));
        t.set(Timer::Backoff(1), Some(t0));
        assert_eq!(t.take_due(t0).len(), 2);
    }
}
