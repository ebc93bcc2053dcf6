//! Nothing lost at the edges of charond's life: requests already written
//! (in hand, or connected and queued on the socket) across a stop, the
//! manager's death, a reload and `charon restart`. RELIABILITY.md maps each
//! failure mode to its test here.

use std::path::Path;
use std::time::{Duration, Instant};

use charon_client::Request;
use nix::sys::signal::Signal;

use crate::util::daemon::{instances_of, Daemon, PATIENCE};
use crate::util::load::client_at;
use crate::util::{bin, wait_for, TestDir};

const KEY: &str = "system.echo.0.raw";
/// How long the 2 requests in hand take: the 6 others queue meanwhile.
const IN_HAND_MS: &str = "3000";
/// Requests in hand far longer than a 1 s stop-grace, so a stop bounded by
/// the grace and one that waits for them are seconds apart even on a busy
/// machine.
const LONGER_THAN_GRACE_MS: &str = "20000";
/// How long each queued request takes once accepted.
const QUEUED_MS: &str = "200";

/// A pool of exactly 2 instances. The knobs are what the test is about:
/// with 2 busy and no room to grow, 6 more requests must wait in the
/// socket's queue (everything else is the default).
fn pool_of_2() -> String {
    format!(
        "exec = \"{}\"\nprestart-processes = true\nminimum-processes = 2\nmaximum-processes = 2\n",
        bin("charon-echo").display()
    )
}

/// An instance sleeping in `echo.sleep-ms`.
fn sleeping(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("nanosleep"))
}

type Call = std::thread::JoinHandle<(u8, Result<Vec<u8>, charon_client::Error>, Duration)>;

fn call(run: &Path, i: u8, sleep_ms: &'static str) -> Call {
    let run = run.to_path_buf();
    std::thread::spawn(move || {
        let mut c = client_at(&run, Duration::from_secs(30));
        // Each request logs a line, as services do: after the manager's
        // death nobody reads the stderr pipe any more.
        let req = Request::new(KEY, vec![i])
            .context("echo.sleep-ms", sleep_ms)
            .context("echo.log", format!("request {i}"));
        let t0 = Instant::now();
        let res = c.call_request(&req);
        (i, res, t0.elapsed())
    })
}

/// Puts 2 requests in the hands of the pool's 2 instances and 6 more in the
/// socket's queue, runs `event`, and checks that all 8 are answered with
/// their own bodies. Returns how long after `event` the last answer came.
fn eight_across(d: &Daemon, what: &str, event: impl FnOnce(&Daemon)) -> Duration {
    wait_for(PATIENCE, "2 instances", || d.instances().len() == 2);
    let pool = d.instances();
    let mut calls: Vec<Call> = (0..2).map(|i| call(&d.run, i, IN_HAND_MS)).collect();
    wait_for(PATIENCE, "2 requests in hand", || {
        pool.iter().filter(|&&p| sleeping(p)).count() == 2
    });
    calls.extend((2..8).map(|i| call(&d.run, i, QUEUED_MS)));
    wait_for(PATIENCE, "6 connections queued", || {
        d.stats(KEY)["queue_depth"] == 6
    });
    assert_eq!(
        pool.iter().filter(|&&p| sleeping(p)).count(),
        2,
        "the 2 requests are still in hand when {what} comes"
    );
    let t0 = Instant::now();
    event(d);
    let mut failed = Vec::new();
    for c in calls {
        let (i, res, _) = c.join().expect("client thread");
        match res {
            Ok(body) if body == [i] => {}
            other => failed.push((i, other)),
        }
    }
    let took = t0.elapsed();
    assert!(failed.is_empty(), "across {what}, lost: {failed:?}");
    println!("across {what}: 8 of 8 answered, the last {took:?} after it");
    took
}

