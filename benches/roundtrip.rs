//! The round-trip benchmark: Charon against the no-framework floor, run
//! A B A B in one process so machine noise hits both, then the targets of
//! issue 5 each printed with PASS or MISS, a table, and JSON lines.
//!
//! `cargo bench --bench roundtrip [-- --quick] [--instances N]
//! [--seconds S] [--json PATH|-] [--only CELLS]`. The floor servers, charond and the
//! measurements live in the modules under `benches/roundtrip/`; this file
//! parses options, orders the runs and reports. BENCHMARKS.md has figures.
//!
//! `unsafe` lives in `roundtrip/sys.rs` (the counting allocator) and in the
//! tests' `fds.rs` it shares (placing a child's fds before exec).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "roundtrip/daemon.rs"]
mod daemon;
#[path = "roundtrip/extras.rs"]
mod extras;
// The integration tests' fd placement for a child.
#[path = "../tests/util/fds.rs"]
mod fds;
#[path = "roundtrip/floor.rs"]
mod floor;
#[path = "roundtrip/measure.rs"]
mod measure;
#[path = "roundtrip/report.rs"]
mod report;
#[path = "roundtrip/sys.rs"]
mod sys;

use std::time::Duration;

use charon_client::Request;

use daemon::{echo_conf, Daemon};
use floor::{FloorClient, FloorServers};
use measure::{run_load, Sample};
use report::Report;

#[global_allocator]
static ALLOC: sys::Counting = sys::Counting;

const KEY: &str = "system.echo.0.raw";
const FALSE_KEY: &str = "bench.false.0.raw";
const BURST_KEY: &str = "bench.burst.0.raw";
/// The echo with recycling on: `maximum-requests = 100`, default jitter.
const RECYCLE_KEY: &str = "bench.recycle.0.raw";
/// The same, its instances forked from a template (`template = true`).
const TEMPLATE_KEY: &str = "bench.template.0.raw";
/// Concurrency of the recycle-cost cell.
const RECYCLE_CONC: usize = 4;
const SIZES: [usize; 4] = [0, 1024, 64 * 1024, 1024 * 1024];
const COLD: usize = 5;

struct Opts {
    quick: bool,
    instances: usize,
    seconds: f64,
    json: Option<String>,
    only: Option<Only>,
}

/// `--only`: run just these connect cells (body bytes, concurrency), the
/// persistent cells if named, the scale-up burst (five times) and the
/// recycle-cost cell if named; no other targets. For looking at one thing
/// under perf or strace.
struct Only {
    cells: Vec<(usize, usize)>,
    persistent: bool,
    scale_up: bool,
    recycle: bool,
}

/// `--only 65536x4,0x1,persistent,scale-up,recycle`.
fn parse_only(v: &str) -> Option<Only> {
    let mut o = Only {
        cells: Vec::new(),
        persistent: false,
        scale_up: false,
        recycle: false,
    };
    for part in v.split(',') {
        match part {
            "persistent" => o.persistent = true,
            "scale-up" => o.scale_up = true,
            "recycle" => o.recycle = true,
            _ => {
                let (size, conc) = part.split_once('x')?;
                let conc: usize = conc.parse().ok().filter(|&c| (1..=64).contains(&c))?;
                o.cells.push((size.parse().ok()?, conc));
            }
        }
    }
    Some(o)
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        instances: 2,
        seconds: 2.0,
        json: None,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--instances" => {
                o.instances = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| (1..=64).contains(&n))
                    .ok_or("--instances needs a whole number from 1 to 64")?;
            }
            "--seconds" => {
                o.seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&s: &f64| s > 0.0 && s <= 60.0)
                    .ok_or("--seconds needs a number of seconds above 0, at most 60")?;
            }
            "--only" => {
                o.only = Some(
                    args.next()
                        .as_deref()
                        .and_then(parse_only)
                        .ok_or("--only needs cells like 65536x4,0x1 (body bytes x concurrency), persistent, scale-up or recycle")?,
                );
            }
            "--json" => o.json = Some(args.next().ok_or("--json needs a path, or - for stdout")?),
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other:?}; valid: --quick, --instances N, --seconds S, --json PATH|-, --only CELLS"
                ))
            }
        }
    }
    if o.quick {
        o.seconds = o.seconds.min(0.5);
    }
    Ok(o)
}

