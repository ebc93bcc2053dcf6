//! charond with real instances (`charon-echo`, `/bin/sh`, `/bin/false`) in
//! temp dirs: one test per behaviour of the manager issue. Each test's
//! daemon is a [`Daemon`], which kills charond and every instance it started
//! (found by their `CHARON_RUN_DIR`) and removes its dirs on drop, even when
//! the test fails. Conditions are polled with deadlines, never slept on.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use charon_client::{ErrorKind, Request};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::daemon::{Daemon, CLIENT_NAME};
use crate::util::echo_config;
use crate::util::load::client_at;
use crate::util::{bin, run, wait_for, TestDir};

/// Generous: the machine is shared and may be slow.
const LONG: Duration = Duration::from_secs(20);
const KEY: &str = "system.echo.0.raw";

#[test]
fn on_demand_first_request_is_answered() {
    let d = Daemon::start(&[(KEY, &echo_config("minimum-processes = 1"))]);
    assert_eq!(
        d.count("started (slot"),
        0,
        "nothing starts before a connect"
    );
    assert!(d.instances().is_empty());
    let body = d
        .client()
        .call(KEY, b"hello")
        .expect("first request answered");
    assert_eq!(body, b"hello");
    d.wait_log("the on-demand start", |l| {
        l.matches("on demand").count() == 1
    });
}

#[test]
fn prestart_starts_the_minimum() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 3\nmaximum-processes = 5"),
    )]);
    wait_for(LONG, "3 instances", || d.instances().len() == 3);
    d.wait_log("three prestart lines", |l| {
        l.matches("prestart").count() == 3
    });
}

#[test]
fn burst_of_eight_grows_instead_of_queueing() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 1\nmaximum-processes = 8"),
    )]);
    let mut c = d.client();
    assert_eq!(c.call(KEY, b"warm").expect("warm-up"), b"warm");
    assert_eq!(d.instances().len(), 1);
    let t0 = Instant::now();
    let mut batch = c.batch();
    let ids: Vec<_> = (0..8u8)
        .map(|i| {
            batch
                .add(Request::new(KEY, vec![i]).context("echo.sleep-ms", "300"))
                .expect("add")
        })
        .collect();
    batch.wait_all();
    let took = t0.elapsed();
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(
            batch.take(id).expect("result").expect("answered"),
            [i as u8]
        );
    }
    // Serially this is 8 x 300 ms = 2.4 s; two rounds would be 600 ms.
    assert!(
        took < Duration::from_millis(1500),
        "burst took {took:?}; log:\n{}",
        d.log()
    );
    d.wait_log("a grow", |l| l.contains("grow"));
}

#[test]
fn die_once_mid_request_is_retried_and_counted_clean() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 1\nmaximum-processes = 2"),
    )]);
    wait_for(LONG, "an instance", || d.instances().len() == 1);
    let flag = d.dir.join("died");
    let req = Request::new(KEY, b"again".to_vec())
        .context("echo.die-once", flag.to_str().expect("utf-8"));
    let body = d.client().call_request(&req).expect("retried and answered");
    assert_eq!(body, b"again");
    assert!(flag.exists());
    d.wait_log("the clean exit", |l| l.contains("counted as clean"));
    assert_eq!(d.count("counted as clean"), 1);
}

