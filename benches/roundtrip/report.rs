//! Reporting: the table of floor/Charon figures, each target with PASS or
//! MISS beside its figure, and the same as JSON lines (to a file or
//! stdout). Measuring is left to the other modules.

use std::fs::File;
use std::io::{self, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::extras::{ManagerCpu, Scale};
use crate::measure::Sample;

struct Row {
    case: &'static str,
    size: usize,
    conc: usize,
    floor: [f64; 5],
    charon: [f64; 5],
    errors: String,
}

/// Collects rows and targets; prints targets as they are judged.
pub struct Report {
    json: Option<Box<dyn Write>>,
    rows: Vec<Row>,
    targets: Vec<(String, bool)>,
    /// Diagnostic lines printed under the table.
    notes: Vec<String>,
}

fn figures(s: &Sample) -> [f64; 5] {
    [
        s.requests as f64,
        s.rps(),
        s.us(0.5),
        s.us(0.99),
        s.us(0.999),
    ]
}

/// One system's figures for one cell as a JSON line.
fn sample_json(case: &str, system: &str, size: usize, conc: usize, s: &Sample) -> Value {
    json!({"kind": "roundtrip", "case": case, "system": system, "body": size,
    "concurrency": conc, "requests": s.requests, "errors": s.errors,
    "first_error": s.first_error, "seconds": s.busy.as_secs_f64(), "rps": s.rps(),
    "p50_us": s.us(0.5), "p99_us": s.us(0.99), "p999_us": s.us(0.999),
    // The whole shape: at concurrency 1 on two cores the latency is
    // bimodal (client and server on one CPU, or a cross-CPU wake-up), and
    // p50 can sit between the modes.
    "deciles_us": (1..10).map(|d| s.us(f64::from(d) / 10.0)).collect::<Vec<_>>()})
}

fn size_name(size: usize) -> String {
    match size {
        0 => "0 B".to_string(),
        s if s >= 1024 * 1024 => format!("{} MiB", s / (1024 * 1024)),
        s => format!("{} KiB", s / 1024),
    }
}

/// One row of the table: the floor's line, then charon's with its ratios
/// to the floor, and the errors if any.
fn print_row(r: &Row) {
    for (name, v) in [("floor", r.floor), ("charon", r.charon)] {
        let ratio = if name == "charon" {
            format!(
                "{:.2} / {:.2} / {:.2}",
                r.charon[1] / r.floor[1],
                r.charon[2] / r.floor[2],
                r.charon[3] / r.floor[3]
            )
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {name} | {:.0} | {:.1} | {:.1} | {:.1} | {ratio} |",
            r.case,
            size_name(r.size),
            r.conc,
            v[1],
            v[2],
            v[3],
            v[4]
        );
    }
    if !r.errors.is_empty() {
        println!("|   errors: {} |", r.errors);
    }
}

/// The targets a row is judged against: (what, passed, the figure).
fn judge(r: &Row) -> Vec<(String, bool, f64)> {
    let mut judged = Vec::new();
    let (p50, p99, rps) = (
        r.charon[2] / r.floor[2],
        r.charon[3] / r.floor[3],
        r.charon[1] / r.floor[1],
    );
    let clean = r.errors.is_empty();
    match (r.case, r.conc, r.size) {
        ("connect", 1, 0 | 1024) => {
            judged.push((
                format!(
                    "latency {} c=1: p50 {p50:.2}x floor (<= 1.25)",
                    size_name(r.size)
                ),
                clean && p50 <= 1.25,
                p50,
            ));
            judged.push((
                format!(
                    "latency {} c=1: p99 {p99:.2}x floor (<= 2)",
                    size_name(r.size)
                ),
                clean && p99 <= 2.0,
                p99,
            ));
        }
        ("connect", 4, _) => judged.push((
            format!(
                "throughput {} c=4: {rps:.2}x floor (>= 0.8)",
                size_name(r.size)
            ),
            clean && rps >= 0.8,
            rps,
        )),
        ("persistent", _, _) => judged.push((
            format!(
                "persistent {}: p50 {p50:.2}x floor (<= 1.2)",
                size_name(r.size)
            ),
            clean && p50 <= 1.2,
            p50,
        )),
        _ => {}
    }
    judged
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

impl Report {
    pub fn new(json: Option<&str>) -> Result<Report, String> {
        let json: Option<Box<dyn Write>> = match json {
            None => None,
            Some("-") => Some(Box::new(io::stdout())),
            Some(p) => {
                Some(Box::new(File::create(p).map_err(|e| {
                    format!("cannot create --json file {p}: {e}")
                })?))
            }
        };
        Ok(Report {
            json,
            rows: Vec::new(),
            notes: Vec::new(),
            targets: Vec::new(),
        })
    }

    fn emit(&mut self, v: Value) {
        if let Some(w) = self.json.as_mut() {
            let _ = writeln!(w, "{v}");
        }
    }

    pub fn machine(&mut self, instances: usize, seconds: f64) {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_default();
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "machine: {nproc} cpus, {cpu}, kernel {}, load {}",
            kernel.trim(),
            load.trim()
        );
        println!(
            "instances N = {instances}, {seconds} s per system per cell (2 interleaved rounds)"
        );
        self.emit(
            json!({"kind": "machine", "nproc": nproc, "cpu": cpu, "kernel": kernel.trim(),
            "loadavg": load.trim(), "instances": instances, "seconds_per_cell": seconds}),
        );
    }

    /// The minimal hand-written Charon client (`r`) beside `Client` (`c`)
    /// on the same instances: a diagnostic line, no target.
    pub fn raw(&mut self, case: &'static str, size: usize, conc: usize, r: &Sample, c: &Sample) {
        self.emit(sample_json(case, "charon-raw", size, conc, r));
        let line = format!(
            "{case} {} c={conc}: minimal hand-written client on the same instances: p50 {:.1}us, Client p50 {:.1}us ({} errors)",
            size_name(size),
            r.us(0.5),
            c.us(0.5),
            r.errors
        );
        eprintln!("  {line}");
        self.notes.push(line);
    }

    pub fn cell(&mut self, case: &'static str, size: usize, conc: usize, f: &Sample, c: &Sample) {
        for (system, s) in [("floor", f), ("charon", c)] {
            self.emit(sample_json(case, system, size, conc, s));
        }
        let errors = [("floor", f), ("charon", c)]
            .iter()
            .filter(|(_, s)| s.errors > 0)
            .map(|(n, s)| {
                format!(
                    "{n}: {} errors ({})",
                    s.errors,
                    s.first_error.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let row = Row {
            case,
            size,
            conc,
            floor: figures(f),
            charon: figures(c),
            errors,
        };
        eprintln!(
            "  {case} {} c={conc}: floor {:.0}/s p50 {:.1}us, charon {:.0}/s p50 {:.1}us",
            size_name(size),
            row.floor[1],
            row.floor[2],
            row.charon[1],
            row.charon[2]
        );
        self.rows.push(row);
    }

    pub fn table(&mut self) {
        println!();
        println!("| case | body | conc | system | req/s | p50 us | p99 us | p99.9 us | charon/floor (req/s, p50, p99) |");
        println!("|---|---|---|---|---:|---:|---:|---:|---|");
        for r in &self.rows {
            print_row(r);
        }
        println!();
        for n in &self.notes {
            println!("{n}");
        }
        let judged: Vec<_> = self.rows.iter().flat_map(judge).collect();
        for (text, pass, value) in judged {
            self.target(&text, pass, value);
        }
    }

    fn target(&mut self, text: &str, pass: bool, value: f64) {
        println!("{} {text}", verdict(pass));
        self.emit(json!({"kind": "target", "target": text, "value": value, "pass": pass}));
        self.targets.push((text.to_string(), pass));
    }

    /// `charon ping -p 1` (`pings`: each round's p50) against the floor
    /// (`f`) and `Client::call` (`c`) of the same run.
    pub fn ping(&mut self, f: &Sample, c: &Sample, pings: &[f64]) {
        let ping = pings.iter().sum::<f64>() / pings.len().max(1) as f64;
        let (floor, client) = (f.us(0.5), c.us(0.5));
        self.emit(
            json!({"kind": "ping", "ping_p50_us": ping, "client_p50_us": client,
            "floor_p50_us": floor, "rounds_p50_us": pings}),
        );
        let text = format!(
            "charon ping -p 1, 0 B: p50 {ping:.1}us = {:.2}x floor ({floor:.1}us); Client::call p50 {client:.1}us = {:.2}x floor; ping/Client {:.2} (<= 1.10)",
            ping / floor,
            client / floor,
            ping / client
        );
        self.target(&text, ping <= client * 1.10, ping / client);
    }

    pub fn manager_cpu(&mut self, m: &ManagerCpu, dur: Duration) {
        let pct = 100.0 * m.manager_ticks as f64 / m.all_ticks.max(1) as f64;
        let text = format!(
            "manager CPU during a {}s saturating run ({} requests): {} of {} ticks = {pct:.2}% (<= 1%)",
            dur.as_secs(),
            m.requests,
            m.manager_ticks,
            m.all_ticks
        );
        self.target(&text, pct <= 1.0, pct);
    }

    pub fn fast_fail(&mut self, s: &Sample) {
        let text = format!(
            "fast fail: {} unavailable answers, p50 {:.0}us p99 {:.0}us (p99 <= 1000us){}",
            s.requests,
            s.us(0.5),
            s.us(0.99),
            if s.errors > 0 {
                format!(", {} wrong answers", s.errors)
            } else {
                String::new()
            }
        );
        self.target(&text, s.errors == 0 && s.us(0.99) <= 1000.0, s.us(0.99));
    }

    pub fn cold_start(&mut self, own: &[f64], cold: &[f64]) {
        let mut sorted = own.to_vec();
        sorted.sort_by(f64::total_cmp);
        let own_med = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        let worst = cold.iter().copied().fold(0.0, f64::max);
        let text = format!(
            "cold start: first requests {:?}us, worst {worst:.0}us; echo's own start-up (median of {:?}us) {own_med:.0}us + 10000us",
            cold.iter().map(|v| v.round()).collect::<Vec<_>>(),
            sorted.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
        self.target(&text, worst <= own_med + 10_000.0, worst);
    }

    /// Recycling's cost: `maximum-requests = 100` with instances exec'd
    /// (`exec`) and forked from a template (`forked`), against recycling
    /// off. The target is the template's ratio (the way to recycle often);
    /// the exec ratio is printed beside it.
    pub fn recycle(&mut self, conc: usize, off: &Sample, exec: &Sample, forked: &Sample) {
        let ratio = |s: &Sample| s.rps() / off.rps().max(1.0);
        self.emit(sample_json("recycle", "maximum-requests-0", 0, conc, off));
        self.emit(sample_json(
            "recycle",
            "maximum-requests-100",
            0,
            conc,
            exec,
        ));
        self.emit(sample_json(
            "recycle",
            "maximum-requests-100-template",
            0,
            conc,
            forked,
        ));
        let errors = off.errors + exec.errors + forked.errors;
        let text = format!(
            "recycle cost: 0 B at concurrency {conc}, maximum-requests 100 with a template {:.0}/s vs recycling off {:.0}/s = {:.2}x (>= 0.9x); by exec {:.0}/s = {:.2}x{}",
            forked.rps(),
            off.rps(),
            ratio(forked),
            exec.rps(),
            ratio(exec),
            if errors > 0 {
                format!(", {errors} failed calls")
            } else {
                String::new()
            }
        );
        self.target(&text, ratio(forked) >= 0.9 && errors == 0, ratio(forked));
    }

    pub fn scale_up(&mut self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        self.target(
            &format!("scale-up: 8 x 100ms burst on 1 instance took {ms:.0}ms (<= 200ms)"),
            ms <= 200.0,
            ms,
        );
    }

    pub fn allocations(&mut self, a: &[(String, usize, f64)]) {
        for (system, size, per) in a {
            println!(
                "allocations per request, client side, {system} {}: {per:.1}",
                size_name(*size)
            );
            self.emit(
                json!({"kind": "allocations", "system": system, "body": size, "per_request": per}),
            );
        }
    }

    pub fn scale(&mut self, s: &Scale) {
        let mib = s.rss_kib as f64 / 1024.0;
        println!(
            "scale: {} services, start-up to all answered {:.0}ms",
            s.services,
            s.ready.as_secs_f64() * 1000.0
        );
        self.emit(json!({"kind": "scale", "services": s.services, "ready_ms": s.ready.as_secs_f64() * 1000.0,
            "rss_kib": s.rss_kib, "reload_ms": s.reload.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
            "reload_error": s.reload.as_ref().err()}));
        self.target(
            &format!(
                "scale: manager RSS with {} services {mib:.1} MiB (<= 32 MiB)",
                s.services
            ),
            mib <= 32.0,
            mib,
        );
        match &s.reload {
            Ok(d) => {
                let ms = d.as_secs_f64() * 1000.0;
                self.target(
                    &format!(
                        "scale: full reload of {} services {ms:.0}ms (<= 1000ms)",
                        s.services
                    ),
                    ms <= 1000.0,
                    ms,
                );
            }
            Err(e) => self.target(&format!("scale: full reload: {e}"), false, f64::NAN),
        }
    }

    pub fn finish(&mut self) {
        let missed: Vec<&str> = self
            .targets
            .iter()
            .filter(|(_, p)| !p)
            .map(|(t, _)| t.as_str())
            .collect();
        println!();
        println!(
            "targets: {} PASS, {} MISS",
            self.targets.len() - missed.len(),
            missed.len()
        );
        if let Some(w) = self.json.as_mut() {
            let _ = w.flush();
        }
    }
}
