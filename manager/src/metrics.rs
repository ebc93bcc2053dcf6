//! The statistics in Prometheus text exposition format (version 0.0.4), for
//! `charon stats --prometheus` (node_exporter's textfile collector) and for
//! `charond --metrics-listen`, whose small HTTP thread answers `GET
//! /metrics` from the latest text the event loop published (once a tick,
//! over a channel: the loop never waits for the thread). The figures
//! themselves come from `runtime/snapshot.rs`; this module only names them after
//! Prometheus' conventions: base units (seconds, bytes), `_total` on
//! counters, HELP and TYPE before each family, and request latency as a
//! cumulative histogram (`charon_request_duration_seconds`, on the bounds
//! of [`crate::latency::PROMETHEUS_US`]) that can be summed across hosts
//! and turned into a rate.
//!
//! ```
//! let stats = serde_json::json!({"services": [{"key": "a.b.0.raw", "requests": 3}]});
//! let text = charon_manager::metrics::prometheus(&stats);
//! assert!(text.contains("charon_requests_total{key=\"a.b.0.raw\"} 3"));
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use crate::latency;

/// How a JSON figure becomes a Prometheus value in base units.
#[derive(Clone, Copy)]
enum Unit {
    /// Already a count or in seconds.
    Same,
    /// Milliseconds to seconds.
    Milli,
    /// Microseconds to seconds.
    Micro,
    /// KiB to bytes.
    Kib,
}

/// One metric: name, type, help, where its value is in a service's JSON
/// object (a path of field names), and its unit there.
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    path: &'static [&'static str],
    unit: Unit,
}

const fn counter(name: &'static str, help: &'static str, path: &'static [&'static str]) -> Metric {
    Metric {
        name,
        kind: "counter",
        help,
        path,
        unit: Unit::Same,
    }
}

const fn gauge(name: &'static str, help: &'static str, path: &'static [&'static str]) -> Metric {
    Metric {
        name,
        kind: "gauge",
        help,
        path,
        unit: Unit::Same,
    }
}