#[test]
fn bin_false_gives_unavailable_at_once_without_forking() {
    // A backoff longer than the test, so that all five calls fall in it
    // and no trial forks meanwhile.
    let d = Daemon::start(&[(
        KEY,
        "exec = \"/bin/false\"\nprestart-processes = true\nbackoff-initial = \"30s\"\n",
    )]);
    d.wait_log("backoff", |l| l.contains("backoff: no launch"));
    let starts = d.count("started (slot");
    let mut c = d.client();
    for _ in 0..5 {
        let t0 = Instant::now();
        let err = c.call(KEY, b"x").expect_err("in backoff");
        let took = t0.elapsed();
        match err.into_kind() {
            ErrorKind::Unavailable {
                retry_after,
                reason,
            } => {
                assert!((1..=30).contains(&retry_after), "{retry_after}");
                assert!(reason.contains("exit 1"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // At once, not after a wait for an instance: well under the 20 s
        // client timeout even on a loaded machine (250 ms was seen to fail
        // at a load of 12 on 2 cores). The millisecond figure is the
        // bench's fast-fail target (BENCHMARKS.md), not a timed test's.
        assert!(took < Duration::from_secs(2), "fast fail took {took:?}");
    }
    assert_eq!(d.count("started (slot"), starts, "no fork during backoff");
    assert!(d.instances().is_empty());
}

#[test]
fn missing_executable_is_a_launch_failure() {
    // A backoff longer than the test, so the call below falls in it.
    let d = Daemon::start(&[(
        KEY,
        "exec = \"/nonexistent/charon-no-such-program\"\nprestart-processes = true\nbackoff-initial = \"30s\"\n",
    )]);
    d.wait_log("the launch failure", |l| {
        l.contains("counted as launch_failed")
    });
    assert!(
        d.log()
            .contains("exit 15 (launch_failed: executable not found)"),
        "{}",
        d.log()
    );
    // A failure is a warning, and the backoff it causes too.
    d.wait_log("the backoff", |l| l.contains("backoff: no launch"));
    let log = d.log();
    for needle in ["counted as launch_failed", "backoff: no launch"] {
        let found: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(needle))
            .map(|l| l.split(' ').nth(1).unwrap_or(""))
            .collect();
        assert!(
            !found.is_empty() && found.iter().all(|l| *l == "warn"),
            "{needle}: {log}"
        );
    }
    let err = d.client().call(KEY, b"x").expect_err("in backoff");
    match err.into_kind() {
        ErrorKind::Unavailable { reason, .. } => {
            assert!(reason.contains("executable not found"), "{reason}");
            assert!(
                reason.contains(
                    "launch failed: unable to exec /nonexistent/charon-no-such-program: \
                     No such file or directory (errno 2)"
                ),
                "last stderr line names the program and says why: {reason}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// A crash is a signal the manager did not send: here a segfault.
#[test]
fn a_signal_counts_a_crash_and_is_replaced() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 1"),
    )]);
    wait_for(LONG, "an instance", || d.instances().len() == 1);
    let req = Request::new(KEY, b"x".to_vec())
        .context("echo.signal", "11")
        .no_retry();
    let err = d.client().call_request(&req).expect_err("crashed");
    assert!(matches!(err.into_kind(), ErrorKind::Disconnected { .. }));
    d.wait_log("the crash", |l| {
        l.contains("killed by signal 11 (crashed)") && l.contains("counted as crashed")
    });
    d.wait_log("a replacement", |l| l.contains("replacement"));
    assert_eq!(
        d.client().call(KEY, b"ok").expect("replacement answers"),
        b"ok"
    );
}

#[test]
fn unresponsive_instance_is_killed_and_the_request_retried() {
    // The test is about unresponsive-timeout: 1 s instead of the default
    // 10 s, so both kills (the call and its one retry) come inside the
    // client's timeout; at most 2 instances so the retry finds another.
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 1\nmaximum-processes = 2\nunresponsive-timeout = \"1s\""),
    )]);
    wait_for(LONG, "an instance", || d.instances().len() == 1);
    let req = Request::new(KEY, b"zz".to_vec()).context("echo.sleep-ms", "60000");
    let err = d.client().call_request(&req).expect_err("killed twice");
    assert!(matches!(err.into_kind(), ErrorKind::Disconnected { .. }));
    // The log is read by another thread: wait for the lines, never assume.
    d.wait_log("both kills with what they were doing", |l| {
        l.contains(&format!("(client \"{CLIENT_NAME}\", attempt 1, "))
            && l.contains(&format!("(client \"{CLIENT_NAME}\", attempt 2, "))
            && l.matches("counted as unresponsive").count() == 2
    });
}

#[test]
fn maximum_requests_recycles_with_the_replacement_first() {
    // The knob is the subject; jitter 0 makes the recycle point exact.
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 1\nmaximum-requests = 5\nmaximum-requests-jitter = 0"),
    )]);
    let mut c = d.client();
    let mut sent = 0u32;
    wait_for(LONG, "two recycles", || {
        for i in 0..5u8 {
            assert_eq!(c.call(KEY, &[i]).expect("every request answered"), [i]);
        }
        sent += 5;
        d.count("counted as max_requests") >= 2
    });
    let log = d.log();
    assert!(sent >= 10, "{sent}");
    assert!(d.count("recycle") >= 2, "{log}");
    assert_eq!(d.count("counted as crashed"), 0, "{log}");
    // The replacement starts before the old instance leaves.
    let first_recycle = log.find(", recycle,").expect("a recycle start");
    let first_exit = log.find("counted as max_requests").expect("an exit");
    assert!(first_recycle < first_exit, "{log}");
}

