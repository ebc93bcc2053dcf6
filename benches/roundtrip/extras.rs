//! The targets that are not a floor ratio: the manager's CPU share under
//! load, fast fail, cold start, scale-up, and 200 services (start-up,
//! reload, RSS); and `charon ping`'s own p50, to set beside the floor's. Each returns plain figures; judging and printing them is
//! left to the main file.

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use charon_client::{Client, ErrorKind, Request};
use charon_protocol::{encode_request, Attributes, Limits, RequestHead};
use nix::sys::signal::Signal;

use crate::daemon::{echo_conf, Daemon};
use crate::measure::{run_load, run_serial, Sample};

/// utime + stime of a process, in clock ticks.
pub fn process_ticks(pid: i32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which may hold spaces and parens.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    match (get(14), get(15)) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => Err(format!("unexpected /proc/{pid}/stat: {stat}")),
    }
}

/// CPU ticks used by the whole machine (every state but idle and iowait).
pub fn machine_busy_ticks() -> Result<u64, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return Err(format!("unexpected /proc/stat line: {line}"));
    }
    // user nice system idle iowait irq softirq steal (guest is in user).
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// The manager's share of all CPU used during a saturating 0-byte run.
pub struct ManagerCpu {
    pub manager_ticks: u64,
    pub all_ticks: u64,
    pub requests: u64,
}

pub fn manager_cpu(
    d: &Daemon,
    key: &str,
    dur: Duration,
    conc: usize,
) -> Result<ManagerCpu, String> {
    let m0 = process_ticks(d.pid())?;
    let a0 = machine_busy_ticks()?;
    let s = run_load(conc, dur, || {
        let mut c = d.client();
        move || c.call(key, b"").map(|_| ()).map_err(|e| e.to_string())
    });
    let m1 = process_ticks(d.pid())?;
    let a1 = machine_busy_ticks()?;
    Ok(ManagerCpu {
        manager_ticks: m1 - m0,
        all_ticks: a1.saturating_sub(a0),
        requests: s.requests,
    })
}

/// Latencies of `Unavailable` answers from a service in backoff.
pub fn fast_fail(d: &Daemon, key: &str, n: usize) -> Result<Sample, String> {
    d.wait_log(Duration::from_secs(30), |l| {
        l.contains("backoff: no launch")
    })?;
    let mut c = d.client();
    Ok(run_serial(n, || match c.call(key, b"x") {
        Err(e) if matches!(e.kind(), ErrorKind::Unavailable { .. }) => Ok(()),
        Err(e) => Err(format!("expected unavailable, got {e}")),
        Ok(_) => Err("expected unavailable, got an answer".to_string()),
    }))
}

/// `charon ping -p 1 -s 0 -c COUNT` against the echo: the p50 it reports
/// (its own clock around each call), in microseconds.
pub fn ping_p50_us(d: &Daemon, key: &str, count: u64) -> Result<f64, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_charon"))
        .args([
            "ping",
            "--json",
            "-p",
            "1",
            "-s",
            "0",
            "-c",
            &count.to_string(),
        ])
        .arg("--run-dir")
        .arg(&d.run)
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("charon ping: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "charon ping: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("charon ping --json: {e}"))?;
    v["p50_us"]
        .as_f64()
        .ok_or_else(|| format!("charon ping --json has no p50_us: {v}"))
}

/// The echo program's own start-up: spawn it standalone on one request
/// (fd 3 in, fd 4 out) and wait for it to exit: fork, exec, the library's
/// start, one answer. Returns microseconds per run.
pub fn echo_standalone_us(runs: usize) -> Result<Vec<f64>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let req_path = dir.path().join("req");
    let resp_path = dir.path().join("resp");
    let mut frame = Vec::new();
    let head = RequestHead {
        key: "system.echo.0.raw",
        client: "bench",
        attempt: 1,
        attributes: Attributes::NONE,
    };
    encode_request(
        &head,
        &[] as &[(&str, &[u8])],
        b"cold",
        &Limits::default(),
        &mut frame,
    )
    .map_err(|e| format!("encode: {e}"))?;
    std::fs::write(&req_path, &frame).map_err(|e| format!("write request: {e}"))?;
    let mut out = Vec::new();
    for _ in 0..runs {
        let input = std::fs::File::open(&req_path).map_err(|e| format!("open request: {e}"))?;
        let output =
            std::fs::File::create(&resp_path).map_err(|e| format!("create response: {e}"))?;
        let fds = [input.as_raw_fd(), output.as_raw_fd()];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_charon-echo"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .env_remove("CHARON_ACCEPT_SOCKET");
        crate::fds::pass_fds(&mut cmd, fds.to_vec());
        let t0 = Instant::now();
        let st = cmd.status().map_err(|e| format!("run charon-echo: {e}"))?;
        out.push(t0.elapsed().as_secs_f64() * 1e6);
        if !st.success() {
            return Err(format!("standalone charon-echo failed: {st}"));
        }
        let resp = std::fs::read(&resp_path).map_err(|e| format!("read response: {e}"))?;
        if !resp.ends_with(b"cold") {
            return Err("standalone echo did not answer its request".to_string());
        }
    }
    Ok(out)
}

