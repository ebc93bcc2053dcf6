//! Driving load and summarising it: C client threads, each calling in a
//! loop until a deadline and recording every round trip's latency in its
//! own histogram, merged at the end. What a call does (floor or Charon) is
//! the caller's closure; interleaving and targets are left to the main file.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One system's figures for one cell (body size, concurrency).
pub struct Sample {
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub busy: Duration,
}

impl Sample {
    pub fn new() -> Sample {
        Sample {
            // 1 ns to 100 s at 3 significant figures.
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
            requests: 0,
            errors: 0,
            first_error: None,
            busy: Duration::ZERO,
        }
    }

    pub fn merge(&mut self, other: Sample) {
        let _ = self.hist.add(&other.hist);
        self.requests += other.requests;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.busy += other.busy;
    }

    /// Requests per second over the wall time the load ran.
    pub fn rps(&self) -> f64 {
        let s = self.busy.as_secs_f64();
        if s > 0.0 {
            self.requests as f64 / s
        } else {
            0.0
        }
    }

    /// A quantile in microseconds.
    pub fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `conc` threads for `dur`; each builds its caller with `make` and
/// calls it in a loop. Wall time is added to the sample's `busy`.
pub fn run_load<M, F>(conc: usize, dur: Duration, make: M) -> Sample
where
    M: Fn() -> F + Sync,
    F: FnMut() -> Result<(), String>,
{
    let start = Instant::now();
    let mut total = Sample::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..conc)
            .map(|_| {
                s.spawn(|| {
                    let mut call = make();
                    let mut sample = Sample::new();
                    let deadline = Instant::now() + dur;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= deadline {
                            break;
                        }
                        match call() {
                            Ok(()) => {
                                let ns = t0.elapsed().as_nanos().max(1) as u64;
                                let _ = sample.hist.record(ns);
                                sample.requests += 1;
                            }
                            Err(e) => {
                                sample.errors += 1;
                                sample.first_error.get_or_insert(e);
                                // A failing system must not spin the CPU
                                // the other system's numbers need.
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    }
                    sample
                })
            })
            .collect();
        for h in handles {
            if let Ok(sample) = h.join() {
                total.merge(sample);
            }
        }
    });
    total.busy = start.elapsed();
    total
}

/// Times `n` calls one after another, returning the latency sample.
pub fn run_serial(n: usize, mut call: impl FnMut() -> Result<(), String>) -> Sample {
    let start = Instant::now();
    let mut sample = Sample::new();
    for _ in 0..n {
        let t0 = Instant::now();
        match call() {
            Ok(()) => {
                let _ = sample.hist.record(t0.elapsed().as_nanos().max(1) as u64);
                sample.requests += 1;
            }
            Err(e) => {
                sample.errors += 1;
                sample.first_error.get_or_insert(e);
            }
        }
    }
    sample.busy = start.elapsed();
    sample
}
