//! Backoff pacing and the crash-loop tally: how long a failing service
//! waits before its next trial, and when repeated crashes count as a loop.
//! Pure data; the transitions decide when to consult them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Doubling backoff from `initial` up to `cap`, reset by a healthy run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    initial: Duration,
    cap: Duration,
    last: Option<Duration>,
    /// Times backoff was entered (for statistics).
    pub entries: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial: initial.min(cap),
            cap,
            last: None,
            entries: 0,
        }
    }

    /// The next wait: `initial` first, then double the previous, capped.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let w = match self.last {
            None => self.initial,
            Some(d) => d.saturating_mul(2).min(self.cap),
        };
        self.last = Some(w);
        self.entries += 1;
        w
    }

    /// A healthy run: the next failure starts from `initial` again.
    pub(crate) fn reset(&mut self) {
        self.last = None;
    }
}

/// Recent crash times; `count` crashes within `interval` is a crash loop.
#[derive(Clone, Debug)]
pub(crate) struct CrashTally {
    count: u32,
    interval: Duration,
    recent: VecDeque<Instant>,
}

impl CrashTally {
    pub(crate) fn new(count: u32, interval: Duration) -> CrashTally {
        CrashTally {
            count: count.max(1),
            interval,
            recent: VecDeque::new(),
        }
    }

    /// Records a crash at `now`; true if this makes a crash loop (the tally
    /// is then cleared, so the loop is counted once).
    pub(crate) fn crash(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > self.interval)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() >= self.count as usize {
            self.recent.clear();
            true
        } else {
            false
        }
    }

    /// Forgets every recorded crash (`charon restart`).
    pub(crate) fn clear(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.next_wait().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(b.entries, 5);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_secs(1));
    }

    #[test]
    fn initial_above_cap_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(3));
        assert_eq!(b.next_wait(), Duration::from_secs(3));
    }

    #[test]
    fn crash_loop_needs_count_within_interval() {
        let t0 = Instant::now();
        let mut t = CrashTally::new(3, Duration::from_secs(10));
        assert!(!t.crash(t0));
        assert!(!t.crash(t0 + Duration::from_secs(1)));
        assert!(t.crash(t0 + Duration::from_secs(2)));
        // Cleared after a loop; old crashes age out.
        assert!(!t.crash(t0 + Duration::from_secs(3)));
        assert!(!t.crash(t0 + Duration::from_secs(20)));
        assert!(!t.crash(t0 + Duration::from_secs(40)));
    }

    #[test]
    fn clear_forgets_recent_crashes() {
        let t0 = Instant::now();
        let mut t = CrashTally::new(2, Duration::from_secs(10));
        assert!(!t.crash(t0));
        t.clear();
        assert!(!t.crash(t0 + Duration::from_secs(1)));
        assert!(t.crash(t0 + Duration::from_secs(2)));
    }
}