#[test]
fn idle_instances_shrink_to_the_minimum() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 1\nmaximum-processes = 4\nidle-timeout = \"1s\""),
    )]);
    wait_for(LONG, "an instance", || d.instances().len() == 1);
    let mut c = d.client();
    let mut batch = c.batch();
    for i in 0..4u8 {
        batch
            .add(Request::new(KEY, vec![i]).context("echo.sleep-ms", "500"))
            .expect("add");
    }
    batch.wait_all();
    d.wait_log("a grow first", |l| l.contains("grow"));
    wait_for(LONG, "the minimum again", || d.instances().len() == 1);
    d.wait_log("an idle or excess stop", |l| {
        l.contains("counted as idle") || l.contains("counted as excess")
    });
}

#[test]
fn check_reports_each_kind_of_config_error() {
    let dir = TestDir::new();
    dir.write("bad/a.b.0.raw.toml", "exec = \"x\"\nno-such-key = 1\n");
    dir.write(
        "bad/c.d.0.raw.toml",
        "exec = \"x\"\nmaximum-processes = \"many\"\n",
    );
    dir.write(
        "bad/e.f.0.raw.toml",
        "exec = \"x\"\nmaximum-processes = 20000\n",
    );
    dir.write(
        "bad/g.h.0.raw.toml",
        "exec = \"x\"\nminimum-processes = 5\nmaximum-processes = 2\n",
    );
    let (status, out, _) = charond_check(&dir.join("bad"));
    assert_eq!(status.code(), Some(1), "{out}");
    for (file, key) in [
        ("a.b.0.raw.toml:2: no-such-key: ", "unknown key"),
        ("c.d.0.raw.toml:2: maximum-processes: ", "wrong type"),
        ("e.f.0.raw.toml:2: maximum-processes: ", "out of range"),
        ("g.h.0.raw.toml:", "minimum > maximum"),
    ] {
        assert!(out.contains(file), "{key}: {file} missing in:\n{out}");
    }
    // The last line sums it up.
    assert!(
        out.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.ends_with(": 0 service file(s) valid, 4 with errors (4 error(s))")),
        "{out}"
    );
    dir.write("good/a.b.0.raw.toml", "exec = \"x\"\n");
    dir.write("good/README.toml", "not a service\n");
    let (status, out, err) = charond_check(&dir.join("good"));
    assert_eq!(status.code(), Some(0), "{out}");
    // Success says so, in one line.
    assert_eq!(
        out,
        format!(
            "config dir {}: 1 service file(s) valid, 0 with errors, 1 ignored\n",
            dir.join("good").display()
        )
    );
    assert!(
        err.contains("charond: ignored ") && err.contains("README.toml: "),
        "{err}"
    );
}

/// Runs `charond --check` on `conf`: its status, stdout and stderr.
fn charond_check(conf: &Path) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(bin("charond"));
    cmd.arg("--check").arg("--config-dir").arg(conf);
    let (status, out, err) = run(cmd, LONG);
    (
        status,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_everything_is_gone() {
    let mut d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 2"),
    )]);
    wait_for(LONG, "two instances", || d.instances().len() == 2);
    let t = call_in_hand(&d, b"late", "1500");
    let pid = d.pid();
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    let status = d.proc.as_mut().expect("proc").wait_timeout(LONG);
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert_eq!(t.join().expect("thread").expect("finished"), b"late");
    assert!(
        !d.run.join(format!("{KEY}.sock")).exists(),
        "socket removed"
    );
    assert!(d.instances().is_empty(), "no orphan left");
    d.wait_log("two shutdown exits", |l| {
        l.matches("counted as shutdown").count() == 2
    });
}

/// Sends `body` with `echo.sleep-ms` = `ms` from a thread (a 15 s client)
/// and returns once an instance has it in hand (its slot busy, sleeping
/// in the request): the log shows nothing per request.
fn call_in_hand(
    d: &Daemon,
    body: &'static [u8],
    ms: &'static str,
) -> std::thread::JoinHandle<Result<Vec<u8>, charon_client::Error>> {
    let run_dir = d.run.clone();
    let t = std::thread::spawn(move || {
        let mut c = client_at(&run_dir, Duration::from_secs(15));
        c.call_request(&Request::new(KEY, body.to_vec()).context("echo.sleep-ms", ms))
    });
    wait_for(LONG, "the request to be in hand", || {
        d.instances().iter().any(|&p| busy_sleeping(p))
    });
    t
}

/// An instance thread sleeping in `echo.sleep-ms` (state S with a
/// nanosleep/clock_nanosleep wait channel).
fn busy_sleeping(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("nanosleep"))
}