fn main() {
    if floor::serve_if_asked() {
        return;
    }
    if let Some(code) = client_loop_if_asked() {
        std::process::exit(code);
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            std::process::exit(2);
        }
    };
    let mut report = match Report::new(opts.json.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            std::process::exit(2);
        }
    };
    let result = run(&opts, &mut report);
    report.finish();
    let left = leftovers();
    if !left.is_empty() {
        eprintln!("roundtrip: processes left behind: {left:?}");
        std::process::exit(1);
    }
    println!("cleanup: no process left behind");
    if let Err(e) = result {
        eprintln!("roundtrip: {e}");
        std::process::exit(1);
    }
}

fn run(o: &Opts, report: &mut Report) -> Result<(), String> {
    let n = o.instances;
    let cold: Vec<String> = (1..=COLD).map(|i| format!("bench.cold{i}.0.raw")).collect();
    let d = Daemon::start(&services(n, &cold))?;
    let sock_dir = tempfile::Builder::new()
        .prefix("chf")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    let fl = FloorServers::start(&sock_dir.path().join("floor.sock"), n, false)
        .map_err(|e| format!("floor servers: {e}"))?;
    let pfl = FloorServers::start(&sock_dir.path().join("pfloor.sock"), 1, true)
        .map_err(|e| format!("persistent floor server: {e}"))?;
    report.machine(n, o.seconds);

    // Warm both (page cache, instances in accept) before anything counts.
    let warm = Duration::from_millis(if o.quick { 200 } else { 500 });
    ab(&d, &fl, 0, n, warm, 1, false);

    let rounds = 2;
    let per = Duration::from_secs_f64(o.seconds / f64::from(rounds));
    latency_cells(o, &d, &fl, &pfl, per, rounds, report)?;
    if o.only.as_ref().is_none_or(|only| only.recycle) {
        let (off, exec, forked) = recycle_cost(&d, per, rounds);
        report.recycle(RECYCLE_CONC, &off, &exec, &forked);
        let log = d.log();
        for key in [RECYCLE_KEY, TEMPLATE_KEY] {
            println!("{}", recycle_starts(&log, key));
        }
    }
    if let Some(only) = &o.only {
        if only.scale_up {
            scale_up_bursts(&d, report)?;
        }
        return Ok(());
    }
    manager_figures(o, &d, &fl, &cold, report)?;
    drop(d);
    drop(fl);
    drop(pfl);
    report.scale(&extras::scale(200)?);
    Ok(())
}

/// The services under test: the echo for the cells, one that cannot
/// start (fast fail), the echo recycled every 100 requests (exec'd, and
/// forked from a template), one to burst, and the cold-start keys.
fn services(n: usize, cold: &[String]) -> Vec<(String, String)> {
    let mut services = vec![
        (
            KEY.to_string(),
            echo_conf(&format!(
                "prestart-processes = true\nminimum-processes = {n}\nmaximum-processes = {n}\nmaximum-requests = 0"
            )),
        ),
        (
            FALSE_KEY.to_string(),
            "exec = \"/bin/false\"\nprestart-processes = true\nbackoff-initial = \"60s\"\nexec-failure-backoff = \"60s\"\n"
                .to_string(),
        ),
        (
            RECYCLE_KEY.to_string(),
            echo_conf(&format!(
                "prestart-processes = true\nminimum-processes = {n}\nmaximum-processes = {n}\nmaximum-requests = 100"
            )),
        ),
        (
            TEMPLATE_KEY.to_string(),
            echo_conf(&format!(
                "prestart-processes = true\nminimum-processes = {n}\nmaximum-processes = {n}\nmaximum-requests = 100\ntemplate = true"
            )),
        ),
        (
            BURST_KEY.to_string(),
            echo_conf("prestart-processes = true\nminimum-processes = 1\nmaximum-processes = 8"),
        ),
    ];
    services.extend(
        cold.iter()
            .map(|k| (k.clone(), echo_conf("minimum-processes = 1"))),
    );
    services
}

