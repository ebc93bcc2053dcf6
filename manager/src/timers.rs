//! Every deadline of the loop in one place (s6's `tain_earliest`): a map
//! from what a deadline is for ([`Timer`]) to when, ordered by time, so the
//! poll timeout is the earliest entry ([`Timers::timeout`]) and a turn
//! visits only the timers that are due, never every service, instance,
//! orphan or connection. Setting a timer replaces its previous time; `None`
//! cancels it. The manager's own periodic work (the tick, the statistics
//! line) is a timer like any other, re-set by its owner when it fires.
//!
//! Pure: it holds times and never reads the clock; the loop passes `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What a deadline is for; the `usize` is a service's, instance's or
/// control connection's index, the `i32` an orphan's pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timer {
    /// The periodic tick: scoreboard scan, shrink, memory, orphans, the
    /// figures for `/metrics`.
    Tick,
    /// The periodic `stats:` log line.
    Stats,
    /// systemd's watchdog ping or status line is due (`notify.rs`).
    Notify,
    /// Retry what the manager's own resource failure kept from starting
    /// (`starved.rs`).
    Retry,
    /// Control connections left with work by their budget get a turn.
    ControlAgain,
    /// A control connection may have been idle too long.
    ControlIdle(usize),
    /// SIGKILL an orphan still there after its grace (`orphans.rs`).
    Orphan(i32),
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
    /// An instance's request may pass `unresponsive-timeout`.
    Unresponsive(usize),
    /// A template's start, ready or kill deadline (`template.rs`).
    Template(usize),
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

    /// The poll timeout at `now`: until the earliest deadline (zero if it
    /// is past), or None (wait for an event) if no timer is set.
    pub(crate) fn timeout(&self, now: Instant) -> Option<Duration> {
        self.earliest().map(|w| w.saturating_duration_since(now))
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
        t.set(Timer::Unresponsive(2), Some(t0 + ms(20)));
        assert_eq!(t.earliest(), Some(t0 + ms(10)));
        // Replacing moves it; cancelling removes it.
        t.set(Timer::Generation(1), Some(t0 + ms(40)));
        t.set(Timer::Unresponsive(2), None);
        assert_eq!(t.earliest(), Some(t0 + ms(30)));
        assert_eq!(t.get(Timer::Unresponsive(2)), None);
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
    fn the_poll_timeout_is_the_earliest_entry_of_any_kind() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timers::default();
        assert_eq!(t.timeout(t0), None, "nothing set: wait for an event");
        t.set(Timer::Tick, Some(t0 + ms(1000)));
        t.set(Timer::Stats, Some(t0 + ms(600_000)));
        t.set(Timer::ControlIdle(4), Some(t0 + ms(10_000)));
        t.set(Timer::Orphan(12345), Some(t0 + ms(5000)));
        assert_eq!(t.timeout(t0), Some(ms(1000)));
        t.set(Timer::Retry, Some(t0 + ms(300)));
        t.set(Timer::Notify, Some(t0 + ms(200)));
        assert_eq!(t.timeout(t0), Some(ms(200)));
        // Work left for this turn is due now: no wait at all.
        t.set(Timer::ControlAgain, Some(t0));
        assert_eq!(t.timeout(t0 + ms(1)), Some(Duration::ZERO));
        assert_eq!(
            t.take_due(t0 + ms(250)),
            [Timer::ControlAgain, Timer::Notify]
        );
        assert_eq!(t.timeout(t0), Some(ms(300)));
    }

    #[test]
    fn a_periodic_timer_re_set_when_it_fires_fires_once_per_period() {
        let t0 = Instant::now();
        let period = Duration::from_secs(1);
        let mut t = Timers::default();
        t.set(Timer::Tick, Some(t0 + period));
        let mut fired = 0;
        // A turn every 100 ms for 3.05 s: 3 ticks, not one per turn.
        for turn in 1..=30 {
            let now = t0 + Duration::from_millis(100 * turn) + Duration::from_millis(5);
            for due in t.take_due(now) {
                assert_eq!(due, Timer::Tick);
                fired += 1;
                t.set(Timer::Tick, Some(now + period));
            }
        }
        assert_eq!(fired, 3);
    }

    #[test]
    fn timers_of_different_owners_with_the_same_index_are_apart() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set(Timer::Instance(1), Some(t0));
        t.set(Timer::Unresponsive(1), Some(t0));
        t.set(Timer::ControlIdle(1), Some(t0));
        t.set(Timer::Generation(1), Some(t0));
        t.set(Timer::Unresponsive(1), None);
        assert_eq!(
            t.take_due(t0),
            [
                Timer::ControlIdle(1),
                Timer::Generation(1),
                Timer::Instance(1)
            ]
        );
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
