//! Nothing lost at the edges of charond's life: requests already written
//! (in hand, or connected and queued on the socket) across a stop, the
//! manager's death, a reload and `charon restart`. RELIABILITY.md maps each
//! failure mode to its test here.

use std::path::Path;
use std::time::{Duration, Instant};

use charon_client::{Client, Request};
use nix::sys::signal::Signal;

use crate::util::daemon::{instances_of, Daemon, PATIENCE};
use crate::util::{bin, wait_for, TestDir};

const KEY: &str = "system.echo.0.raw";
/// How long the 2 requests in hand take: the 6 others queue meanwhile.
const IN_HAND_MS: &str = "3000";
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

fn client_of(run: &Path) -> Client {
    Client::builder()
        .run_dir(run)
        .timeout(Duration::from_secs(30))
        .name("edges-test")
        .build()
        .expect("client")
}

/// An instance sleeping in `echo.sleep-ms`.
fn sleeping(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("nanosleep"))
}

type Call = std::thread::JoinHandle<(u8, Result<Vec<u8>, charon_client::Error>, Duration)>;

fn call(run: &Path, i: u8, sleep_ms: &'static str) -> Call {
    let run = run.to_path_buf();
    std::thread::spawn(move || {
        let mut c = client_of(&run);
        let req = Request::new(KEY, vec![i]).context("echo.sleep-ms", sleep_ms);
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
        let e = client_of(&d.run).call(KEY, b"late").expect_err("no socket");
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
        client_of(&d.run).call(KEY, b"after").expect("served"),
        b"after"
    );
}

#[test]
fn a_reload_serves_the_old_generations_requests_in_hand_and_queue() {
    let d = Daemon::start(&[(KEY, &pool_of_2())]);
    eight_across(&d, "a reload that changes the config", |d| {
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
        client_of(&d.run).call(KEY, b"again").expect("served"),
        b"again"
    );
}