#[test]
fn instances_hold_only_fds_0_to_5_and_a_scrubbed_environment() {
    let script = "env >&2; exec sleep 600";
    let d = Daemon::start(&[(
        KEY,
        &format!("exec = [\"/bin/sh\", \"-c\", {script:?}]\nprestart-processes = true\nunresponsive-timeout = 0\n"),
    )]);
    d.wait_log("the environment", |l| {
        l.contains("stderr: PATH=")
            && l.contains("stderr: CHARON_RUN_DIR=")
            && l.contains("stderr: CHARON_SERVICE_KEY=")
            && l.contains("stderr: CHARON_SLOT=")
    });
    let log = d.log();
    // Polled: the shell's `env` child, which has the same environment, may
    // not have exited yet when its output is logged.
    let pids = [d.one_instance(LONG, "the one instance, once env has exited")];
    // `exec sleep` keeps the pid: once it has run, these are the fds the
    // manager passed (the shell itself juggles fds while `env` runs).
    wait_for(LONG, "the exec of sleep", || {
        std::fs::read(format!("/proc/{}/cmdline", pids[0])).is_ok_and(|c| c.starts_with(b"sleep\0"))
    });
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{}/fd", pids[0]))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, [0, 1, 2, 3, 4, 5], "{log}");
    let link = |fd: u32| std::fs::read_link(format!("/proc/{}/fd/{fd}", pids[0])).expect("link");
    assert_eq!(link(0), Path::new("/dev/null"));
    assert_eq!(link(1), Path::new("/dev/null"));
    assert!(link(2).to_string_lossy().starts_with("pipe:"));
    assert!(link(3).to_string_lossy().starts_with("socket:"));
    assert!(link(4).to_string_lossy().contains("memfd:charon-"));
    assert!(link(5).to_string_lossy().starts_with("socket:"));
    assert!(
        !log.contains("CHARON_TEST_LEAK"),
        "manager env leaked: {log}"
    );
    assert!(
        log.contains(&format!("stderr: CHARON_RUN_DIR={}", d.run.display())),
        "{log}"
    );
    assert!(
        log.contains("stderr: CHARON_SERVICE_KEY=system.echo.0.raw"),
        "{log}"
    );
}

#[test]
fn stderr_is_logged_with_key_and_pid() {
    let d = Daemon::start(&[(KEY, &echo_config(""))]);
    let req = Request::new(KEY, b"x".to_vec()).context("echo.log", "hello from the instance");
    d.client().call_request(&req).expect("answered");
    d.wait_log("the stderr line", |l| {
        l.lines().any(|l| {
            l.contains(KEY)
                && l.contains(" pid=")
                && l.ends_with("stderr: charon-echo: hello from the instance")
        })
    });
}

#[test]
fn a_second_charond_on_the_same_run_dir_fails_clearly() {
    let d = Daemon::start(&[(KEY, &echo_config(""))]);
    let mut cmd = Command::new(bin("charond"));
    cmd.arg("--config-dir")
        .arg(&d.conf)
        .arg("--run-dir")
        .arg(&d.run);
    let (status, _, err) = run(cmd, LONG);
    let err = String::from_utf8_lossy(&err);
    assert_ne!(status.code(), Some(0));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("another charond already runs"), "{err}");
    // The first one still serves.
    assert_eq!(d.client().call(KEY, b"still").expect("answered"), b"still");
}

#[test]
fn stale_sockets_are_removed_and_missing_config_dir_is_fatal() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), echo_config(""));
    let run_dir = dir.mkdir("run");
    let stale = run_dir.join("gone.svc.0.raw.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let d = Daemon::start_in(dir, conf, run_dir);
    assert!(!stale.exists(), "stale socket removed");
    assert_eq!(d.client().call(KEY, b"fresh").expect("answered"), b"fresh");

    let mut cmd = Command::new(bin("charond"));
    cmd.arg("--config-dir")
        .arg(d.dir.join("nope"))
        .arg("--run-dir")
        .arg(d.dir.join("run2"));
    let (status, _, err) = run(cmd, LONG);
    let err = String::from_utf8_lossy(&err);
    assert_ne!(status.code(), Some(0));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("config dir") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn instances_exit_when_the_manager_is_killed_and_a_new_one_starts_clean() {
    let mut d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 2"),
    )]);
    wait_for(LONG, "two instances", || d.instances().len() == 2);
    let in_flight = call_in_hand(&d, b"mine", "1000");
    // SIGKILL charond alone (not its group): the instances must notice,
    // finish the request in hand, and exit.
    d.proc.as_ref().expect("proc").signal(Signal::SIGKILL);
    d.proc.as_mut().expect("proc").wait_timeout(LONG);
    assert_eq!(
        in_flight.join().expect("thread").expect("answered"),
        b"mine"
    );
    wait_for(LONG, "the orphaned instances to exit", || {
        d.instances().is_empty()
    });
    assert!(
        d.run.join(format!("{KEY}.sock")).exists(),
        "left behind by the dead manager"
    );
    let dir = std::mem::replace(&mut d.dir, TestDir::new());
    let (conf, run) = (d.conf.clone(), d.run.clone());
    drop(d);
    let d2 = Daemon::start_in(dir, conf, run);
    // The log is read by a thread: wait for the line rather than race it.
    d2.wait_log("the stale socket removed", |l| {
        l.contains("removed stale socket")
    });
    assert_eq!(d2.client().call(KEY, b"new").expect("answered"), b"new");
}