/// The latency table: each (size, concurrency) cell against the floor,
/// the ping cell, the persistent cells; then prints it.
fn latency_cells(
    o: &Opts,
    d: &Daemon,
    fl: &FloorServers,
    pfl: &FloorServers,
    per: Duration,
    rounds: u32,
    report: &mut Report,
) -> Result<(), String> {
    let cells: Vec<(usize, usize)> = match &o.only {
        Some(only) => only.cells.clone(),
        None => [1, 4]
            .into_iter()
            .flat_map(|conc| SIZES.map(|size| (size, conc)))
            .collect(),
    };
    for (size, conc) in cells {
        // The minimal client runs beside the 0 B concurrency-1 cell only:
        // it is a diagnostic, not a target.
        let (f, c, r) = ab(d, fl, size, conc, per, rounds, size == 0 && conc == 1);
        report.cell("connect", size, conc, &f, &c);
        if let Some(r) = r {
            report.raw("connect", size, conc, &r, &c);
        }
    }
    if o.only
        .as_ref()
        .is_none_or(|only| only.cells.contains(&(0, 1)))
    {
        let (f, c, pings) = ping_cell(d, fl, per, rounds)?;
        report.ping(&f, &c, &pings);
    }
    if o.only.as_ref().is_none_or(|only| only.persistent) {
        for size in [0, 1024] {
            let (f, c, r) = persistent(d, pfl, size, per, rounds);
            report.cell("persistent", size, 1, &f, &c);
            report.raw("persistent", size, 1, &r, &c);
        }
    }
    report.table();
    Ok(())
}

/// `--only scale-up`: five bursts. The first is the one that counts (later
/// ones find the instances the first started); a slow one prints what the
/// manager logged meanwhile.
fn scale_up_bursts(d: &Daemon, report: &mut Report) -> Result<(), String> {
    for _ in 0..5 {
        let seen = d.log().len();
        let took = extras::scale_up(d, BURST_KEY)?;
        if took > Duration::from_millis(150) {
            eprint!("{}", d.log().get(seen..).unwrap_or_default());
        }
        report.scale_up(took);
    }
    Ok(())
}

/// The manager's own figures: its CPU under load, fast fail, cold starts,
/// scale-up and allocations per request.
fn manager_figures(
    o: &Opts,
    d: &Daemon,
    fl: &FloorServers,
    cold: &[String],
    report: &mut Report,
) -> Result<(), String> {
    let cpu_dur = Duration::from_secs(if o.quick { 3 } else { 10 });
    let cpu = extras::manager_cpu(d, KEY, cpu_dur, 4)?;
    report.manager_cpu(&cpu, cpu_dur);
    report.fast_fail(&extras::fast_fail(
        d,
        FALSE_KEY,
        if o.quick { 200 } else { 1000 },
    )?);
    let own = extras::echo_standalone_us(9)?;
    let cold_us = extras::cold_starts(d, cold)?;
    report.cold_start(&own, &cold_us);
    report.scale_up(extras::scale_up(d, BURST_KEY)?);
    report.allocations(&alloc_per_request(d, fl));
    Ok(())
}

