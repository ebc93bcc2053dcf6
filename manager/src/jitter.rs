//! Spreading `maximum-requests`: each instance retires at the limit minus
//! a random share of up to `maximum-requests-jitter` percent of it, so
//! that instances started together do not retire together. A xorshift64
//! generator, seeded once per manager; cheap, and good enough to spread
//! limits.

use charon_protocol::scoreboard::now_ns;

/// The generator; its state is its own.
pub(crate) struct Jitter {
    state: u64,
}

impl Jitter {
    /// Seeded from the pid and the clock (never zero: xorshift would stay
    /// at zero).
    pub(crate) fn seeded() -> Jitter {
        Jitter::new(u64::from(std::process::id()) ^ now_ns())
    }

    fn new(seed: u64) -> Jitter {
        Jitter { state: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// `max` minus a random share of up to `percent` of it; a `max` of 0
    /// (no limit) stays 0.
    pub(crate) fn limit(&mut self, max: u64, percent: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let span = max * percent / 100;
        max - if span == 0 {
            0
        } else {
            self.next() % (span + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_stay_within_the_jitter_and_spread() {
        let mut j = Jitter::new(42);
        let got: Vec<u64> = (0..200).map(|_| j.limit(1000, 10)).collect();
        assert!(got.iter().all(|&l| (900..=1000).contains(&l)), "{got:?}");
        let distinct: std::collections::BTreeSet<u64> = got.iter().copied().collect();
        assert!(distinct.len() > 50, "spread: {}", distinct.len());
    }

    #[test]
    fn no_limit_or_no_jitter_is_exact() {
        let mut j = Jitter::new(0);
        assert_eq!(j.limit(0, 50), 0);
        assert_eq!(j.limit(1000, 0), 1000);
        // Below one whole request of jitter: exact.
        assert_eq!(j.limit(5, 10), 5);
    }
}
