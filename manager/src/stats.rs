//! Per-service figures kept for operators: requests, faults, retries,
//! latency (hdrhistogram for quantiles, fixed buckets in `latency.rs` for
//! figures that add up), exits by reason, launches and their failures,
//! backoff entries, fast-failed connections, resources of exited instances
//! and the last exit. The figures are private: the service counts through
//! the methods here, and readers get the `charon stats` members
//! ([`Stats::to_json`], one service's generations merged with
//! [`Stats::merged`]), the log's summary line, or the few figures other
//! policies ask about. Transport is left to others.

use std::collections::{BTreeMap, VecDeque};

use charon_protocol::report::{Outcome, Record};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::latency::Buckets;

/// The last exit of a service, for Unavailable reasons and stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LastExit {
    pid: i32,
    /// The exit described for people.
    status: String,
    /// The exit status, if it exited.
    code: Option<i32>,
    /// The signal that killed it, if one did.
    signal: Option<i32>,
    /// The class it was counted under (`Stats::exits`).
    class: &'static str,
    stderr: String,
}

/// The exit class of an instance that could not be started
/// (`ExitClass::LaunchFailure`'s name).
const LAUNCH_FAILED: &str = "launch_failed";

impl LastExit {
    /// Instance `pid` exited, counted as `class` and described for people
    /// as `status`, with its exit `code` or killing `signal` and its last
    /// stderr line.
    pub(crate) fn new(
        (pid, stderr): (i32, &str),
        class: &'static str,
        status: String,
        (code, signal): (Option<i32>, Option<i32>),
    ) -> LastExit {
        LastExit {
            pid,
            status,
            code,
            signal,
            class,
            stderr: stderr.to_string(),
        }
    }

    /// An instance could not be started: `why`.
    fn could_not_start(why: &str) -> LastExit {
        LastExit {
            status: format!("could not be started: {why}"),
            class: LAUNCH_FAILED,
            ..LastExit::default()
        }
    }

    /// The instance could not be started (a person has to fix something).
    pub(crate) fn is_launch_failure(&self) -> bool {
        self.class == LAUNCH_FAILED
    }

    /// The Unavailable reason text.
    pub(crate) fn reason(&self) -> String {
        if self.stderr.is_empty() {
            format!("last instance (pid {}) {}", self.pid, self.status)
        } else {
            format!(
                "last instance (pid {}) {}; last stderr line: {}",
                self.pid, self.status, self.stderr
            )
        }
    }
}

/// Exits kept per service for operators (`charon stats`, issue 4).
pub(crate) const RECENT_EXITS: usize = 16;

/// A latency histogram: 1 µs to 1 hour with 2 significant digits (1%
/// resolution, which is what a percentile needs). 3 digits cost 184 KiB per
/// service, 36 MiB of the manager's RSS with 200 services (measured by the
/// roundtrip benchmark); 2 digits cost about a tenth. `None` cannot happen
/// for these bounds; it would only leave latency unrecorded.
fn latency_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).ok()
}

/// The exit classes every service reports (zero when none happened): the
/// one vocabulary of the log (`counted as ...`), `charon stats`, the JSON,
/// Prometheus' `reason` label and the docs (`ExitClass::name`,
/// `KillReason::name`).
const EXIT_NAMES: [&str; 13] = [
    "clean",
    "nonzero",
    "crashed",
    "unresponsive",
    "max_requests",
    "idle",
    "excess",
    "shutdown",
    "launch_failed",
    "max_rss",
    "reload",
    "restart",
    "startup_timeout",
];

