//! What `charon top` shows, as pure functions: the rows of one frame from
//! two `stats` answers taken an interval apart (rates, interval
//! percentiles, faults and exits come from their difference), in the
//! order of a [`Sort`], and the frame as plain text. The sort and how keys
//! change it are `sort.rs`'s; asking the manager and drawing on a
//! terminal are `mod.rs`'s and `draw.rs`'s.

use std::cmp::Ordering;
use std::time::Duration;

use charon_manager::latency;
use serde_json::Value;

use super::sort::{Column, Sort, COLUMNS};
use crate::cli::stats::align;

/// A service's state as `top` colours it.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Idle,
    Running,
    /// In backoff, with the seconds left.
    Backoff(f64),
    /// A state this `charon` does not know (a newer charond).
    Other(String),
}

/// One service's line.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: String,
    pub state: State,
    pub busy: u64,
    pub idle: u64,
    pub max: u64,
    /// Requests a second over the interval; `None` before there is one.
    pub rps: Option<f64>,
    /// Interval latency percentiles in µs; `None` without a request.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Faults in the interval.
    pub faults: Option<u64>,
    /// Exits in the interval by reason (only the reasons that happened).
    pub exits: Vec<(String, u64)>,
    pub queue: u64,
    /// Why the service is in backoff: its last exit.
    pub reason: Option<String>,
}

impl Row {
    fn exit_count(&self) -> u64 {
        self.exits.iter().map(|(_, n)| n).sum()
    }

    /// The cells of [`COLUMNS`], then the reason.
    #[must_use]
    pub fn cells(&self) -> Vec<String> {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        vec![
            self.key.clone(),
            match &self.state {
                State::Idle => "idle".into(),
                State::Running => "running".into(),
                State::Backoff(s) => format!("backoff {s:.0}s"),
                State::Other(s) => s.clone(),
            },
            self.busy.to_string(),
            self.idle.to_string(),
            self.max.to_string(),
            opt(self.rps.map(|r| format!("{r:.1}"))),
            opt(self.p50_us.map(duration)),
            opt(self.p99_us.map(duration)),
            opt(self.faults.map(|f| f.to_string())),
            if self.exits.is_empty() {
                "-".into()
            } else {
                let e: Vec<String> = self.exits.iter().map(|(k, n)| format!("{k}={n}")).collect();
                e.join(",")
            },
            self.queue.to_string(),
            opt(self.reason.clone()),
        ]
    }
}

/// A latency for people: `41us`, `2.5ms`, `1.20s`.
#[must_use]
pub fn duration(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}us")
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1_000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

/// The header cells, the sorted column marked `v` when the largest figure
/// (or the last name) is on top, `^` when the smallest (or first) is.
#[must_use]
pub fn header(sort: Sort) -> Vec<String> {
    let mut h: Vec<String> = COLUMNS
        .iter()
        .map(|c| {
            if *c == sort.column {
                let down = sort.reversed == (*c == Column::Key || *c == Column::State);
                format!("{}{}", c.title(), if down { "v" } else { "^" })
            } else {
                c.title().to_string()
            }
        })
        .collect();
    h.push("REASON".into());
    h
}

