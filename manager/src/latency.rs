//! Request latency counted in fixed buckets, for figures that add up: the
//! Prometheus histogram (`metrics.rs`) and the per-interval percentiles of
//! `charon top`, both read from the `latency_histogram` member of a `stats`
//! answer. Unlike the HdrHistogram in `stats.rs` (lifetime quantiles), two
//! bucket counts of the same scale can be subtracted (an interval) or added
//! (several hosts), because every charond uses the same bounds.
//!
//! The scale, in microseconds: 1 to 9 one by one, then the Renard R10
//! series (10 steps a decade: 10, 12, 16, 20, 25, 31, 40, 50, 63, 80, 100,
//! 125, 160, ...) up to 5,000,000,000 µs, past the largest latency a report
//! can carry (`u32` µs). Latencies are whole microseconds, so bound 12
//! stands for 12.5 and 31 for 31.5. A bucket counts the latencies above the
//! previous bound and at most its own. [`PROMETHEUS_US`] are the bounds
//! exposed to Prometheus, all on the scale, so their counts are exact.
//!
//! ```
//! use charon_manager::latency::{quantile_us, Buckets};
//! let mut b = Buckets::new();
//! for us in [40, 45, 50, 900] {
//!     b.record(us);
//! }
//! let v = b.to_json();
//! assert_eq!(v["count"], 4);
//! assert_eq!(v["sum_us"], 1035);
//! let p50 = quantile_us(&charon_manager::latency::parse(&v), 0.5).unwrap();
//! assert!((40.0..=50.0).contains(&p50));
//! ```

use serde_json::{json, Value};

/// The mantissas of the R10 series, times ten.
const R10: [u64; 10] = [100, 125, 160, 200, 250, 315, 400, 500, 630, 800];

/// Number of buckets on the scale.
const N: usize = 9 + 8 * 10 + 8;

/// The scale's upper bounds in µs, increasing.
const BOUNDS_US: [u64; N] = bounds();

const fn bounds() -> [u64; N] {
    let mut b = [0u64; N];
    let mut i = 0;
    while i < 9 {
        b[i] = i as u64 + 1;
        i += 1;
    }
    // 10^1 .. 10^9: mantissa * 10^decade / 100, rounded down.
    let mut scale = 10u64;
    while i < N {
        let mut m = 0;
        while m < R10.len() && i < N {
            b[i] = R10[m] * scale / 100;
            i += 1;
            m += 1;
        }
        scale *= 10;
    }
    b
}

/// The bucket bounds `charond` exposes to Prometheus, in µs: 5 µs to
/// 100 s in 1-2.5-5 steps (23 bounds, plus `+Inf`). The latency is the
/// instance's, accept to response written: an echo takes under 10 µs.
pub const PROMETHEUS_US: [u64; 23] = [
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

/// Latencies counted on the fixed scale, with their exact sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buckets {
    counts: [u64; N],
    count: u64,
    sum_us: u64,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets::new()
    }
}

impl Buckets {
    /// No latency counted yet.
    #[must_use]
    pub fn new() -> Buckets {
        Buckets {
            counts: [0; N],
            count: 0,
            sum_us: 0,
        }
    }

    /// Counts one latency.
    pub fn record(&mut self, us: u64) {
        let i = BOUNDS_US.partition_point(|&b| b < us).min(N - 1);
        self.counts[i] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds another count of the same scale.
    pub fn add(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// `{"count":N,"sum_us":S,"buckets":[[LE_US,COUNT],...]}`, only the
    /// buckets that are not empty, in increasing order of bound.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let buckets: Vec<Value> = BOUNDS_US
            .iter()
            .zip(self.counts.iter())
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| json!([b, c]))
            .collect();
        json!({ "count": self.count, "sum_us": self.sum_us, "buckets": buckets })
    }
}

/// The `[LE_US, COUNT]` pairs of a `latency_histogram` object; anything
/// malformed is skipped.
#[must_use]
pub fn parse(v: &Value) -> Vec<(u64, u64)> {
    let empty = Vec::new();
    v["buckets"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?)))
        .collect()
}

/// How many latencies are at most `le_us`, from `[LE_US, COUNT]` pairs.
#[must_use]
pub fn cumulative(buckets: &[(u64, u64)], le_us: u64) -> u64 {
    buckets
        .iter()
        .filter(|(b, _)| *b <= le_us)
        .map(|(_, c)| c)
        .sum()
}