/// `--client-loop RUN_DIR COUNT SIZE`: only make COUNT calls of SIZE
/// bytes to the echo under RUN_DIR and exit, for profiling the client
/// (strace -c, valgrind) with benches/scripts/profile.sh.
fn client_loop_if_asked() -> Option<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let i = args.iter().position(|a| a == "--client-loop")?;
    let (Some(dir), Some(Ok(count)), Some(Ok(size))) = (
        args.get(i + 1),
        args.get(i + 2).map(|v| v.parse::<usize>()),
        args.get(i + 3).map(|v| v.parse::<usize>()),
    ) else {
        eprintln!("roundtrip: --client-loop needs RUN_DIR COUNT SIZE");
        return Some(2);
    };
    let mut c = match charon_client::Client::builder().run_dir(dir).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            return Some(2);
        }
    };
    let body = vec![0x5au8; size];
    let a0 = sys::allocations();
    for _ in 0..count {
        if let Err(e) = check(c.call(KEY, &body), size) {
            eprintln!("roundtrip: {e}");
            return Some(1);
        }
    }
    let per = (sys::allocations() - a0) as f64 / count.max(1) as f64;
    println!("{count} calls of {size} bytes, {per:.1} allocations per call");
    Some(0)
}

/// Floor then Charon, `rounds` times, each for `per`; with `raw`, also a
/// minimal hand-written Charon client against the same instances.
fn ab(
    d: &Daemon,
    fl: &FloorServers,
    size: usize,
    conc: usize,
    per: Duration,
    rounds: u32,
    raw: bool,
) -> (Sample, Sample, Option<Sample>) {
    let body = vec![0x5au8; size];
    let (mut f, mut c, mut r) = (Sample::new(), Sample::new(), Sample::new());
    let sock = d.socket(KEY);
    for _ in 0..rounds {
        f.merge(run_load(conc, per, || {
            let mut cl = FloorClient::new(fl.path(), &body);
            move || cl.call()
        }));
        c.merge(run_load(conc, per, || {
            let mut cl = d.client();
            let body = &body;
            move || check(cl.call(KEY, body), body.len())
        }));
        if raw {
            r.merge(run_load(conc, per, || {
                let mut cl = FloorClient::charon(&sock, KEY, &body, false);
                move || cl.call()
            }));
        }
    }
    (f, c, raw.then_some(r))
}

/// `charon ping -p 1` beside `Client::call` and the floor, in turns, 0 B
/// bodies: ping must cost what the library costs. Each round's ping makes
/// as many calls as `Client::call` made in its turn; returns the floor and
/// Client samples and each round's ping p50 (us).
fn ping_cell(
    d: &Daemon,
    fl: &FloorServers,
    per: Duration,
    rounds: u32,
) -> Result<(Sample, Sample, Vec<f64>), String> {
    let (mut f, mut c, mut pings) = (Sample::new(), Sample::new(), Vec::new());
    for _ in 0..rounds {
        f.merge(run_load(1, per, || {
            let mut cl = FloorClient::new(fl.path(), &[]);
            move || cl.call()
        }));
        let turn = run_load(1, per, || {
            let mut cl = d.client();
            move || check(cl.call(KEY, &[]), 0)
        });
        let count = turn.requests.clamp(1_000, 500_000);
        c.merge(turn);
        pings.push(extras::ping_p50_us(d, KEY, count)?);
    }
    Ok((f, c, pings))
}

/// The same echo load with recycling off, at `maximum-requests = 100`
/// with each instance exec'd, and the same with instances forked from a
/// template, A B C A B C: what recycling costs in throughput.
fn recycle_cost(d: &Daemon, per: Duration, rounds: u32) -> (Sample, Sample, Sample) {
    let (mut off, mut exec, mut forked) = (Sample::new(), Sample::new(), Sample::new());
    for _ in 0..rounds {
        for (key, s) in [
            (KEY, &mut off),
            (RECYCLE_KEY, &mut exec),
            (TEMPLATE_KEY, &mut forked),
        ] {
            s.merge(run_load(RECYCLE_CONC, per, || {
                let mut cl = d.client();
                move || check(cl.call(key, b""), 0)
            }));
        }
    }
    (off, exec, forked)
}

