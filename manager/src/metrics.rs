//! The statistics in Prometheus text exposition format (version 0.0.4), for
//! `charon stats --prometheus` (node_exporter's textfile collector) and for
//! `charond --metrics-listen`, whose small HTTP thread answers `GET
//! /metrics` from the latest text the event loop published (once a tick,
//! over a channel: the loop never waits for the thread). The figures
//! themselves come from `snapshot.rs`.
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

/// One metric: name, type, help, and where its value is in a service's
/// JSON object (a path of field names).
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    path: &'static [&'static str],
}

const SIMPLE: &[Metric] = &[
    Metric {
        name: "charon_requests_total",
        kind: "counter",
        help: "Requests answered, faults included.",
        path: &["requests"],
    },
    Metric {
        name: "charon_faults_total",
        kind: "counter",
        help: "Requests answered with a service fault.",
        path: &["faults"],
    },
    Metric {
        name: "charon_retried_total",
        kind: "counter",
        help: "Requests that arrived as a retry.",
        path: &["retried"],
    },
    Metric {
        name: "charon_launches_total",
        kind: "counter",
        help: "Instances started.",
        path: &["launches"],
    },
    Metric {
        name: "charon_backoffs_total",
        kind: "counter",
        help: "Times the service entered backoff.",
        path: &["backoffs"],
    },
    Metric {
        name: "charon_fast_failed_total",
        kind: "counter",
        help: "Connections answered Unavailable during a backoff.",
        path: &["fast_failed"],
    },
    Metric {
        name: "charon_exited_cpu_milliseconds_total",
        kind: "counter",
        help: "CPU time of exited instances.",
        path: &["cpu_ms"],
    },
    Metric {
        name: "charon_exited_max_rss_kilobytes",
        kind: "gauge",
        help: "Largest resident set of an exited instance.",
        path: &["max_rss_kb"],
    },
    Metric {
        name: "charon_queue_depth",
        kind: "gauge",
        help: "Connections waiting in the accept queue.",
        path: &["queue_depth"],
    },
    Metric {
        name: "charon_backoff_remaining_seconds",
        kind: "gauge",
        help: "Time left in the current backoff.",
        path: &["backoff_remaining_s"],
    },
    Metric {
        name: "charon_instances_max",
        kind: "gauge",
        help: "maximum-processes.",
        path: &["instances", "max"],
    },
    Metric {
        name: "charon_latency_max_microseconds",
        kind: "gauge",
        help: "Slowest request served.",
        path: &["latency_us", "max"],
    },
];

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        _ => None,
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
    for m in SIMPLE {
        header(&mut out, m.name, m.kind, m.help);
        for s in services {
            let key = label(s["key"].as_str().unwrap_or(""));
            let v = m.path.iter().fold(s, |v, p| &v[*p]);
            if let Some(n) = number(v) {
                let _ = writeln!(out, "{}{{key=\"{key}\"}} {n}", m.name);
            }
        }
    }
    header(&mut out, "charon_instances", "gauge", "Instances by state.");
    for s in services {
        let key = label(s["key"].as_str().unwrap_or(""));
        for st in ["running", "busy", "idle"] {
            if let Some(n) = number(&s["instances"][st]) {
                let _ = writeln!(out, "charon_instances{{key=\"{key}\",state=\"{st}\"}} {n}");
            }
        }
    }
    header(
        &mut out,
        "charon_latency_microseconds",
        "gauge",
        "Request latency quantiles since the manager started.",
    );
    for s in services {
        let key = label(s["key"].as_str().unwrap_or(""));
        for (q, f) in [
            ("0.5", "p50"),
            ("0.9", "p90"),
            ("0.99", "p99"),
            ("0.999", "p999"),
        ] {
            if let Some(n) = number(&s["latency_us"][f]) {
                let _ = writeln!(
                    out,
                    "charon_latency_microseconds{{key=\"{key}\",quantile=\"{q}\"}} {n}"
                );
            }
        }
    }
    header(
        &mut out,
        "charon_exits_total",
        "counter",
        "Instance exits by reason.",
    );
    for s in services {
        let key = label(s["key"].as_str().unwrap_or(""));
        if let Some(m) = s["exits"].as_object() {
            for (reason, v) in m {
                if let Some(n) = number(v) {
                    let _ = writeln!(
                        out,
                        "charon_exits_total{{key=\"{key}\",reason=\"{}\"}} {n}",
                        label(reason)
                    );
                }
            }
        }
    }
    header(
        &mut out,
        "charon_state",
        "gauge",
        "1 for the service's state (idle, running or backoff).",
    );
    for s in services {
        let key = label(s["key"].as_str().unwrap_or(""));
        let cur = s["state"].as_str().unwrap_or("");
        for st in ["idle", "running", "backoff"] {
            let _ = writeln!(
                out,
                "charon_state{{key=\"{key}\",state=\"{st}\"}} {}",
                u8::from(cur == st)
            );
        }
    }
    out
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
            "latency_us": {"p50": 10, "p90": 20, "p99": 30, "p999": 40, "max": 50},
            "exits": {"clean": 1, "we\"ird": 2},
            "backoff_remaining_s": 1.5,
        }]});
        let text = prometheus(&stats);
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{line}");
            }
        }
        assert!(text.contains("charon_requests_total{key=\"a.b.0.raw\"} 5"));
        assert!(text.contains("charon_backoff_remaining_seconds{key=\"a.b.0.raw\"} 1.5"));
        assert!(text.contains("charon_exits_total{key=\"a.b.0.raw\",reason=\"we\\\"ird\"} 2"));
        assert!(text.contains("charon_state{key=\"a.b.0.raw\",state=\"backoff\"} 1"));
        assert!(text.contains("charon_state{key=\"a.b.0.raw\",state=\"idle\"} 0"));
        assert!(
            text.contains("charon_latency_microseconds{key=\"a.b.0.raw\",quantile=\"0.99\"} 30")
        );
        // Absent fields are left out, not written as zero.
        assert!(!text.contains("charon_queue_depth{"));
    }
}
