//! What probes rely on (a container's HEALTHCHECK, Kubernetes readiness):
//! `charon health` against a real charond. The demo on its documented
//! defaults is healthy; a service in backoff and a config file that failed
//! to load are named on one line with a non-zero exit, and so is a
//! charond that is stopping; no charond is a clear line too. Each test
//! polls for the condition with a deadline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use charon_client::Request;

use crate::util::daemon::{Daemon, PATIENCE};
use crate::util::{bin, run, wait_for, TestDir};

const KEY: &str = "system.echo.0.raw";

/// `charon health`'s exit status when charond answers but something is
/// not ready (doc/charon.md).
const UNHEALTHY: i32 = 3;

/// The repository's demo config dir, as the README runs it.
fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo")
}

fn echo_conf() -> String {
    format!("exec = \"{}\"\n", bin("charon-echo").display())
}

#[test]
fn the_demo_is_healthy_before_and_after_serving() {
    let dir = TestDir::new();
    let run_dir = dir.join("run");
    let d = Daemon::start_in(dir, demo_dir(), run_dir);
    let (code, out, err) = d.charon(&["health"]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    assert_eq!(
        out.trim(),
        "healthy: 1 service(s), 0 ready, 1 on demand",
        "{err}"
    );
    assert_eq!(d.client().call(KEY, b"hi").unwrap(), b"hi");
    let (code, out, err) = d.charon(&["health", "--json"]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("health --json is JSON");
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["services"][0]["key"], KEY, "{v}");
    assert_eq!(v["services"][0]["health"], "on_demand", "{v}");
}

#[test]
fn a_prestarted_service_is_healthy_once_its_minimum_is_ready() {
    // Prestarting is what the test is about: the minimum must be ready.
    let conf = format!(
        "{}prestart-processes = true\nminimum-processes = 2\n",
        echo_conf()
    );
    let d = Daemon::start(&[(KEY, &conf)]);
    let mut last = String::new();
    wait_for(PATIENCE, "the minimum ready", || {
        let (code, out, err) = d.charon(&["health"]);
        last = format!("{code} {out}{err}");
        code == 0
    });
    assert!(
        last.contains("1 service(s), 1 ready, 0 on demand"),
        "{last}"
    );
}

#[test]
fn a_service_in_backoff_is_named_and_the_others_are_not() {
    let bad = "app.bad.0.raw";
    let d = Daemon::start(&[(KEY, &echo_conf()), (bad, &echo_conf())]);
    assert_eq!(d.charon(&["health"]).0, 0, "healthy before");
    // A young instance that exits 3 (a person must fix something): backoff.
    let r = Request::new(bad, b"x".to_vec())
        .context("echo.log", "cannot open the database")
        .context("echo.exit", "3")
        .no_retry();
    assert!(d.client().call_request(&r).is_err());
    let mut seen = (0, String::new(), String::new());
    wait_for(PATIENCE, "charon health to name the backoff", || {
        seen = d.charon(&["health"]);
        seen.2.contains("in backoff")
    });
    let (code, out, err) = seen;
    assert_eq!(code, UNHEALTHY, "stdout: {out} stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("charon: unhealthy: app.bad.0.raw: in backoff for "),
        "{err}"
    );
    assert!(
        err.contains("exit 3") && err.contains("cannot open the database"),
        "the reason: {err}"
    );
    assert!(!err.contains(KEY), "only the service in trouble: {err}");
    assert!(out.is_empty(), "{out}");
    // Liveness: charond answers, so it is alive, backoff or not.
    let (code, out, err) = d.charon(&["health", "--live"]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    assert_eq!(out.trim(), "charond answers");
}

#[test]
fn a_config_file_that_failed_to_load_is_named_until_it_is_fixed() {
    let broken = "app.broken.0.raw";
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), echo_conf());
    dir.write(&format!("conf/{broken}.toml"), "exec = 3\n");
    let run_dir = dir.join("run");
    let d = Daemon::start_in(dir, conf, run_dir);
    let (code, out, err) = d.charon(&["health"]);
    assert_eq!(code, UNHEALTHY, "stdout: {out} stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("charon: unhealthy: config file failed to load: ")
            && err.contains("app.broken.0.raw.toml:1: exec: "),
        "{err}"
    );
    // Fixed and reloaded: healthy again.
    d.write_conf(broken, &echo_conf());
    let (code, _, err) = d.charon(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = d.charon(&["health"]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    assert!(out.contains("2 service(s)"), "{out}");
    // Broken again by a reload: the old config keeps running, and health
    // says the file is broken.
    d.write_conf(broken, "exec = \"x\"\nmaximum-processes = 0\n");
    let (code, _, _) = d.charon(&["reload"]);
    assert_ne!(code, 0, "the reload reports the error");
    let (code, _, err) = d.charon(&["health"]);
    assert_eq!(code, UNHEALTHY, "{err}");
    assert!(
        err.contains("app.broken.0.raw.toml:2: maximum-processes"),
        "{err}"
    );
}

#[test]
fn a_stopping_charond_is_unhealthy_while_it_drains() {
    let d = Daemon::start(&[(KEY, &echo_conf())]);
    let mut c = d.client();
    // A request in hand keeps charond draining for a while after SIGTERM.
    let slow = std::thread::spawn(move || {
        let r = Request::new(KEY, b"slow".to_vec()).context("echo.sleep-ms", "5000");
        c.call_request(&r)
    });
    wait_for(PATIENCE, "the slow request in hand", || {
        d.ps().iter().any(|i| i["state"] == "busy")
    });
    d.signal(nix::sys::signal::Signal::SIGTERM);
    // The signal is handled on charond's next turn: poll for it.
    let mut seen = (0, String::new(), String::new());
    wait_for(PATIENCE, "charon health to see the stop", || {
        seen = d.charon(&["health"]);
        seen.0 != 0
    });
    let (code, out, err) = seen;
    assert_eq!(code, UNHEALTHY, "stdout: {out} stderr: {err}");
    assert_eq!(err.trim(), "charon: unhealthy: charond is stopping");
    assert_eq!(slow.join().expect("thread").expect("answered"), b"slow");
}

#[test]
fn without_charond_health_says_so_in_one_line() {
    let dir = TestDir::new();
    let mut cmd = Command::new(bin("charon"));
    cmd.arg("health").arg("--run-dir").arg(dir.join("run"));
    let (st, out, err) = run(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&err);
    assert_eq!(st.code(), Some(7), "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("charon: no charond is running on run dir "),
        "{err}"
    );
    let mut cmd = Command::new(bin("charon"));
    cmd.args(["health", "--live", "--run-dir"])
        .arg(dir.join("run"));
    let (st, _, err) = run(cmd, Duration::from_secs(60));
    assert_eq!(st.code(), Some(7), "{}", String::from_utf8_lossy(&err));
}