#[test]
fn instances_over_maximum_rss_are_recycled_gracefully() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 1\nmaximum-rss = \"64K\""),
    )]);
    d.wait_log("a memory recycle", |l| l.contains("counted as max_rss"));
    let log = d.log();
    assert!(
        log.contains("is over maximum-rss 65536: recycling"),
        "{log}"
    );
    assert!(
        log.find(", recycle,") < log.find("stopping (max_rss)"),
        "{log}"
    );
    // Requests keep being answered while instances come and go.
    let mut c = d.client();
    for i in 0..20u8 {
        assert_eq!(c.call(KEY, &[i]).expect("answered"), [i]);
    }
}

/// Voluntary context switches of a process: each time it went to sleep.
fn wakeups(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

#[test]
fn the_manager_is_not_woken_per_request_at_maximum() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 2\nmaximum-processes = 2"),
    )]);
    wait_for(LONG, "two instances", || d.instances().len() == 2);
    let mut c = d.client();
    assert_eq!(c.call(KEY, b"warm").expect("warm-up"), b"warm");
    let before = wakeups(d.pid());
    let mut batch = c.batch();
    // 60 requests of 20 ms on 2 instances: the queue never empties, so
    // instances report in batches and the manager is not told per request.
    let ids: Vec<_> = (0..60u8)
        .map(|i| {
            batch
                .add(Request::new(KEY, vec![i]).context("echo.sleep-ms", "20"))
                .expect("add")
        })
        .collect();
    batch.wait_all();
    let woken = wakeups(d.pid()) - before;
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(
            batch.take(id).expect("result").expect("answered"),
            [i as u8]
        );
    }
    assert!(
        woken < 30,
        "manager woken {woken} times for 60 requests; log:\n{}",
        d.log()
    );
}

#[test]
fn after_backoff_a_trial_instance_brings_the_service_back() {
    let dir = TestDir::new();
    let flag = dir.join("failed-once");
    let script = format!(
        "if [ -e {f} ]; then exec {echo}; else touch {f}; echo first start fails >&2; exit 3; fi",
        f = flag.display(),
        echo = bin("charon-echo").display()
    );
    let d = Daemon::start_script(dir, KEY, &script);
    d.wait_log("backoff", |l| l.contains("backoff: no launch for 1s"));
    match d.client().call(KEY, b"x") {
        Err(e) => match e.into_kind() {
            ErrorKind::Unavailable { reason, .. } => {
                assert!(
                    reason.contains("exit 3") && reason.contains("first start fails"),
                    "{reason}"
                )
            }
            other => panic!("expected Unavailable, got {other:?}"),
        },
        // The trial may already be up on a slow machine.
        Ok(body) => assert_eq!(body, b"x"),
    }
    d.wait_log("the trial", |l| l.contains("trial after backoff"));
    assert_eq!(
        d.client()
            .call(KEY, b"back")
            .expect("answered by the trial"),
        b"back"
    );
    d.wait_log("recovery", |l| l.contains("healthy again"));
}

#[test]
fn instances_ignoring_sigterm_are_killed_after_stop_grace() {
    // SIG_IGN survives exec: `sleep` ignores SIGTERM. The knob is the
    // subject (stop-grace 1 s, not the default 10 s); unresponsive-timeout 0
    // keeps the stuck-instance kill out of the way.
    let script = "trap '' TERM; exec sleep 600";
    let mut d = Daemon::start(&[(
        KEY,
        &format!("exec = [\"/bin/sh\", \"-c\", {script:?}]\nprestart-processes = true\nminimum-processes = 2\nstop-grace = \"1s\"\nunresponsive-timeout = 0\n"),
    )]);
    // Both past their `trap` (exec'd into sleep): a SIGTERM before it would
    // kill the shell, and nothing would be left to outlast stop-grace.
    wait_for(LONG, "two instances sleeping with SIGTERM ignored", || {
        let pids = d.instances();
        pids.len() == 2
            && pids.iter().all(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
            })
    });
    let t0 = Instant::now();
    d.proc.as_ref().expect("proc").signal(Signal::SIGTERM);
    let status = d.proc.as_mut().expect("proc").wait_timeout(LONG);
    // 3: the stop had to SIGKILL (doc/charond.md, exit codes).
    assert_eq!(status.code(), Some(3), "{}", d.log());
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "waited for stop-grace"
    );
    d.wait_log("two SIGKILLs", |l| {
        l.matches("still running after stop-grace; sending SIGKILL")
            .count()
            == 2
    });
    assert!(d.instances().is_empty(), "no orphan left");
}