#[test]
fn a_stop_serves_the_requests_in_hand_and_the_queue_then_exits_0() {
    let mut d = Daemon::start(&[(KEY, &pool_of_2())]);
    let sock = d.run.join(format!("{KEY}.sock"));
    eight_across(&d, "SIGTERM", |d| {
        d.signal(Signal::SIGTERM);
        // The name goes at once: new clients get NotFound.
        wait_for(PATIENCE, "the socket to be unlinked", || !sock.exists());
        let e = client_at(&d.run, Duration::from_secs(30))
            .call(KEY, b"late")
            .expect_err("no socket");
        assert!(
            matches!(e.kind(), charon_client::ErrorKind::NotFound { .. }),
            "{e}"
        );
    });
    let status = d.proc.as_mut().expect("charond").wait_timeout(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(d.instances().is_empty());
}

#[test]
fn charon_restart_serves_the_requests_in_hand_and_the_queue() {
    let d = Daemon::start(&[(KEY, &pool_of_2())]);
    eight_across(&d, "charon restart", |d| {
        let (code, _, err) = d.charon(&["restart", KEY]);
        assert_eq!(code, 0, "{err}");
    });
    assert_eq!(
        client_at(&d.run, Duration::from_secs(30))
            .call(KEY, b"after")
            .expect("served"),
        b"after"
    );
}

#[test]
fn a_reload_serves_the_old_generations_requests_in_hand_and_queue() {
    let d = Daemon::start(&[(KEY, &pool_of_2())]);
    eight_across(&d, "a reload that changes the config", |d| {
        // Any change makes a new generation; stop-grace 11 s (default 10 s)
        // is one that leaves the old generation's drain as it is.
        d.write_conf(KEY, &format!("{}stop-grace = \"11s\"\n", pool_of_2()));
        let (code, _, err) = d.charon(&["reload"]);
        assert_eq!(code, 0, "{err}");
    });
}

#[test]
fn a_killed_manager_serves_the_requests_in_hand_and_the_queue_and_leaves_no_orphan() {
    let mut d = Daemon::start(&[(KEY, &pool_of_2())]);
    eight_across(&d, "SIGKILL of charond", |d| d.signal(Signal::SIGKILL));
    d.proc.as_mut().expect("charond").wait_timeout(PATIENCE);
    let t0 = Instant::now();
    wait_for(PATIENCE, "the orphans to exit", || {
        instances_of(&d.run).is_empty()
    });
    println!("orphans gone {:?} after the last answer", t0.elapsed());
    // A new manager serves at once on the same run dir.
    let dir = std::mem::replace(&mut d.dir, TestDir::new());
    let (conf, run) = (d.conf.clone(), d.run.clone());
    drop(d);
    let d = Daemon::start_in(dir, conf, run);
    assert_eq!(
        client_at(&d.run, Duration::from_secs(30))
            .call(KEY, b"again")
            .expect("served"),
        b"again"
    );
}

// ------------------------------------------- the manager's own failures

/// charond's open fds, from `charon stats --json`.
fn manager_fds(d: &Daemon) -> (u64, u64) {
    let (code, out, err) = d.charon(&["stats", "--json"]);
    assert_eq!(code, 0, "charon stats: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let m = &v["manager"];
    (
        m["fds_open"].as_u64().expect("fds_open"),
        m["fds_limit"].as_u64().expect("fds_limit"),
    )
}

#[test]
fn out_of_fds_is_the_managers_problem_not_the_services() {
    // Ten on-demand services on the defaults.
    let keys: Vec<String> = (0..10).map(|i| format!("fd.s{i}.0.raw")).collect();
    let echo = format!("exec = \"{}\"\n", bin("charon-echo").display());
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    for k in &keys {
        dir.write(&format!("conf/{k}.toml"), &echo);
    }
    let run = dir.join("run");
    // How many fds charond needs with its ten sockets and no instance.
    let probe = Daemon::start_in(TestDir::new(), conf.clone(), dir.join("probe"));
    let (base, _) = manager_fds(&probe);
    drop(probe);
    // Room for about three instances (two fds each, four while starting)
    // and the control connection: charond raises its soft limit to the
    // hard one, so the hard limit is what binds.
    let limit = base + 9;
    let nofile = format!("--nofile={limit}:{limit}");
    let d = Daemon::start_under(dir, conf, run, &[], &["prlimit", &nofile, "--"]);
    let (served, starved, slowest_refusal) = served_or_refused_for_fds(&d, &keys);
    println!(
        "fd limit {limit} (charond needs {base} with no instance): {} served, {} refused as the manager's problem, slowest refusal {slowest_refusal:?}",
        served.len(),
        starved.len()
    );
    assert!(
        !served.is_empty() && !starved.is_empty(),
        "{served:?} {starved:?}"
    );
    // Those with instances keep serving, again and again.
    for _ in 0..3 {
        for k in &served {
            assert_eq!(client_of_key(&d, k), Ok(b"again".to_vec()), "{k}");
        }
    }
    nobody_was_charged(&d, limit);
    d.wait_log("the manager's problem logged", |l| {
        l.contains("the manager's problem, not the service's")
    });
}

/// Calls each of `keys` once: each is served or refused as Unavailable for
/// the manager's file descriptors, nothing else. Returns the served keys,
/// the refused ones and the slowest refusal.
fn served_or_refused_for_fds(d: &Daemon, keys: &[String]) -> (Vec<String>, Vec<String>, Duration) {
    let (mut served, mut starved) = (Vec::new(), Vec::new());
    let mut slowest_refusal = Duration::ZERO;
    for k in keys {
        let mut c = client_at(&d.run, Duration::from_secs(10));
        let t0 = Instant::now();
        match c.call(k, b"hi") {
            Ok(b) => {
                assert_eq!(b, b"hi");
                served.push(k.clone());
            }
            Err(e) => match e.kind() {
                charon_client::ErrorKind::Unavailable { reason, .. }
                    if reason.contains("file descriptors") =>
                {
                    slowest_refusal = slowest_refusal.max(t0.elapsed());
                    starved.push(k.clone());
                }
                _ => panic!(
                    "{k}: neither served nor refused for the manager's fds: {e}\n{}",
                    d.log()
                ),
            },
        }
    }
    (served, starved, slowest_refusal)
}

/// Nobody was charged for the manager's fds: no backoff, no launch failure.
fn nobody_was_charged(d: &Daemon, limit: u64) {
    let (code, out, _) = d.charon(&["stats", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["manager"]["fds_limit"], limit);
    for s in v["services"].as_array().expect("services") {
        assert_ne!(s["state"], "backoff", "{s}");
        assert_eq!(s["backoffs"], 0, "{s}");
        assert_eq!(s["exits"]["launch_failed"], 0, "{s}");
    }
}

fn client_of_key(d: &Daemon, key: &str) -> Result<Vec<u8>, String> {
    client_at(&d.run, Duration::from_secs(30))
        .call(key, b"again")
        .map_err(|e| e.to_string())
}

// ----------------------------------------------- what instances leave behind

/// A shell service that leaves a `setsid sleep 300` behind (its own
/// session, out of the instance's process group), then execs charon-echo.
fn leaves_a_sleeper(dir: &TestDir) -> String {
    let script = dir.write(
        "leaver.sh",
        format!(
            "#!/bin/sh\nsetsid sleep 300 &\nexec {}\n",
            bin("charon-echo").display()
        ),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    format!(
        "exec = \"{}\"\nprestart-processes = true\n",
        script.display()
    )
}

/// The `sleep 300`s left by instances of this run dir (alive, not zombies).
fn sleepers(run: &Path) -> Vec<i32> {
    instances_of(run)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x00300\x00")
        })
        .collect()
}

/// True once `pid` is reaped, not just dead.
fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_setsid_grandchild_is_stopped_after_its_instance_is_recycled_and_at_stop() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), leaves_a_sleeper(&dir));
    let run = dir.join("run");
    let mut d = Daemon::start_in(dir, conf, run);
    let mut first = Vec::new();
    wait_for(PATIENCE, "the first instance's sleeper", || {
        first = sleepers(&d.run);
        first.len() == 1
    });
    let (code, _, err) = d.charon(&["restart", KEY]);
    assert_eq!(code, 0, "{err}");
    let t0 = Instant::now();
    wait_for(
        PATIENCE,
        "the recycled instance's sleeper to be reaped",
        || gone(first[0]),
    );
    println!(
        "left behind by a recycled instance: reaped {:?} after the restart",
        t0.elapsed()
    );
    let mut second = Vec::new();
    wait_for(PATIENCE, "the replacement's sleeper", || {
        second = sleepers(&d.run);
        second.len() == 1
    });
    d.wait_log("the stop of what was left behind logged", |l| {
        l.contains("an instance left this process behind: stopping it")
    });
    // SIGINT stops as SIGTERM does.
    d.signal(Signal::SIGINT);
    let status = d.proc.as_mut().expect("charond").wait_timeout(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(gone(second[0]), "nothing outlives charond's stop");
    assert!(instances_of(&d.run).is_empty());
}