/// How a recycling service's instances were started, from charond's log
/// (a template that was not ready, or gave up, leaves them to exec), and
/// what it warned about.
fn recycle_starts(log: &str, key: &str) -> String {
    let starts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(key) && l.contains(": started (slot"))
        .collect();
    let forked = starts
        .iter()
        .filter(|l| l.contains("forked by the template"))
        .count();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("warn {key}")))
        .collect();
    format!(
        "{key}: {} instance starts, {forked} forked by a template; {} warnings{}",
        starts.len(),
        warnings.len(),
        warnings
            .first()
            .map(|w| format!(", the first: {w}"))
            .unwrap_or_default()
    )
}

/// A keep-affinity conversation against a persistent floor ping-pong, and
/// the minimal Charon client keeping its connection the same way.
fn persistent(
    d: &Daemon,
    pfl: &FloorServers,
    size: usize,
    per: Duration,
    rounds: u32,
) -> (Sample, Sample, Sample) {
    let body = vec![0x5au8; size];
    let (mut f, mut c, mut r) = (Sample::new(), Sample::new(), Sample::new());
    let sock = d.socket(KEY);
    for _ in 0..rounds {
        f.merge(run_load(1, per, || {
            let mut cl = FloorClient::new(pfl.path(), &body);
            move || cl.call_persistent()
        }));
        c.merge(run_load(1, per, || {
            let mut cl = d.client();
            let req = Request::new(KEY, body.clone()).keep_affinity();
            move || {
                let r = check(cl.call_request(&req), size);
                if r.is_ok() && !cl.has_affinity(KEY) {
                    return Err("keep-affinity kept no connection".to_string());
                }
                r
            }
        }));
        r.merge(run_load(1, per, || {
            let mut cl = FloorClient::charon(&sock, KEY, &body, true);
            move || cl.call_persistent()
        }));
    }
    (f, c, r)
}

fn check(r: Result<Vec<u8>, charon_client::Error>, len: usize) -> Result<(), String> {
    match r {
        Ok(b) if b.len() == len => Ok(()),
        Ok(b) => Err(format!("echo answered {} bytes for {len}", b.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Heap allocations per request in this (client) process, one thread.
fn alloc_per_request(d: &Daemon, fl: &FloorServers) -> Vec<(String, usize, f64)> {
    let mut out = Vec::new();
    for size in [0, 1024] {
        let body = vec![0x5au8; size];
        let mut c = d.client();
        let _ = c.call(KEY, &body);
        let n = 1000;
        let a0 = sys::allocations();
        for _ in 0..n {
            let _ = c.call(KEY, &body);
        }
        out.push((
            "charon".to_string(),
            size,
            (sys::allocations() - a0) as f64 / n as f64,
        ));
        let mut f = FloorClient::new(fl.path(), &body);
        let _ = f.call();
        let a0 = sys::allocations();
        for _ in 0..n {
            let _ = f.call();
        }
        out.push((
            "floor".to_string(),
            size,
            (sys::allocations() - a0) as f64 / n as f64,
        ));
    }
    out
}

/// Processes this bench started that still exist: children of this
/// process, and anything holding a bench charond's run dir.
fn leftovers() -> Vec<i32> {
    let me = std::process::id().to_string();
    daemon::reap::processes()
        .filter(|(_, dir)| {
            let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
                return false;
            };
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
            let ppid = rest.split_whitespace().nth(1).unwrap_or_default();
            let env = std::fs::read(dir.join("environ")).unwrap_or_default();
            let ours = env.split(|&b| b == 0).any(|v| {
                v.starts_with(b"CHARON_RUN_DIR=/tmp/chb")
                    || v.starts_with(floor::SERVE_ENV.as_bytes())
            });
            ppid == me || (ours && env_is_from_this_run(&env))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Floor servers carry our pid nowhere, so only children count for them;
/// a charond instance whose run dir no longer exists was ours and leaked.
fn env_is_from_this_run(env: &[u8]) -> bool {
    env.split(|&b| b == 0)
        .filter_map(|v| v.strip_prefix(b"CHARON_RUN_DIR=".as_slice()))
        .any(|dir| !std::path::Path::new(&*String::from_utf8_lossy(dir)).exists())
}