#[test]
fn a_crash_loop_enters_backoff() {
    // crash-loop-count and its interval at their defaults (5 in 10 s); a
    // backoff longer than the test, so the last call falls in it.
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nbackoff-initial = \"30s\""),
    )]);
    let mut c = d.client();
    // Each instance crashes on its first request: a young crash.
    for n in 1..=5 {
        wait_for(LONG, "an instance", || d.instances().len() == 1);
        let req = Request::new(KEY, b"x".to_vec())
            .context("echo.signal", "6")
            .no_retry();
        assert!(c.call_request(&req).is_err());
        d.wait_log("the crash", |l| {
            l.matches("counted as crashed").count() == n
        });
    }
    d.wait_log("backoff", |l| l.contains("backoff: no launch for 30s"));
    let res = c.call(KEY, b"x");
    let err = res
        .err()
        .unwrap_or_else(|| panic!("answered in backoff; log:\n{}", d.log()));
    match err.into_kind() {
        ErrorKind::Unavailable { reason, .. } => assert!(reason.contains("signal 6"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn a_flood_of_stderr_is_rate_limited_with_a_summary() {
    let script =
        "i=0; while [ $i -lt 1000 ]; do echo flood line $i >&2; i=$((i+1)); done; exec sleep 600";
    let d = Daemon::start(&[(
        KEY,
        &format!("exec = [\"/bin/sh\", \"-c\", {script:?}]\nprestart-processes = true\nunresponsive-timeout = 0\n"),
    )]);
    d.wait_log("the summary", |l| {
        l.contains("line(s) dropped by the rate limit")
    });
    let log = d.log();
    let logged = log.matches("stderr: flood line").count();
    let dropped: usize = log
        .lines()
        .filter_map(|l| {
            l.split_once("unable to log all stderr: ")?
                .1
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!((200..400).contains(&logged), "{logged} lines logged");
    // Every line is either logged or counted (some may still be unsummarised).
    assert!(
        logged + dropped <= 1000 && logged + dropped >= 900,
        "{logged} + {dropped}"
    );
    // Whole lines only.
    assert!(log
        .lines()
        .filter(|l| l.contains("stderr: flood"))
        .all(|l| {
            l.split_once("stderr: flood line ")
                .is_some_and(|(_, n)| n.parse::<u32>().is_ok())
        }));
}

#[test]
fn periodic_stats_lines_count_requests_faults_and_exits() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(
        &format!("conf/{KEY}.toml"),
        echo_config("prestart-processes = true"),
    );
    let run_dir = dir.join("run");
    let d = Daemon::start_with(dir, conf, run_dir, &["--stats-interval", "1"]);
    let mut c = d.client();
    for i in 0..3u8 {
        assert_eq!(c.call(KEY, &[i]).expect("answered"), [i]);
    }
    let fault = Request::new(KEY, b"x".to_vec()).context("echo.fault", "100:no");
    assert!(c
        .call_request(&fault)
        .expect_err("fault")
        .is_service_fault());
    // Instances batch their reports (flushed once a batch is a second old),
    // and the die-once below ends the instance abruptly, losing any batch
    // still unsent, as a crash would. So wait for these four to be counted.
    d.wait_log("the first four requests to be reported", |l| {
        l.lines().any(|l| l.contains("requests=4 faults=1"))
    });
    let flag = d.dir.join("died");
    let die =
        Request::new(KEY, b"y".to_vec()).context("echo.die-once", flag.to_str().expect("utf-8"));
    assert_eq!(c.call_request(&die).expect("retried"), b"y");
    // Launches are at least the first instance and the replacement of the
    // one that died; a second may start when the retry finds nobody idle
    // (and leave later as excess), so the count is a lower bound.
    d.wait_log("a stats line with every count", |l| {
        l.lines().any(|l| {
            let launches = l
                .split_once("launches=")
                .and_then(|(_, r)| r.split(' ').next())
                .and_then(|n| n.parse::<u32>().ok());
            l.contains("requests=5 faults=1")
                && l.contains("retried=1")
                && launches.is_some_and(|n| n >= 2)
                && (l.contains("exits=[clean=1]") || l.contains("exits=[clean=1,"))
        })
    });
}

#[test]
fn limits_cd_and_env_are_applied_before_exec() {
    let script =
        "echo nofile=$(ulimit -n) cpu=$(ulimit -t) pwd=$(pwd) foo=$FOO >&2; exec sleep 600";
    let d = Daemon::start(&[(
        KEY,
        &format!(
            "exec = [\"/bin/sh\", \"-c\", {script:?}]\nprestart-processes = true\nunresponsive-timeout = 0\n\
             cd = \"/tmp\"\nulimit-open-files = 64\nulimit-cpu-milliseconds = 1500\n\n[env]\nFOO = \"bar\"\n"
        ),
    )]);
    d.wait_log("the limits line", |l| l.contains("stderr: nofile="));
    assert!(
        d.log().contains("stderr: nofile=64 cpu=2 pwd=/tmp foo=bar"),
        "{}",
        d.log()
    );
}

#[test]
fn a_missing_cd_directory_is_launch_failure_11() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\ncd = \"/nonexistent-charon-dir\""),
    )]);
    d.wait_log("the launch failure", |l| {
        l.contains("counted as launch_failed")
    });
    let log = d.log();
    assert!(
        log.contains("exit 11 (launch_failed: chdir to the cd directory failed)"),
        "{log}"
    );
    assert!(
        log.contains(
            "stderr: charond: launch failed: unable to chdir to /nonexistent-charon-dir: \
             No such file or directory (errno 2)"
        ),
        "{log}"
    );
}