/// charond's pid (outside the namespace) under `unshare --fork`: the one
/// child of the unshare process.
fn child_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The pid namespace's own pid of `pid` (the last `NSpid` field).
fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[test]
fn as_pid_1_of_a_pid_namespace_charond_reaps_every_orphan_and_stops_everything() {
    let unshare = ["unshare", "--pid", "--fork", "--mount-proc"];
    if !unshare_is_allowed(&unshare) {
        return;
    }
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), leaves_a_sleeper(&dir));
    let run = dir.join("run");
    let mut d = Daemon::start_under(dir, conf, run, &[], &unshare);
    let charond = child_of(d.pid()).expect("charond under unshare");
    assert_eq!(
        ns_pid(charond),
        Some(1),
        "charond is PID 1 of its namespace"
    );
    let stray = orphan_entered_into_the_namespace(charond);
    let mut first = Vec::new();
    wait_for(PATIENCE, "the instance's sleeper", || {
        first = sleepers(&d.run);
        first.len() == 1
    });
    let (code, _, err) = d.charon(&["restart", KEY]);
    assert_eq!(code, 0, "{err}");
    wait_for(PATIENCE, "the recycled instance's sleeper reaped", || {
        gone(first[0])
    });
    wait_for(
        PATIENCE,
        "the stray orphan reaped by PID 1 (no zombie)",
        || gone(stray),
    );
    d.signal_pid(charond, Signal::SIGTERM);
    let status = d.proc.as_mut().expect("unshare").wait_timeout(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(gone(charond));
    assert!(
        instances_of(&d.run).is_empty(),
        "SIGTERM stopped everything"
    );
    println!("as PID 1: the instance's and a stray orphan reaped, exit 0 after SIGTERM");
}