/// First request to each never-started on-demand service, microseconds.
pub fn cold_starts(d: &Daemon, keys: &[String]) -> Result<Vec<f64>, String> {
    let mut c = d.client();
    keys.iter()
        .map(|k| {
            let t0 = Instant::now();
            let body = c.call(k, b"cold").map_err(|e| format!("cold {k}: {e}"))?;
            let us = t0.elapsed().as_secs_f64() * 1e6;
            if body != b"cold" {
                return Err(format!("cold {k}: wrong answer"));
            }
            Ok(us)
        })
        .collect()
}

/// A burst of 8 parallel 100 ms requests against one running instance.
pub fn scale_up(d: &Daemon, key: &str) -> Result<Duration, String> {
    let mut c: Client = d.client();
    c.call(key, b"warm")
        .map_err(|e| format!("warm {key}: {e}"))?;
    let t0 = Instant::now();
    let mut batch = c.batch();
    let ids = (0..8u8)
        .map(|i| batch.add(Request::new(key, vec![i]).context("echo.sleep-ms", "100")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("batch add: {e}"))?;
    batch.wait_all();
    let took = t0.elapsed();
    for (i, id) in ids.into_iter().enumerate() {
        match batch.take(id) {
            Some(Ok(b)) if b == [i as u8] => {}
            other => return Err(format!("burst request {i}: {other:?}")),
        }
    }
    Ok(took)
}

/// 200 services, one prestarted instance each.
pub struct Scale {
    pub services: usize,
    pub ready: Duration,
    pub rss_kib: u64,
    pub reload: Result<Duration, String>,
}

pub fn scale(services: usize) -> Result<Scale, String> {
    let keys: Vec<String> = (0..services).map(|i| format!("bench.s{i}.0.raw")).collect();
    let confs: Vec<(String, String)> = keys
        .iter()
        .map(|k| {
            (
                k.clone(),
                echo_conf(
                    "prestart-processes = true\nminimum-processes = 1\nmaximum-processes = 2",
                ),
            )
        })
        .collect();
    let d = Daemon::start(&confs)?;
    let mut c = d.client();
    for k in &keys {
        c.call(k, b"up").map_err(|e| format!("{k}: {e}"))?;
    }
    let ready = d.started.elapsed();
    let rss_kib = rss_kib(d.pid())?;
    let reload = reload(&d, &mut c, &keys);
    Ok(Scale {
        services,
        ready,
        rss_kib,
        reload,
    })
}

fn reload(d: &Daemon, c: &mut Client, keys: &[String]) -> Result<Duration, String> {
    // A full reload: every file changed, so every service gets a new
    // generation. Finished when the log says so and every service answers.
    for k in keys {
        let p = d.conf.join(format!("{k}.toml"));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(|e| format!("open {}: {e}", p.display()))?;
        writeln!(f, "idle-timeout = \"121s\"").map_err(|e| format!("append: {e}"))?;
    }
    let before = d.log().len();
    let t0 = Instant::now();
    d.signal(Signal::SIGHUP);
    d.wait_log(Duration::from_secs(30), |l| {
        l.len() > before && l[before..].contains("reload")
    })?;
    let tail = d.log()[before..].to_string();
    if tail.contains("not implemented") {
        return Err("not implemented (charond logs: reload is not implemented yet)".to_string());
    }
    for k in keys {
        c.call(k, b"again")
            .map_err(|e| format!("{k} after reload: {e}"))?;
    }
    Ok(t0.elapsed())
}

pub fn rss_kib(pid: i32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}