fn services(v: &Value) -> &[Value] {
    v["services"].as_array().map_or(&[], Vec::as_slice)
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `cur - prev` for a counter; a counter that went down started again.
fn delta(prev: &Value, cur: &Value) -> u64 {
    let (p, c) = (count(prev), count(cur));
    if c >= p {
        c - p
    } else {
        c
    }
}

/// Why a service in backoff cannot run: its last exit and stderr line.
fn backoff_reason(e: &Value) -> Option<String> {
    let what = e["description"].as_str()?;
    let mut r = format!("pid {} {what}", count(&e["pid"]));
    if let Some(l) = e["stderr"].as_str().filter(|l| !l.is_empty()) {
        r.push_str(": ");
        r.push_str(l);
    }
    Some(r)
}

/// A service's state, from its object.
fn state(cur: &Value) -> State {
    match cur["state"].as_str() {
        Some("idle") => State::Idle,
        Some("running") => State::Running,
        Some("backoff") => State::Backoff(cur["backoff_remaining_s"].as_f64().unwrap_or(0.0)),
        other => State::Other(other.unwrap_or("-").to_string()),
    }
}

/// Why a service in backoff or broken runs nothing.
fn reason(state: &State, cur: &Value) -> Option<String> {
    match state {
        State::Backoff(_) => backoff_reason(&cur["last_exit"]),
        // A broken config file: its first error says why nothing runs.
        State::Other(s) if s == "broken" => cur["config_errors"][0]
            .as_str()
            .map(|e| format!("config error: {e}")),
        _ => None,
    }
}

/// The exits by class between `prev` and `cur`, the classes with none
/// left out.
fn exits_since(prev: &Value, cur: &Value) -> Vec<(String, u64)> {
    cur["exits"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), delta(&prev["exits"][k], v)))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .unwrap_or_default()
}

/// One row from a service's object now and `elapsed` ago (`None`: no
/// earlier figures for it).
fn row(prev: Option<&Value>, cur: &Value, elapsed: Duration) -> Row {
    let secs = elapsed.as_secs_f64();
    let prev = prev.filter(|_| secs > 0.0);
    let state = state(cur);
    let reason = reason(&state, cur);
    let window = prev.map(|p| {
        latency::difference(
            &latency::parse(&p["latency_histogram"]),
            &latency::parse(&cur["latency_histogram"]),
        )
    });
    let exits = prev.map(|p| exits_since(p, cur)).unwrap_or_default();
    Row {
        key: cur["key"].as_str().unwrap_or("-").to_string(),
        state,
        busy: count(&cur["instances"]["busy"]),
        idle: count(&cur["instances"]["idle"]),
        max: count(&cur["instances"]["max"]),
        rps: prev.map(|p| delta(&p["requests"], &cur["requests"]) as f64 / secs),
        p50_us: window.as_ref().and_then(|w| latency::quantile_us(w, 0.5)),
        p99_us: window.as_ref().and_then(|w| latency::quantile_us(w, 0.99)),
        faults: prev.map(|p| delta(&p["faults"], &cur["faults"])),
        exits,
        queue: count(&cur["queue_depth"]),
        reason,
    }
}

fn compare(a: &Row, b: &Row, column: Column) -> Ordering {
    let f = |x: Option<f64>| x.unwrap_or(-1.0);
    // Figures largest first; names A to Z.
    match column {
        Column::Key => a.key.cmp(&b.key),
        Column::State => format!("{:?}", a.state).cmp(&format!("{:?}", b.state)),
        Column::Busy => b.busy.cmp(&a.busy),
        Column::Idle => b.idle.cmp(&a.idle),
        Column::Max => b.max.cmp(&a.max),
        Column::Rps => f(b.rps).total_cmp(&f(a.rps)),
        Column::P50 => f(b.p50_us).total_cmp(&f(a.p50_us)),
        Column::P99 => f(b.p99_us).total_cmp(&f(a.p99_us)),
        Column::Faults => b.faults.cmp(&a.faults),
        Column::Exits => b.exit_count().cmp(&a.exit_count()),
        Column::Queue => b.queue.cmp(&a.queue),
    }
}

/// The rows of a frame: every service in `cur`, with the figures of the
/// `elapsed` since `prev`, in `sort` order (ties by key).
#[must_use]
pub fn rows(prev: &Value, cur: &Value, elapsed: Duration, sort: Sort) -> Vec<Row> {
    let mut out: Vec<Row> = services(cur)
        .iter()
        .map(|s| {
            let before = services(prev).iter().find(|p| p["key"] == s["key"]);
            row(before, s, elapsed)
        })
        .collect();
    out.sort_by(|a, b| {
        let o = compare(a, b, sort.column);
        let o = if sort.reversed { o.reverse() } else { o };
        o.then_with(|| a.key.cmp(&b.key))
    });
    out
}