/// Whether `unshare` may make a pid namespace here (it needs root); says
/// the test is skipped if not.
fn unshare_is_allowed(unshare: &[&str]) -> bool {
    let probe = std::process::Command::new(unshare[0])
        .args(&unshare[1..])
        .arg("true")
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        println!(
            "skipped: unshare --pid --fork --mount-proc is refused here (needs root): {probe:?}"
        );
        return false;
    }
    true
}

/// An orphan that is nobody's instance: a process entered into the
/// namespace of `charond` whose parent exits at once is re-parented to
/// PID 1. Returns its pid once it is charond's child.
fn orphan_entered_into_the_namespace(charond: i32) -> i32 {
    // Not through the harness's `run`, which kills the command's process
    // group when it returns: the orphan may not have left it yet.
    // No pipes either: the orphan would hold them open.
    let st = std::process::Command::new("nsenter")
        .args(["-t", &charond.to_string(), "-p", "-m", "sh", "-c"])
        .arg("setsid sleep 1.5 & exit 0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("nsenter");
    assert!(st.success(), "nsenter: {st}");
    // Polled: it may not have exec'd sleep yet when nsenter returns.
    let mut stray = None;
    wait_for(PATIENCE, "the stray orphan to be charond's child", || {
        stray = std::fs::read_to_string(format!("/proc/{charond}/task/{charond}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x001.5\x00")
            });
        stray.is_some()
    });
    stray.expect("found above")
}

// ------------------------------------------------------ stderr, unread

