//! Fork pacing: how fast a service's dead instances may be replaced. A
//! mature instance's death never stops launches (it says nothing about the
//! program), so a service whose instances keep dying after they served
//! (a poison request repeated, an operator's kill loop) would fork as fast
//! as they die; a token bucket bounds that to a steady rate with a small
//! burst, and the replacement that must wait gets a deadline instead.
//! Pure: the loop asks, and sets its timer from [`ForkPacer::next_at`].

use std::time::{Duration, Instant};

/// Replacements allowed at once after a quiet spell.
pub(crate) const BURST: u32 = 5;
/// One more replacement may start per this interval (10 a second).
pub(crate) const REFILL: Duration = Duration::from_millis(100);

/// A token bucket of replacement forks.
#[derive(Clone, Debug)]
pub(crate) struct ForkPacer {
    tokens: u32,
    /// When the bucket was last refilled up to.
    refilled: Instant,
}

impl ForkPacer {
    pub(crate) const fn new(now: Instant) -> ForkPacer {
        ForkPacer {
            tokens: BURST,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.refilled).as_nanos() / REFILL.as_nanos();
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(BURST);
        self.refilled = if self.tokens == BURST {
            now
        } else {
            self.refilled + REFILL * earned
        };
    }

    /// True if a replacement may start now (and takes its token).
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// When the next token is earned.
    pub(crate) fn next_at(&self) -> Instant {
        self.refilled + REFILL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut p = ForkPacer::new(t0);
        for _ in 0..BURST {
            assert!(p.take(t0));
        }
        assert!(!p.take(t0));
        assert_eq!(p.next_at(), t0 + REFILL);
        assert!(!p.take(t0 + REFILL / 2));
        assert!(p.take(t0 + REFILL));
        assert!(!p.take(t0 + REFILL));
        // Ten seconds of forks at most: the burst plus one per interval.
        let mut n = 0;
        let mut t = t0 + REFILL;
        while t < t0 + Duration::from_secs(10) {
            t += Duration::from_millis(1);
            n += u32::from(p.take(t));
        }
        assert!((98..=100).contains(&n), "{n}");
    }

    #[test]
    fn a_quiet_spell_refills_only_the_burst() {
        let t0 = Instant::now();
        let mut p = ForkPacer::new(t0);
        assert!(p.take(t0));
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..BURST {
            assert!(p.take(later));
        }
        assert!(!p.take(later));
    }
}