const SIMPLE: &[Metric] = &[
    counter(
        "charon_requests_total",
        "Requests served, faults included.",
        &["requests"],
    ),
    counter(
        "charon_faults_total",
        "Requests answered with a service fault.",
        &["faults"],
    ),
    counter(
        "charon_errors_total",
        "Requests answered with a framework error.",
        &["errors"],
    ),
    counter(
        "charon_unanswered_total",
        "Requests closed without an answer.",
        &["unanswered"],
    ),
    counter(
        "charon_retried_total",
        "Requests that arrived as a retry.",
        &["retried"],
    ),
    counter("charon_launches_total", "Instances started.", &["launches"]),
    counter(
        "charon_backoffs_total",
        "Times the service entered backoff.",
        &["backoffs"],
    ),
    counter(
        "charon_fast_failed_total",
        "Connections answered Unavailable during a backoff.",
        &["fast_failed"],
    ),
    counter(
        "charon_overload_seen_total",
        "Times the accept queue was seen full.",
        &["overload_seen"],
    ),
    Metric {
        unit: Unit::Milli,
        ..counter(
            "charon_exited_cpu_seconds_total",
            "User and system CPU time of exited instances.",
            &["cpu_ms"],
        )
    },
    Metric {
        unit: Unit::Kib,
        ..gauge(
            "charon_exited_max_rss_bytes",
            "Largest peak resident set of an exited instance.",
            &["max_rss_kb"],
        )
    },
    gauge(
        "charon_queue_depth",
        "Connections waiting in the accept queue.",
        &["queue_depth"],
    ),
    gauge(
        "charon_backoff_remaining_seconds",
        "Time left in the current backoff.",
        &["backoff_remaining_s"],
    ),
    gauge(
        "charon_instances_max",
        "The service's maximum-processes.",
        &["instances", "max"],
    ),
    Metric {
        unit: Unit::Micro,
        ..gauge(
            "charon_request_duration_max_seconds",
            "Slowest request since charond started.",
            &["latency_us", "max"],
        )
    },
];

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: &Value, unit: Unit) -> Option<String> {
    let Value::Number(n) = v else { return None };
    let scaled = |div: f64| n.as_f64().map(|x| (x / div).to_string());
    match unit {
        Unit::Same => Some(n.to_string()),
        Unit::Milli => scaled(1e3),
        Unit::Micro => scaled(1e6),
        Unit::Kib => n.as_u64().map(|x| (x * 1024).to_string()),
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Formats a `stats` answer (`{"services":[...]}`) as Prometheus text.
/// Fields a service lacks are left out.
#[must_use]
pub fn prometheus(stats: &Value) -> String {
    let empty = Vec::new();
    let services = stats["services"].as_array().unwrap_or(&empty);
    let mut out = String::new();
    simple(&mut out, services);
    instances(&mut out, services);
    exits(&mut out, services);
    states(&mut out, services);
    histogram(&mut out, services);
    manager(&mut out, &stats["manager"]);
    out
}

/// A service's key as a label value.
fn key(s: &Value) -> String {
    label(s["key"].as_str().unwrap_or(""))
}

/// The metrics that are one number per service ([`SIMPLE`]).
fn simple(out: &mut String, services: &[Value]) {
    for m in SIMPLE {
        header(out, m.name, m.kind, m.help);
        for s in services {
            let v = m.path.iter().fold(s, |v, p| &v[*p]);
            if let Some(n) = number(v, m.unit) {
                let _ = writeln!(out, "{}{{key=\"{}\"}} {n}", m.name, key(s));
            }
        }
    }
}

/// `charon_instances`: a gauge per service and instance state.
fn instances(out: &mut String, services: &[Value]) {
    header(out, "charon_instances", "gauge", "Instances by state.");
    for s in services {
        for st in ["running", "busy", "idle"] {
            if let Some(n) = number(&s["instances"][st], Unit::Same) {
                let _ = writeln!(
                    out,
                    "charon_instances{{key=\"{}\",state=\"{st}\"}} {n}",
                    key(s)
                );
            }
        }
    }
}

/// `charon_exits_total`: a counter per service and exit reason.
fn exits(out: &mut String, services: &[Value]) {
    header(
        out,
        "charon_exits_total",
        "counter",
        "Instance exits by reason.",
    );
    for s in services {
        if let Some(m) = s["exits"].as_object() {
            for (reason, v) in m {
                if let Some(n) = number(v, Unit::Same) {
                    let _ = writeln!(
                        out,
                        "charon_exits_total{{key=\"{}\",reason=\"{}\"}} {n}",
                        key(s),
                        label(reason)
                    );
                }
            }
        }
    }
}

/// `charon_state`: per service, 1 for its state and 0 for the others.
fn states(out: &mut String, services: &[Value]) {
    header(
        out,
        "charon_state",
        "gauge",
        "1 for the service's state (idle, running, backoff, or broken: its config file has errors).",
    );
    for s in services {
        let cur = s["state"].as_str().unwrap_or("");
        for st in ["idle", "running", "backoff", "broken"] {
            let _ = writeln!(
                out,
                "charon_state{{key=\"{}\",state=\"{st}\"}} {}",
                key(s),
                u8::from(cur == st)
            );
        }
    }
}

/// charond's own fd headroom (absent where `/proc` could not be read).
fn manager(out: &mut String, m: &Value) {
    for (name, field, help) in [
        (
            "charon_manager_fds_open",
            "fds_open",
            "File descriptors charond has open.",
        ),
        (
            "charon_manager_fds_limit",
            "fds_limit",
            "charond's soft RLIMIT_NOFILE (raised to the hard limit at start).",
        ),
    ] {
        if let Some(n) = m[field].as_u64() {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {n}");
        }
    }
}

/// `charon_request_duration_seconds`: the `latency_histogram` of each
/// service on the bounds of [`latency::PROMETHEUS_US`], cumulative.
fn histogram(out: &mut String, services: &[Value]) {
    const NAME: &str = "charon_request_duration_seconds";
    header(
        out,
        NAME,
        "histogram",
        "Request latency, accept to response written, since charond started.",
    );
    for s in services {
        let h = &s["latency_histogram"];
        let (Some(count), Some(sum_us)) = (h["count"].as_u64(), h["sum_us"].as_u64()) else {
            continue;
        };
        let key = label(s["key"].as_str().unwrap_or(""));
        let buckets = latency::parse(h);
        for le in latency::PROMETHEUS_US {
            let _ = writeln!(
                out,
                "{NAME}_bucket{{key=\"{key}\",le=\"{}\"}} {}",
                latency::seconds_label(le),
                latency::cumulative(&buckets, le)
            );
        }
        let _ = writeln!(out, "{NAME}_bucket{{key=\"{key}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{NAME}_sum{{key=\"{key}\"}} {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{NAME}_count{{key=\"{key}\"}} {count}");
    }
}

/// Starts the `/metrics` thread on `addr`; the loop sends it fresh text.
///
/// # Errors
///
/// The address cannot be bound (one line for the fatal message).
pub(crate) fn serve(addr: SocketAddr) -> Result<Sender<String>, String> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| format!("unable to listen for metrics on {addr}: {e}"))?;
    let (tx, rx) = crossbeam_channel::bounded::<String>(1);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || answer_forever(&server, &rx))
        .map_err(|e| format!("unable to start the metrics thread: {e}"))?;
    Ok(tx)
}