#[test]
fn a_client_arriving_while_all_are_busy_gets_a_new_instance() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 1\nmaximum-processes = 2"),
    )]);
    wait_for(LONG, "an instance", || d.instances().len() == 1);
    let slow = call_in_hand(&d, b"slow", "2000");
    // No instance can take this one, so none can hint: the manager must see
    // the connect itself.
    let t0 = Instant::now();
    assert_eq!(d.client().call(KEY, b"quick").expect("answered"), b"quick");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "waited {took:?} for the slow one; log:\n{}",
        d.log()
    );
    assert_eq!(slow.join().expect("thread").expect("answered"), b"slow");
    d.wait_log("the grow", |l| l.contains("grow"));
}

#[test]
fn instances_run_as_the_configured_user_when_the_manager_is_root() {
    if !nix::unistd::geteuid().is_root() {
        return; // Switching users needs root; nothing to check otherwise.
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        return;
    };
    let script = "echo uid=$(id -u) gid=$(id -g) >&2; exec sleep 600";
    let d = Daemon::start(&[(
        KEY,
        &format!("exec = [\"/bin/sh\", \"-c\", {script:?}]\nprestart-processes = true\nunresponsive-timeout = 0\ncd = \"/\"\nuser = \"nobody\"\n"),
    )]);
    d.wait_log("the ids", |l| l.contains("stderr: uid="));
    let want = format!("stderr: uid={} gid={}", nobody.uid, nobody.gid);
    assert!(d.log().contains(&want), "{want} in:\n{}", d.log());
}

#[test]
fn a_full_backlog_gives_overloaded_and_the_socket_has_its_mode() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(
        &format!("conf/{KEY}.toml"),
        echo_config("prestart-processes = true\nminimum-processes = 1\nmaximum-processes = 1\nlisten-backlog = 1\nsocket-mode = \"0600\""),
    );
    let run_dir = dir.join("run");
    let d = Daemon::start_with(dir, conf, run_dir, &["--stats-interval", "1"]);
    wait_for(LONG, "an instance", || d.instances().len() == 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.run.join(format!("{KEY}.sock")))
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut c = d.client();
    let mut batch = c.batch();
    let ids: Vec<_> = (0..6u8)
        .map(|i| {
            batch
                .add(Request::new(KEY, vec![i]).context("echo.sleep-ms", "1500"))
                .expect("add")
        })
        .collect();
    batch.wait_all();
    let mut overloaded = 0;
    for id in ids {
        match batch.take(id).expect("result") {
            Ok(_) => {}
            Err(e) => match e.into_kind() {
                ErrorKind::Overloaded => overloaded += 1,
                other => panic!("expected an answer or Overloaded, got {other:?}"),
            },
        }
    }
    assert!(
        overloaded >= 1,
        "a backlog of 1 cannot hold 5 waiting clients"
    );
    d.wait_log("the full queue counted", |l| {
        l.lines()
            .any(|l| l.contains("stats:") && !l.contains("overload_seen=0"))
    });
}