/// Counters of one service.
#[derive(Clone, Debug)]
pub(crate) struct Stats {
    requests: u64,
    faults: u64,
    errors: u64,
    unanswered: u64,
    retried: u64,
    latency_us: Option<Histogram<u64>>,
    /// The same latencies on a fixed scale, for figures that add up.
    latency_buckets: Buckets,
    exits: BTreeMap<&'static str, u64>,
    launches: u64,
    launch_failures: u64,
    backoff_entries: u64,
    fast_failed: u64,
    /// Times the accept queue was seen full (clients refused as overloaded).
    overload_seen: u64,
    exited_cpu_us: u64,
    exited_maxrss_kib: u64,
    last_exit: Option<LastExit>,
    /// The last [`RECENT_EXITS`] exits, oldest first.
    recent_exits: VecDeque<LastExit>,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        Stats {
            requests: 0,
            faults: 0,
            errors: 0,
            unanswered: 0,
            retried: 0,
            // Made on the first record: a configured service nobody calls
            // costs nothing.
            latency_us: None,
            latency_buckets: Buckets::new(),
            exits: BTreeMap::new(),
            launches: 0,
            launch_failures: 0,
            backoff_entries: 0,
            fast_failed: 0,
            overload_seen: 0,
            exited_cpu_us: 0,
            exited_maxrss_kib: 0,
            last_exit: None,
            recent_exits: VecDeque::with_capacity(RECENT_EXITS),
        }
    }

    /// Adds a batch of per-request records.
    pub(crate) fn records(&mut self, recs: &[Record]) {
        for r in recs {
            self.requests += 1;
            match r.outcome {
                Outcome::Ok => {}
                Outcome::Fault => self.faults += 1,
                Outcome::Error => self.errors += 1,
                Outcome::NoAnswer => self.unanswered += 1,
            }
            if r.attempt > 1 {
                self.retried += 1;
            }
            if self.latency_us.is_none() {
                self.latency_us = latency_histogram();
            }
            if let Some(h) = &mut self.latency_us {
                h.saturating_record(u64::from(r.elapsed_us).max(1));
            }
            self.latency_buckets.record(u64::from(r.elapsed_us));
        }
    }

    /// Counts an exit under its class name.
    pub(crate) fn exit(&mut self, class: &'static str) {
        *self.exits.entry(class).or_insert(0) += 1;
    }

    /// An instance was started.
    pub(crate) fn launched(&mut self) {
        self.launches += 1;
    }

    /// An instance exited as a launch failure (besides its exit class).
    pub(crate) fn launch_failed(&mut self) {
        self.launch_failures += 1;
    }

    /// An instance could not be started (no process came of it): `why`.
    pub(crate) fn could_not_start(&mut self, why: &str) {
        self.launch_failures += 1;
        self.exit(LAUNCH_FAILED);
        self.set_last_exit(LastExit::could_not_start(why));
    }

    /// Requests an exited instance completed but never reported (no
    /// latency is known for them).
    pub(crate) fn unreported(&mut self, requests: u64) {
        self.requests = self.requests.saturating_add(requests);
    }

    /// An exited instance used `cpu_us` of CPU and at most `maxrss_kib`.
    pub(crate) fn exited_resources(&mut self, cpu_us: u64, maxrss_kib: u64) {
        self.exited_cpu_us += cpu_us;
        self.exited_maxrss_kib = self.exited_maxrss_kib.max(maxrss_kib);
    }

    /// The service went into backoff.
    pub(crate) fn backoff_entered(&mut self) {
        self.backoff_entries += 1;
    }

    /// A client was answered Unavailable.
    pub(crate) fn fast_failed(&mut self) {
        self.fast_failed += 1;
    }

    /// The accept queue was seen full.
    pub(crate) fn overload_seen(&mut self) {
        self.overload_seen += 1;
    }

    /// Requests done so far, reported or not.
    pub(crate) const fn requests(&self) -> u64 {
        self.requests
    }

    /// The last exit, or `None` before the first.
    pub(crate) const fn last_exit(&self) -> Option<&LastExit> {
        self.last_exit.as_ref()
    }

    /// Launches that failed (not a `charon stats` member; the log's
    /// summary carries it).
    #[cfg(test)]
    pub(crate) const fn launch_failures(&self) -> u64 {
        self.launch_failures
    }

    /// Records the last exit, keeping a ring of recent ones.
    pub(crate) fn set_last_exit(&mut self, e: LastExit) {
        if self.recent_exits.len() == RECENT_EXITS {
            self.recent_exits.pop_front();
        }
        self.recent_exits.push_back(e.clone());
        self.last_exit = Some(e);
    }

    /// Adds another generation's figures of the same key. `other_is_older`:
    /// its exits happened before ours (a reload's predecessor), so ours
    /// stay the last; otherwise (a drained generation folded in at the
    /// end) the live generation's last exit still wins, since it is the one
    /// that explains the service's state.
    pub(crate) fn absorb(&mut self, other: Stats, other_is_older: bool) {
        self.requests += other.requests;
        self.faults += other.faults;
        self.errors += other.errors;
        self.unanswered += other.unanswered;
        self.retried += other.retried;
        match (&mut self.latency_us, other.latency_us) {
            (Some(h), Some(o)) => {
                // Same bounds on both sides: cannot fail.
                let _ = h.add(&o);
            }
            (None, Some(o)) => self.latency_us = Some(o),
            _ => {}
        }
        self.latency_buckets.add(&other.latency_buckets);
        for (k, v) in other.exits {
            *self.exits.entry(k).or_insert(0) += v;
        }
        self.launches += other.launches;
        self.launch_failures += other.launch_failures;
        self.backoff_entries += other.backoff_entries;
        self.fast_failed += other.fast_failed;
        self.overload_seen += other.overload_seen;
        self.exited_cpu_us += other.exited_cpu_us;
        self.exited_maxrss_kib = self.exited_maxrss_kib.max(other.exited_maxrss_kib);
        if self.last_exit.is_none() {
            self.last_exit = other.last_exit;
        }
        if other_is_older {
            let mut merged = other.recent_exits;
            merged.extend(self.recent_exits.drain(..));
            while merged.len() > RECENT_EXITS {
                merged.pop_front();
            }
            self.recent_exits = merged;
        }
    }

    /// The figures of a key's generations as one: `live`'s, with those of
    /// its other generations (still draining) added in.
    pub(crate) fn merged<'a>(live: &Stats, others: impl IntoIterator<Item = &'a Stats>) -> Stats {
        let mut stats = live.clone();
        for o in others {
            stats.absorb(o.clone(), false);
        }
        stats
    }

    /// The members of a service's `charon stats` answer that are counted
    /// here (doc/control-protocol.md names them).
    pub(crate) fn to_json(&self) -> Map<String, Value> {
        [
            ("requests", json!(self.requests)),
            ("faults", json!(self.faults)),
            ("retried", json!(self.retried)),
            ("errors", json!(self.errors)),
            ("unanswered", json!(self.unanswered)),
            ("overload_seen", json!(self.overload_seen)),
            ("latency_us", self.latency_json()),
            ("latency_histogram", self.latency_buckets.to_json()),
            ("exits", self.exits_json()),
            ("launches", json!(self.launches)),
            ("backoffs", json!(self.backoff_entries)),
            ("fast_failed", json!(self.fast_failed)),
            ("cpu_ms", json!(self.exited_cpu_us / 1000)),
            ("max_rss_kb", json!(self.exited_maxrss_kib)),
            ("last_exit", self.last_exit_json()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Lifetime quantiles from the histogram, zeros before the first
    /// request.
    fn latency_json(&self) -> Value {
        let h = self.latency_us.as_ref().filter(|h| !h.is_empty());
        let q = |p: f64| h.map_or(0, |h| h.value_at_quantile(p));
        let max = h.map_or(0, Histogram::max);
        json!({ "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": max })
    }

    /// Every exit class of [`EXIT_NAMES`] (zero when none happened), and
    /// any other counted.
    fn exits_json(&self) -> Value {
        let mut m = Map::new();
        for name in EXIT_NAMES {
            m.insert(
                name.into(),
                json!(self.exits.get(name).copied().unwrap_or(0)),
            );
        }
        for (class, n) in &self.exits {
            if !EXIT_NAMES.contains(class) {
                m.insert((*class).to_string(), json!(n));
            }
        }
        Value::Object(m)
    }

    /// The service's last instance exit, or null before the first.
    fn last_exit_json(&self) -> Value {
        self.last_exit.as_ref().map_or(Value::Null, |e| {
            json!({
                "pid": e.pid,
                "status": e.code,
                "signal": e.signal,
                "reason": e.class,
                "description": e.status,
                "stderr": e.stderr,
            })
        })
    }

    /// One log line's worth.
    pub(crate) fn summary(&self, busy: usize, idle: usize) -> String {
        let (p50, p99) = self.latency_us.as_ref().map_or((0, 0), |h| {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
        });
        let exits: Vec<String> = self.exits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "stats: busy={busy} idle={idle} requests={} faults={} errors={} unanswered={} retried={} p50_us={p50} p99_us={p99} launches={} launch_failures={} backoffs={} fast_failed={} overload_seen={} exits=[{}] exited_cpu_ms={} exited_maxrss_kib={}",
            self.requests,
            self.faults,
            self.errors,
            self.unanswered,
            self.retried,
            self.launches,
            self.launch_failures,
            self.backoff_entries,
            self.fast_failed,
            self.overload_seen,
            exits.join(","),
            self.exited_cpu_us / 1000,
            self.exited_maxrss_kib,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_records_by_outcome() {
        let mut s = Stats::new();
        let rec = |outcome, attempt| Record {
            elapsed_us: 100,
            request_bytes: 1,
            response_bytes: 1,
            outcome,
            attempt,
        };
        s.records(&[
            rec(Outcome::Ok, 1),
            rec(Outcome::Fault, 2),
            rec(Outcome::NoAnswer, 1),
        ]);
        assert_eq!(
            (s.requests, s.faults, s.unanswered, s.retried),
            (3, 1, 1, 1)
        );
        // Every record's latency is in the buckets, and a generation's
        // buckets add to its successor's (one key, one histogram).
        let mut next = Stats::new();
        next.records(&[rec(Outcome::Ok, 1)]);
        next.absorb(s.clone(), true);
        let h = next.latency_buckets.to_json();
        assert_eq!(
            (h["count"].as_u64(), h["sum_us"].as_u64()),
            (Some(4), Some(400))
        );
        assert_eq!(h["buckets"], serde_json::json!([[100, 4]]));
        s.exit("clean");
        s.exit("clean");
        for pid in 0..20 {
            s.set_last_exit(LastExit {
                pid,
                status: "exit 0 (clean)".into(),
                code: Some(0),
                class: "clean",
                ..LastExit::default()
            });
        }
        assert_eq!(s.recent_exits.len(), RECENT_EXITS);
        assert_eq!(s.recent_exits.front().map(|e| e.pid), Some(4));
        assert_eq!(s.last_exit.as_ref().map(|e| e.pid), Some(19));
        let line = s.summary(1, 2);
        assert!(
            line.contains("busy=1 idle=2 requests=3") && line.contains("exits=[clean=2]"),
            "{line}"
        );
    }

    #[test]
    fn every_exit_class_is_reported_by_its_one_name() {
        let mut s = Stats::new();
        s.exit("nonzero");
        s.exit("crashed");
        s.exit("crashed");
        s.exit("launch_failed");
        s.exit("startup_timeout");
        let v = s.exits_json();
        assert_eq!(v["nonzero"], 1);
        assert_eq!(v["crashed"], 2);
        assert_eq!(v["launch_failed"], 1);
        for name in [
            "clean",
            "unresponsive",
            "max_requests",
            "idle",
            "excess",
            "shutdown",
        ] {
            assert_eq!(v[name], 0, "{name}");
        }
        assert_eq!(v["startup_timeout"], 1);
        assert_eq!(v["reload"], 0);
    }

    #[test]
    fn latency_quantiles_come_from_the_histogram() {
        let mut s = Stats::new();
        assert_eq!(s.latency_json()["p50"], 0);
        let recs: Vec<Record> = (1..=1000u32)
            .map(|us| Record {
                elapsed_us: us,
                request_bytes: 0,
                response_bytes: 0,
                outcome: Outcome::Ok,
                attempt: 1,
            })
            .collect();
        s.records(&recs);
        let l = s.latency_json();
        // The histogram keeps 2 significant digits: within 1%.
        let p50 = l["p50"].as_u64().unwrap();
        assert!((495..=505).contains(&p50), "{l}");
        let max = l["max"].as_u64().unwrap();
        assert!((1000..=1010).contains(&max), "{l}");
    }

    #[test]
    fn an_instance_that_could_not_start_is_a_launch_failure_by_its_class_name() {
        use crate::service::state::ExitClass;
        assert_eq!(LAUNCH_FAILED, ExitClass::LaunchFailure(0).name());
        let mut s = Stats::new();
        s.could_not_start("no such file");
        let last = s.last_exit().unwrap();
        assert!(last.is_launch_failure());
        assert_eq!(
            last.reason(),
            "last instance (pid 0) could not be started: no such file"
        );
        assert_eq!(s.to_json()["exits"][LAUNCH_FAILED], 1);
        assert_eq!(s.launch_failures(), 1);
        let crashed = LastExit::new(
            (7, ""),
            "crashed",
            "killed by signal 9".into(),
            (None, Some(9)),
        );
        assert!(!crashed.is_launch_failure());
        assert_eq!(s.to_json()["last_exit"]["pid"], 0);
    }

    #[test]
    fn reason_names_status_and_stderr() {
        let e = LastExit {
            pid: 7,
            status: "exit 1 (nonzero)".into(),
            stderr: "boom".into(),
            ..LastExit::default()
        };
        assert_eq!(
            e.reason(),
            "last instance (pid 7) exit 1 (nonzero); last stderr line: boom"
        );
    }
}