#[test]
fn a_stopped_manager_does_not_stall_instances_that_log() {
    let d = Daemon::start(&[(
        KEY,
        &format!("exec = \"{}\"\n", bin("charon-echo").display()),
    )]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops = two_logging_loops(&d.run, &stop);
    std::thread::sleep(Duration::from_millis(500));
    d.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    d.signal(Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut n, mut slowest, mut failed) = (0, Duration::ZERO, Vec::new());
    for l in loops {
        let (a, b, c) = l.join().expect("client loop");
        n += a;
        slowest = slowest.max(b);
        failed.extend(c);
    }
    println!("charond stopped 3 s under 2 KB of stderr per request: {n} requests, slowest {slowest:?}, {} failed", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    // A blocked instance would have waited for the SIGCONT: about 2.5 s.
    assert!(slowest < Duration::from_secs(2), "slowest {slowest:?}");
    // charond read it all afterwards and answers.
    assert_eq!(
        client_at(&d.run, Duration::from_secs(30))
            .call(KEY, b"after")
            .expect("served"),
        b"after"
    );
}

/// What a client loop did: requests answered, the slowest call, and the
/// errors.
type LoopTally = (u32, Duration, Vec<String>);

/// 2 client loops until `stop`, each request asking the instance to log
/// 2 KB of stderr.
fn two_logging_loops(
    run: &Path,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<LoopTally>> {
    let line = "x".repeat(2000);
    (0..2)
        .map(|i| {
            let (run, line, stop) = (run.to_path_buf(), line.clone(), std::sync::Arc::clone(stop));
            std::thread::spawn(move || {
                let mut c = client_at(&run, charon_client::DEFAULT_TIMEOUT);
                let req = Request::new(KEY, vec![i]).context("echo.log", line.as_str());
                let (mut n, mut slowest, mut failed) = (0u32, Duration::ZERO, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match c.call_request(&req) {
                        Ok(_) => n += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                    slowest = slowest.max(t0.elapsed());
                    // The load: about 50 requests a second per loop, 200 KB
                    // of stderr a second in all.
                    std::thread::sleep(Duration::from_millis(20));
                }
                (n, slowest, failed)
            })
        })
        .collect()
}

// ------------------------------------------------------ the control socket

/// Resident set size in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// When a control connection was opened and when charond closed it.
type Span = (Instant, Instant);

#[test]
fn idle_and_pipelining_control_connections_cannot_lock_operators_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let d = Daemon::start(&[(
        KEY,
        &format!("exec = \"{}\"\n", bin("charon-echo").display()),
    )]);
    let ctl = d.run.join("charond.sock");
    let rss_before = rss_kib(d.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = pipelining_writers(&ctl, &stop);
    let idle = idle_readers(&ctl);
    let (took, refused_at, rss_peak) = operator_waits_for_stats(&d, rss_before);
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut closes) = (0, Vec::new());
    for w in writers {
        let (n, closed) = w.join().expect("writer");
        sent += n;
        closes.extend(closed);
    }
    let mut idle_told = Vec::new();
    for i in idle {
        let (closed, told) = i.join().expect("idle reader");
        if told.contains("idle for") {
            closes.push(closed);
            idle_told.push(told);
        }
    }
    println!(
        "control socket: 64 idle + 31 pipelining ({} KiB of requests written): `charon stats` answered after {took:?} ({} refusals); charond RSS {rss_before} KiB -> peak {rss_peak} KiB",
        sent / 1024,
        refused_at.len()
    );
    let_in_by_the_idle_rule(&idle_told, &closes, &refused_at);
    assert!(
        rss_peak < rss_before + 16 * 1024,
        "RSS {rss_before} KiB -> {rss_peak} KiB"
    );
}

/// 31 connections that pipeline stats and ps and never read an answer;
/// each returns what it wrote and when charond closed it (its next write
/// fails), if it did before `stop`.
fn pipelining_writers(
    ctl: &Path,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<(usize, Option<Span>)>> {
    use std::io::Write;
    (0..31)
        .map(|_| {
            let s = std::os::unix::net::UnixStream::connect(ctl).expect("connect");
            let connected = Instant::now();
            s.set_nonblocking(true).expect("nonblocking");
            let stop = std::sync::Arc::clone(stop);
            std::thread::spawn(move || {
                let burst = b"{\"cmd\":\"stats\"}\n{\"cmd\":\"ps\"}\n".repeat(64);
                let mut sent = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match (&s).write(&burst) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => return (sent, Some((connected, Instant::now()))),
                    }
                }
                (sent, None)
            })
        })
        .collect()
}

/// 64 connections that connect and say nothing: charond keeps one (its
/// 32nd) and refuses the rest at once. Each returns when it was closed and
/// what it was told.
fn idle_readers(ctl: &Path) -> Vec<std::thread::JoinHandle<(Span, String)>> {
    use std::io::Read;
    (0..64)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(ctl).expect("connect");
            let connected = Instant::now();
            s.set_read_timeout(Some(PATIENCE)).expect("timeout");
            std::thread::spawn(move || {
                let mut told = String::new();
                let _ = s.read_to_string(&mut told);
                ((connected, Instant::now()), told)
            })
        })
        .collect()
}