#[test]
fn a_program_that_exits_0_at_once_is_not_respawned_forever() {
    // crash-loop-count at its default (5); a backoff longer than the test,
    // so the call below falls in it.
    let d = Daemon::start(&[(
        KEY,
        "exec = \"/bin/true\"\nprestart-processes = true\nbackoff-initial = \"30s\"\n",
    )]);
    d.wait_log("backoff", |l| l.contains("backoff: no launch for 30s"));
    assert_eq!(d.count("started (slot"), 5, "{}", d.log());
    match d
        .client()
        .call(KEY, b"x")
        .expect_err("in backoff")
        .into_kind()
    {
        ErrorKind::Unavailable { reason, .. } => {
            assert!(reason.contains("exit 0 (clean)"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Voluntary context switches of a process so far.
fn voluntary_switches(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Idle instances share one listening socket. Waiting with poll(2) woke
/// every idle instance for each connection (measured: 4.7 switches per
/// request over 4 instances); the exclusive epoll wait wakes one (1.45).
#[test]
fn a_connection_wakes_one_idle_instance_not_all() {
    let d = Daemon::start(&[(
        KEY,
        &echo_config("prestart-processes = true\nminimum-processes = 4\nmaximum-processes = 4"),
    )]);
    wait_for(LONG, "4 instances", || d.instances().len() == 4);
    let mut c = d.client();
    // Every instance up and waiting: each has answered at least once.
    let mut seen = std::collections::BTreeSet::new();
    let mut batch = c.batch();
    let ids: Vec<_> = (0..8)
        .map(|_| {
            batch
                .add(Request::new(KEY, b"x".to_vec()).context("echo.sleep-ms", "50"))
                .expect("add")
        })
        .collect();
    batch.wait_all();
    for id in ids {
        assert!(matches!(batch.result(id), Some(Ok(_))), "warm-up answered");
    }
    drop(batch);
    let pids = d.instances();
    seen.extend(pids.iter().copied());
    assert_eq!(seen.len(), 4);
    const N: u64 = 300;
    let before: u64 = pids.iter().map(|p| voluntary_switches(*p)).sum();
    for i in 0..N {
        let body = i.to_be_bytes();
        assert_eq!(c.call(KEY, &body).expect("answered"), body);
    }
    let after: u64 = pids.iter().map(|p| voluntary_switches(*p)).sum();
    assert_eq!(d.instances(), pids, "the same instances served");
    let per_request = (after - before) as f64 / N as f64;
    assert!(
        per_request < 2.5,
        "{per_request:.2} context switches per request over 4 idle instances: \
         each connection wakes more than one"
    );
}

/// A rendezvous socket appears only once it listens with its configured
/// mode: a client that finds the file never gets "connection refused"
/// (which reads as a stale socket), nor sees it with the default mode,
/// while charond starts.
#[test]
fn a_socket_that_exists_accepts_connections_from_the_start() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    let keys: Vec<String> = (0..20).map(|i| format!("start.s{i}.0.raw")).collect();
    for k in &keys {
        dir.write(
            &format!("conf/{k}.toml"),
            echo_config("socket-mode = \"0640\""),
        );
    }
    let run_dir = dir.join("run");
    let paths: Vec<_> = keys
        .iter()
        .map(|k| run_dir.join(format!("{k}.sock")))
        .collect();
    let prober = {
        let paths = paths.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + LONG;
            let mut ok = vec![false; paths.len()];
            while ok.iter().any(|o| !o) && Instant::now() < deadline {
                for (p, done) in paths.iter().zip(ok.iter_mut()) {
                    if *done {
                        continue;
                    }
                    let Ok(meta) = std::fs::metadata(p) else {
                        continue;
                    };
                    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
                    if mode & 0o777 != 0o640 {
                        return Err(format!("{} first seen with mode {mode:o}", p.display()));
                    }
                    match std::os::unix::net::UnixStream::connect(p) {
                        Ok(_) => *done = true,
                        // Gone again between exists() and connect: fine.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(format!("{}: {e}", p.display())),
                    }
                }
            }
            Ok(ok.iter().all(|o| *o))
        })
    };
    let d = Daemon::start_in(dir, conf, run_dir);
    assert_eq!(prober.join().expect("prober"), Ok(true));
    drop(d);
}