fn answer_forever(server: &tiny_http::Server, rx: &Receiver<String>) {
    let mut latest = String::new();
    for req in server.incoming_requests() {
        while let Ok(t) = rx.try_recv() {
            latest = t;
        }
        let ok = *req.method() == tiny_http::Method::Get
            && (req.url() == "/metrics" || req.url().starts_with("/metrics?"));
        let resp = if ok {
            let r = tiny_http::Response::from_string(latest.clone());
            match tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4"[..],
            ) {
                Ok(h) => r.with_header(h),
                Err(()) => r,
            }
        } else {
            tiny_http::Response::from_string("only GET /metrics is served here\n")
                .with_status_code(404)
        };
        // A client gone before its answer is not our problem.
        let _ = req.respond(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_series_has_help_and_type_first_and_labels_are_escaped() {
        let stats = json!({"services": [{
            "key": "a.b.0.raw", "state": "backoff", "requests": 5, "faults": 1,
            "instances": {"running": 2, "busy": 1, "idle": 1, "max": 4},
            "latency_us": {"p50": 10, "p90": 20, "p99": 30, "p999": 40, "max": 1500},
            "exits": {"clean": 1, "we\"ird": 2},
            "backoff_remaining_s": 1.5, "cpu_ms": 35, "max_rss_kb": 2,
        }, {"key": "c.d.0.raw", "latency_histogram": {"count": 1, "sum_us": 5, "buckets": [[5, 1]]}}]});
        let text = prometheus(&stats);
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|x| name.strip_suffix(x))
                    .find(|f| declared.contains(*f))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{line}");
            }
        }
        assert!(text.contains("charon_requests_total{key=\"a.b.0.raw\"} 5"));
        assert!(text.contains("charon_backoff_remaining_seconds{key=\"a.b.0.raw\"} 1.5"));
        assert!(text.contains("charon_exits_total{key=\"a.b.0.raw\",reason=\"we\\\"ird\"} 2"));
        assert!(text.contains("charon_state{key=\"a.b.0.raw\",state=\"backoff\"} 1"));
        assert!(text.contains("charon_state{key=\"a.b.0.raw\",state=\"idle\"} 0"));
        // Base units: seconds and bytes.
        assert!(text.contains("charon_exited_cpu_seconds_total{key=\"a.b.0.raw\"} 0.035"));
        assert!(text.contains("charon_exited_max_rss_bytes{key=\"a.b.0.raw\"} 2048"));
        assert!(text.contains("charon_request_duration_max_seconds{key=\"a.b.0.raw\"} 0.0015"));
        // Absent fields are left out, not written as zero; so is the
        // histogram of a snapshot without one.
        assert!(!text.contains("charon_queue_depth{"));
        assert!(!text.contains("charon_request_duration_seconds_count{key=\"a.b.0.raw\""));
        assert!(text.contains("charon_request_duration_seconds_count{key=\"c.d.0.raw\"} 1"));
        assert!(!text.contains("quantile"));
    }

    #[test]
    fn latency_is_a_cumulative_histogram_in_seconds() {
        let mut b = latency::Buckets::new();
        for us in [8, 40, 40, 900, 3_000_000] {
            b.record(us);
        }
        let stats = json!({"services": [{"key": "a.b.0.raw", "latency_histogram": b.to_json()}]});
        let text = prometheus(&stats);
        let sample = |le: &str| {
            let want =
                format!("charon_request_duration_seconds_bucket{{key=\"a.b.0.raw\",le=\"{le}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&want)).unwrap();
            line[want.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(sample("0.000005"), 0);
        assert_eq!(sample("0.00001"), 1);
        assert_eq!(sample("0.00005"), 3);
        assert_eq!(sample("0.001"), 4);
        assert_eq!(sample("2.5"), 4);
        assert_eq!(sample("5"), 5);
        assert_eq!(sample("+Inf"), 5);
        assert!(text.contains("# TYPE charon_request_duration_seconds histogram"));
        assert!(text.contains("charon_request_duration_seconds_sum{key=\"a.b.0.raw\"} 3.000988"));
        assert!(text.contains("charon_request_duration_seconds_count{key=\"a.b.0.raw\"} 5"));
        // Buckets never go down from one bound to the next.
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("charon_request_duration_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), latency::PROMETHEUS_US.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
    }
}