/// The title line: services, total rate and sort.
#[must_use]
pub fn title(rows: &[Row], sort: Sort) -> String {
    let total: Option<f64> = rows.iter().map(|r| r.rps).sum();
    format!(
        "charon top: {} service(s), {} req/s; sorted by {}{}",
        rows.len(),
        total.map_or_else(|| "-".into(), |t| format!("{t:.1}")),
        sort.column.title(),
        if sort.reversed { " (reversed)" } else { "" },
    )
}

/// One frame as plain text: the title, the header and one line per row.
#[must_use]
pub fn plain(rows: &[Row], sort: Sort) -> String {
    let mut table = vec![header(sort)];
    table.extend(rows.iter().map(Row::cells));
    format!("{}\n{}", title(rows, sort), align(&table))
}

#[cfg(test)]
mod tests {
    use super::super::sort::{on_key, Input};
    use super::*;
    use serde_json::json;

    fn hist(b: &[(u64, u64)]) -> Value {
        let count: u64 = b.iter().map(|(_, c)| c).sum();
        json!({"count": count, "sum_us": 0, "buckets": b.iter().map(|(l, c)| json!([l, c])).collect::<Vec<_>>()})
    }

    fn svc(key: &str, requests: u64, faults: u64, crashed: u64, h: &[(u64, u64)]) -> Value {
        json!({
            "key": key, "state": "running",
            "instances": {"running": 3, "busy": 2, "idle": 1, "max": 4},
            "requests": requests, "faults": faults, "queue_depth": 5,
            "exits": {"clean": 1, "crashed": crashed},
            "latency_histogram": hist(h),
        })
    }

    #[test]
    fn figures_of_the_interval_come_from_the_difference() {
        let prev = json!({"services": [svc("a.a.0.raw", 100, 1, 0, &[(40, 100)])]});
        // 200 more requests in 2 s: 100 at 31-40 us, 96 at 80-100 us, 4 at
        // 2-2.5 ms.
        let cur =
            json!({"services": [svc("a.a.0.raw", 300, 4, 2, &[(40, 200), (100, 96), (2_500, 4)])]});
        let r = &rows(&prev, &cur, Duration::from_secs(2), Sort::default())[0];
        assert_eq!(r.rps, Some(100.0));
        assert_eq!(r.faults, Some(3));
        assert_eq!(r.exits, vec![("crashed".to_string(), 2)]);
        assert_eq!((r.busy, r.idle, r.max, r.queue), (2, 1, 4, 5));
        assert_eq!(r.p50_us, Some(40.0));
        let p99 = r.p99_us.unwrap();
        assert!((2_000.0..=2_500.0).contains(&p99), "{p99}");
        let cells = r.cells();
        assert_eq!(cells[5..7], ["100.0", "40us"]);
        assert!(
            cells[7].starts_with("2.") && cells[7].ends_with("ms"),
            "{cells:?}"
        );
        assert_eq!(cells[8..10], ["3", "crashed=2"]);
    }

    #[test]
    fn without_an_interval_the_rates_are_unknown_not_zero() {
        let cur = json!({"services": [svc("a.a.0.raw", 300, 4, 2, &[(40, 200)])]});
        for (prev, elapsed) in [
            (cur.clone(), Duration::ZERO),
            (json!({"services": []}), Duration::from_secs(1)),
        ] {
            let r = &rows(&prev, &cur, elapsed, Sort::default())[0];
            assert_eq!((r.rps, r.p50_us, r.faults), (None, None, None));
            assert!(r.exits.is_empty());
            assert_eq!(r.cells()[5], "-");
        }
        // No request in the interval: a rate of 0, no percentile.
        let r = &rows(&cur, &cur, Duration::from_secs(1), Sort::default())[0];
        assert_eq!((r.rps, r.p50_us), (Some(0.0), None));
    }

    #[test]
    fn a_manager_that_started_again_counts_from_zero() {
        let prev = json!({"services": [svc("a.a.0.raw", 1000, 9, 5, &[(40, 1000)])]});
        let cur = json!({"services": [svc("a.a.0.raw", 10, 1, 1, &[(50, 10)])]});
        let r = &rows(&prev, &cur, Duration::from_secs(1), Sort::default())[0];
        assert_eq!((r.rps, r.faults), (Some(10.0), Some(1)));
        assert_eq!(r.exits, vec![("crashed".to_string(), 1)]);
        assert_eq!(r.p50_us, Some(45.0));
    }