/// An operator tries `charon stats` until it answers: refused meanwhile
/// with charond's own message. Returns how long it took, when each refused
/// try began, and charond's peak RSS meanwhile.
fn operator_waits_for_stats(d: &Daemon, rss_before: u64) -> (Duration, Vec<Instant>, u64) {
    let t0 = Instant::now();
    let mut refused_at = Vec::new();
    let mut rss_peak = rss_before;
    loop {
        rss_peak = rss_peak.max(rss_kib(d.pid()));
        let tried = Instant::now();
        let (code, _, err) = d.charon(&["stats"]);
        if code == 0 {
            break;
        }
        assert!(
            err.contains("too many control connections"),
            "the refusal is charond's, not a broken pipe: {err}"
        );
        refused_at.push(tried);
        assert!(
            t0.elapsed() < PATIENCE,
            "still locked out after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = t0.elapsed();
    rss_peak = rss_peak.max(rss_kib(d.pid()));
    (took, refused_at, rss_peak)
}

/// What let the operator in is the idle rule (doc/control-protocol.md):
/// the idle connection charond kept was told so, and once the first stuck
/// connection was closed, the operator's next try was answered. (Not a
/// wall-clock bound: under load, spawning `charon` alone takes seconds.)
fn let_in_by_the_idle_rule(idle_told: &[String], closes: &[Span], refused_at: &[Instant]) {
    assert!(
        !idle_told.is_empty() && idle_told.iter().all(|t| t.contains("idle for 10s")),
        "the idle timeout: {idle_told:?}"
    );
    // Closed by the idle rule, not refused when it connected (charond may
    // still have held its own probe connection then): at least the idle
    // timeout after the connect.
    let first_close = closes
        .iter()
        .filter(|(connected, closed)| *closed - *connected >= Duration::from_millis(9500))
        .map(|(_, closed)| closed)
        .min()
        .expect("a stuck connection closed by the idle rule");
    assert!(
        refused_at.iter().all(|t| t < first_close),
        "refused after a stuck connection was closed"
    );
}

#[test]
fn stop_grace_still_bounds_a_stop_and_the_exit_status_says_so() {
    // The knob is the subject: a 1 s stop-grace against 20 s requests in
    // hand.
    let mut d = Daemon::start(&[(KEY, &format!("{}stop-grace = \"1s\"\n", pool_of_2()))]);
    wait_for(PATIENCE, "2 instances", || d.instances().len() == 2);
    let pool = d.instances();
    let calls: Vec<Call> = (0..2)
        .map(|i| call(&d.run, i, LONGER_THAN_GRACE_MS))
        .collect();
    wait_for(PATIENCE, "2 requests in hand", || {
        pool.iter().filter(|&&p| sleeping(p)).count() == 2
    });
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.proc.as_mut().expect("charond").wait_timeout(PATIENCE);
    let took = t0.elapsed();
    // 3: something had to be SIGKILLed (doc/charond.md, exit codes).
    assert_eq!(status.code(), Some(3), "{}", d.log());
    // Bounded by stop-grace, not by the requests: a stop that ignored the
    // grace would wait for the requests in hand, 20 s less the moments
    // they had already run. 10 s is 9 s of margin over the 1 s grace for a
    // busy machine and still half the time the requests would take.
    assert!(
        took < Duration::from_secs(10),
        "bounded by stop-grace: {took:?}"
    );
    for c in calls {
        let (_, res, _) = c.join().expect("client thread");
        assert!(
            res.is_err(),
            "killed mid-request: a typed error, not an answer"
        );
    }
    assert!(d.instances().is_empty());
    println!("stop-grace 1 s against 20 s requests: charond exited 3 after {took:?}");
}

#[test]
fn a_dead_managers_instances_stop_draining_after_stop_grace_under_constant_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // The knob is the subject: the drain after the manager's death is
    // bounded by stop-grace (2 s here), even while clients keep coming.
    let mut d = Daemon::start(&[(KEY, &format!("{}stop-grace = \"2s\"\n", pool_of_2()))]);
    wait_for(PATIENCE, "2 instances", || d.instances().len() == 2);
    let stop = Arc::new(AtomicBool::new(false));
    // 4 loops of 100 ms requests against 2 instances: the queue is never
    // empty, so without a bound the drain would never end.
    let loops: Vec<_> = (0..4u8)
        .map(|i| {
            let (run, stop) = (d.run.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut c = client_at(&run, Duration::from_secs(30));
                let req = Request::new(KEY, vec![i]).context("echo.sleep-ms", "100");
                let mut bad = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = c.call_request(&req) {
                        if !matches!(e.kind(), charon_client::ErrorKind::NotFound { .. }) {
                            bad.push(e.to_string());
                        }
                    }
                }
                bad
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    d.signal(Signal::SIGKILL);
    d.proc.as_mut().expect("charond").wait_timeout(PATIENCE);
    let t0 = Instant::now();
    wait_for(PATIENCE, "the instances to leave", || {
        instances_of(&d.run).is_empty()
    });
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let bad: Vec<String> = loops
        .into_iter()
        .flat_map(|l| l.join().expect("loop"))
        .collect();
    println!("a dead manager's instances under constant load left {took:?} after its death (stop-grace 2 s)");
    assert!(took < Duration::from_secs(6), "{took:?}");
    // Answered, or (once no instance is left) told the socket is stale;
    // never a timeout.
    assert!(bad.iter().all(|e| !e.contains("timed out")), "{bad:?}");
}

#[test]
fn charond_raises_its_soft_fd_limit_to_the_hard_one_and_shows_the_headroom() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(
        &format!("conf/{KEY}.toml"),
        format!("exec = \"{}\"\n", bin("charon-echo").display()),
    );
    let run = dir.join("run");
    let d = Daemon::start_under(dir, conf, run, &[], &["prlimit", "--nofile=64:2048", "--"]);
    let (open, limit) = manager_fds(&d);
    assert_eq!(limit, 2048, "soft raised to hard");
    assert!(open > 0 && open < 64, "{open}");
    let (code, table, _) = d.charon(&["stats"]);
    assert_eq!(code, 0);
    assert!(table.contains("fds open of 2048 ("), "{table}");
    // Polled: the harness reads charond's log in a thread of its own.
    d.wait_log("the raise logged", |l| {
        l.contains("raised the fd limit from 64 to 2048")
    });
}

#[test]
fn with_no_fd_left_an_operator_is_told_so_at_once() {
    use std::io::{BufRead, BufReader, Write};
    let echo = format!("exec = \"{}\"\n", bin("charon-echo").display());
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), &echo);
    // What charond holds while it answers one control connection, less
    // any fd it inherited far above its own (RLIMIT_NOFILE limits fd
    // numbers, and a high inherited one takes no low slot).
    let probe = Daemon::start_in(TestDir::new(), conf.clone(), dir.join("probe"));
    let (open, _) = manager_fds(&probe);
    let high = std::fs::read_dir(format!("/proc/{}/fd", probe.pid()))
        .expect("fd dir")
        .flatten()
        .filter(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) >= Some(100))
        .count() as u64;
    let base = open - high;
    drop(probe);
    let nofile = format!("--nofile={base}:{base}");
    let run = dir.join("run");
    let d = Daemon::start_under(dir, conf, run, &[], &["prlimit", &nofile, "--"]);
    // One operator holds the last fd (answered once, so surely accepted).
    let held =
        std::os::unix::net::UnixStream::connect(d.run.join("charond.sock")).expect("connect");
    (&held)
        .write_all(b"{\"cmd\":\"version\"}\n")
        .expect("write");
    let mut line = String::new();
    BufReader::new(&held).read_line(&mut line).expect("answer");
    assert!(line.contains("\"ok\":true"), "{line}");
    // The next one is told why at once, not left waiting.
    let t0 = Instant::now();
    let (code, _, err) = d.charon(&["stats"]);
    let took = t0.elapsed();
    assert_ne!(code, 0);
    assert!(
        err.contains("out of file descriptors"),
        "{err}\n{}",
        d.log()
    );
    println!(
        "no fd left: `charon stats` refused in {took:?}: {}",
        err.trim()
    );
    // With the fd back, operators are served again.
    drop(held);
    wait_for(PATIENCE, "charon stats to answer again", || {
        d.charon(&["stats"]).0 == 0
    });
}