/// The latencies counted in `cur` and not in `prev` (a later and an
/// earlier count of the same source). A bucket that went down means the
/// source started again (a new charond): then `cur` is the interval.
#[must_use]
pub fn difference(prev: &[(u64, u64)], cur: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let before = |le: u64| prev.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
    if prev
        .iter()
        .any(|(b, c)| cur.iter().find(|(le, _)| le == b).map_or(0, |(_, n)| *n) < *c)
    {
        return cur.to_vec();
    }
    cur.iter()
        .map(|&(le, c)| (le, c - before(le)))
        .filter(|(_, c)| *c > 0)
        .collect()
}

/// The `q` quantile (0 to 1) in µs, interpolated linearly inside its
/// bucket as Prometheus' `histogram_quantile` does; `None` when no latency
/// is counted.
#[must_use]
pub fn quantile_us(buckets: &[(u64, u64)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for &(le, c) in buckets {
        if c > 0 && (seen + c) as f64 >= rank {
            let i = BOUNDS_US.partition_point(|&b| b < le);
            let lower = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
            let within = (rank - seen as f64) / c as f64;
            return Some(lower as f64 + (le - lower) as f64 * within);
        }
        seen += c;
    }
    buckets.last().map(|(le, _)| *le as f64)
}

/// A bound in µs as seconds for an `le` label, in decimal without
/// rounding: 25 -> "0.000025", 1_000_000 -> "1".
#[must_use]
pub fn seconds_label(us: u64) -> String {
    let frac = format!("{:06}", us % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}", us / 1_000_000)
    } else {
        format!("{}.{frac}", us / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_increasing_covers_u32_and_holds_the_prometheus_bounds() {
        assert!(BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(&BOUNDS_US[..12], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16]);
        assert_eq!(BOUNDS_US[N - 1], 5_000_000_000);
        assert!(BOUNDS_US[N - 2] < u64::from(u32::MAX));
        for b in PROMETHEUS_US {
            assert!(BOUNDS_US.contains(&b), "{b}");
        }
    }

    #[test]
    fn a_latency_lands_in_the_first_bucket_at_least_as_large() {
        let mut b = Buckets::new();
        for us in [0, 1, 10, 11, 12, 13, u64::from(u32::MAX)] {
            b.record(us);
        }
        let p = parse(&b.to_json());
        assert_eq!(
            p,
            vec![(1, 2), (10, 1), (12, 2), (16, 1), (5_000_000_000, 1)]
        );
        assert_eq!(cumulative(&p, 12), 5);
        assert_eq!(b.to_json()["count"], 7);
    }

    #[test]
    fn counts_add_and_subtract() {
        let (mut a, mut b) = (Buckets::new(), Buckets::new());
        a.record(40);
        b.record(40);
        b.record(700);
        let before = parse(&a.to_json());
        a.add(&b);
        let after = parse(&a.to_json());
        assert_eq!(a.to_json()["sum_us"], 780);
        assert_eq!(difference(&before, &after), vec![(40, 1), (800, 1)]);
        // A restart (counts went down): the later count is the interval.
        assert_eq!(difference(&after, &before), before);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        assert_eq!(quantile_us(&[], 0.5), None);
        // 100 latencies in (80, 100]: the median is half-way.
        let p = [(100, 100)];
        assert_eq!(quantile_us(&p, 0.5), Some(90.0));
        let p = [(10, 50), (1_000, 49), (100_000, 1)];
        assert_eq!(quantile_us(&p, 0.5), Some(10.0));
        let p99 = quantile_us(&p, 0.99).unwrap();
        assert!((800.0..=1_000.0).contains(&p99), "{p99}");
        assert!(quantile_us(&p, 1.0).unwrap() > 80_000.0);
    }

    #[test]
    fn labels_are_exact_decimal_seconds() {
        assert_eq!(seconds_label(10), "0.00001");
        assert_eq!(seconds_label(2_500), "0.0025");
        assert_eq!(seconds_label(1_000_000), "1");
        assert_eq!(seconds_label(2_500_000), "2.5");
        assert_eq!(seconds_label(100_000_000), "100");
    }
}