    #[test]
    fn a_broken_config_file_shows_its_first_error() {
        let cur = json!({"services": [{
            "key": "c.c.0.raw", "state": "broken",
            "config_errors": ["c.c.0.raw.toml:3: unknown key `exce`", "second"],
        }]});
        let r = &rows(&cur, &cur, Duration::ZERO, Sort::default())[0];
        assert_eq!(
            r.reason.as_deref(),
            Some("config error: c.c.0.raw.toml:3: unknown key `exce`")
        );
    }

    #[test]
    fn backoff_shows_time_left_and_the_last_exit() {
        let cur = json!({"services": [{
            "key": "b.b.0.raw", "state": "backoff", "backoff_remaining_s": 31.6,
            "last_exit": {"pid": 7, "description": "exit 3 (unrecoverable)", "stderr": "no db"},
        }, {"key": "c.c.0.raw", "state": "broken"}]});
        let r = rows(&cur, &cur, Duration::ZERO, Sort::default());
        assert_eq!(r[0].state, State::Backoff(31.6));
        let cells = r[0].cells();
        assert_eq!(cells[1], "backoff 32s");
        assert_eq!(cells[11], "pid 7 exit 3 (unrecoverable): no db");
        assert_eq!(r[1].state, State::Other("broken".into()));
        assert_eq!(r[1].reason, None, "a broken entry without errors has none");
        assert_eq!(r[1].cells()[11], "-");
    }

    #[test]
    fn rows_sort_by_the_chosen_column_largest_first() {
        let prev = json!({"services": [
            svc("a.a.0.raw", 0, 0, 0, &[]), svc("b.b.0.raw", 0, 0, 0, &[]), svc("c.c.0.raw", 0, 0, 0, &[]),
        ]});
        let cur = json!({"services": [
            svc("a.a.0.raw", 5, 0, 0, &[]), svc("b.b.0.raw", 50, 0, 0, &[]), svc("c.c.0.raw", 20, 0, 0, &[]),
        ]});
        let keys = |sort| -> Vec<String> {
            rows(&prev, &cur, Duration::from_secs(1), sort)
                .into_iter()
                .map(|r| r.key)
                .collect()
        };
        assert_eq!(
            keys(Sort::default()),
            ["a.a.0.raw", "b.b.0.raw", "c.c.0.raw"]
        );
        let by_rate = Sort {
            column: Column::Rps,
            reversed: false,
        };
        assert_eq!(keys(by_rate), ["b.b.0.raw", "c.c.0.raw", "a.a.0.raw"]);
        let (rev, _) = on_key(by_rate, Input::Reverse);
        assert_eq!(keys(rev), ["a.a.0.raw", "c.c.0.raw", "b.b.0.raw"]);
        // Ties (all queues 5) by key.
        let by_queue = Sort {
            column: Column::Queue,
            reversed: false,
        };
        assert_eq!(keys(by_queue), ["a.a.0.raw", "b.b.0.raw", "c.c.0.raw"]);
    }

    #[test]
    fn the_plain_frame_has_a_title_a_marked_header_and_a_line_per_service() {
        let prev = json!({"services": [svc("a.a.0.raw", 0, 0, 0, &[])]});
        let cur = json!({"services": [svc("a.a.0.raw", 7, 0, 0, &[(40, 7)])]});
        let sort = Sort {
            column: Column::Rps,
            reversed: false,
        };
        let text = plain(&rows(&prev, &cur, Duration::from_secs(1), sort), sort);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("charon top: 1 service(s), 7.0 req/s; sorted by REQ/S"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("KEY")
                && lines[1].contains("REQ/Sv")
                && lines[1].ends_with("REASON"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("a.a.0.raw") && lines[2].contains("running"),
            "{text}"
        );
    }
}
