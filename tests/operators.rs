//! Operators against a real charond: reload under load (nothing lost, no old
//! generation left), broken and removed files on reload, the control socket
//! with garbage, `charon stats` (table, JSON, Prometheus, /metrics over
//! HTTP), `charon ps`, `charon restart` ending a backoff, and the log file
//! reopened on SIGUSR1. Each test polls for conditions with deadlines.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use charon_client::{Client, ErrorKind, Request};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::daemon::Daemon;
use crate::util::load::Load;
use crate::util::{bin, free_port, http_get, run, wait_for, TestDir};

const KEY: &str = "system.echo.0.raw";
const LONG: Duration = Duration::from_secs(60);
/// The client loops' timeout: a reload must make clients wait, not fail.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn echo_conf(exec: &Path, extra: &str) -> String {
    format!("exec = \"{}\"\n{extra}\n", exec.display())
}

/// The example echo service, a second real program of the repo: built by
/// `cargo test`; built here if this run skipped examples.
fn echo_service() -> PathBuf {
    let path = bin("charon")
        .parent()
        .expect("target dir")
        .join("examples/echo_service");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", "echo_service"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let (st, _, err) = run(cmd, Duration::from_secs(600));
        assert!(
            st.success(),
            "building the example: {}",
            String::from_utf8_lossy(&err)
        );
    }
    path
}

/// Every old generation drains and goes: only the newest one's instances
/// remain, exactly the processes alive. Returns them (`charon ps`).
fn only_newest_generation(d: &Daemon) -> Vec<Value> {
    let mut last = Vec::new();
    wait_for(LONG, "only the newest generation left", || {
        let ps = d.ps();
        let gens: BTreeSet<u64> = ps.iter().filter_map(|i| i["generation"].as_u64()).collect();
        let mut pids: Vec<i32> = ps
            .iter()
            .filter_map(|i| i["pid"].as_i64().map(|p| p as i32))
            .collect();
        pids.sort_unstable();
        last = ps;
        gens.len() <= 1 && pids == d.instances()
    });
    last
}

/// The program an instance runs.
fn exe_of(pid: i64) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

#[test]
fn reload_under_load_loses_nothing_and_leaves_no_old_generation() {
    let programs = [bin("charon-echo"), echo_service()];
    let conf = |i: usize| {
        echo_conf(
            &programs[i % 2],
            "prestart-processes = true\nminimum-processes = 2\nmaximum-processes = 6",
        )
    };
    let d = Daemon::start_args(&[(KEY, &conf(0))], &[]);
    wait_for(LONG, "2 prestarted instances", || d.instances().len() == 2);
    let load = Load::echo(&d.run, KEY, 4, CALL_TIMEOUT);
    let began = Instant::now();
    for i in 1..=20 {
        load.wait_more(20, "requests flowing before the reload");
        d.write_conf(KEY, &conf(i));
        let (code, out, err) = d.charon(&["reload"]);
        assert_eq!(code, 0, "reload {i}: {out}{err}");
        assert!(
            out.contains(&format!("changed: {KEY}")),
            "reload {i}: {out}"
        );
    }
    load.wait_more(20, "requests after the last reload");
    let t = load.finish();
    let (served, failed) = (t.ok, t.total() - t.ok);
    eprintln!(
        "reload under load: {served} requests, 20 reloads in {:.2}s, {failed} failed",
        began.elapsed().as_secs_f64(),
    );
    assert_eq!(failed, 0, "of {served}: {:?}", t.errors);
    let last = only_newest_generation(&d);
    assert!(last.len() >= 2, "{last:?}");
    // The 20th config runs the first program again.
    let want = programs[0].canonicalize().unwrap();
    for i in &last {
        assert_eq!(exe_of(i["pid"].as_i64().unwrap()), want, "{i}");
    }
    let s = d.stats(KEY);
    assert_eq!(s["generation"], last[0]["generation"], "{s}");
    // The key's own count: the first config was generation 1.
    assert_eq!(s["generation"], 21, "{s}");
    assert!(
        s["exits"]["reload"].as_u64().unwrap_or(0) >= 20,
        "each old generation's instances drained: {s}"
    );
    // Statistics carried over all generations (the live instances' last
    // batches arrive within about a second).
    wait_for(LONG, "every served request counted", || {
        d.stats(KEY)["requests"].as_u64().unwrap_or(0) >= served
    });
}

#[test]
fn reload_of_an_on_demand_service_under_load_loses_nothing() {
    let programs = [bin("charon-echo"), echo_service()];
    let conf = |i: usize| {
        echo_conf(
            &programs[i % 2],
            "minimum-processes = 1\nmaximum-processes = 4",
        )
    };
    let d = Daemon::start_args(&[(KEY, &conf(0))], &[]);
    let load = Load::echo(&d.run, KEY, 4, CALL_TIMEOUT);
    for i in 1..=10 {
        load.wait_more(20, "requests flowing before the reload");
        d.write_conf(KEY, &conf(i));
        let (code, out, err) = d.charon(&["reload"]);
        assert_eq!(code, 0, "reload {i}: {out}{err}");
    }
    load.wait_more(20, "requests after the last reload");
    let t = load.finish();
    assert_eq!(t.ok, t.total(), "{:?}", t.errors);
    let last = only_newest_generation(&d);
    let want = programs[0].canonicalize().unwrap();
    for i in &last {
        assert_eq!(exe_of(i["pid"].as_i64().unwrap()), want, "{i}");
    }
}

/// A reload to a program that cannot run, on the defaults (on demand):
/// the new generation proves itself with one instance before it takes
/// over, so the reload fails with the reason and the running generation
/// keeps serving; no client is fast-failed.
#[test]
fn a_reload_to_a_broken_program_keeps_an_on_demand_service_serving() {
    let d = Daemon::start_args(&[(KEY, &echo_conf(&bin("charon-echo"), ""))], &[]);
    let load = Load::echo(&d.run, KEY, 2, CALL_TIMEOUT);
    load.wait_more(20, "requests flowing before the reload");
    d.write_conf(KEY, "exec = \"/bin/false\"\n");
    let (code, out, err) = d.charon(&["reload"]);
    assert_ne!(code, 0, "the reload must fail: {out}{err}");
    assert!(
        format!("{out}{err}").contains("exit 1"),
        "the reason: {out}{err}"
    );
    load.wait_more(20, "requests after the failed reload");
    let t = load.finish();
    assert_eq!(t.ok, t.total(), "{:?}; log:\n{}", t.errors, d.log());
    let s = d.stats(KEY);
    assert_eq!(s["generation"], 1, "the first generation serves: {s}");
}

#[test]
fn a_reload_during_a_reload_supersedes_the_pending_generation() {
    let echo = bin("charon-echo");
    // A generation that cannot come up before the test says so: its
    // instances wait for a file that is never made. (It used to sleep 2 s
    // and hope the second reload came sooner: under load it did not
    // always, and the slow generation swapped in instead.)
    let dir = TestDir::new();
    let gate = dir.join("never");
    let slow = format!(
        "exec = [\"/bin/sh\", \"-c\", \"while [ ! -e {} ]; do sleep 0.05; done; exec {}\"]\n\
         prestart-processes = true\nminimum-processes = 2\n",
        gate.display(),
        echo.display()
    );
    let fast = |min: u32| {
        echo_conf(
            &echo,
            &format!("prestart-processes = true\nminimum-processes = {min}"),
        )
    };
    let d = Daemon::start_args(&[(KEY, &fast(1))], &[]);
    wait_for(LONG, "1 instance", || d.instances().len() == 1);
    let load = Load::echo(&d.run, KEY, 2, CALL_TIMEOUT);
    load.wait_more(20, "requests flowing");
    // A change whose instances never come up, then another change while
    // it is pending.
    d.write_conf(KEY, &slow);
    d.proc.as_ref().unwrap().signal(Signal::SIGHUP);
    wait_for(LONG, "the slow generation pending", || {
        d.log().contains("starting generation")
    });
    d.write_conf(KEY, &fast(3));
    let (code, out, err) = d.charon(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("changed: {KEY}")), "{out}");
    // The log comes through a pipe and a reader thread: poll it.
    d.wait_log("the pending generation superseded", |l| {
        l.contains("superseded by a later reload")
    });
    load.wait_more(20, "requests after the reloads");
    let t = load.finish();
    assert_eq!(t.ok, t.total(), "{:?}", t.errors);
    let last = only_newest_generation(&d);
    assert!(last.len() >= 3, "the last config's minimum: {last:?}");
    let want = echo.canonicalize().unwrap();
    for i in &last {
        assert_eq!(exe_of(i["pid"].as_i64().unwrap()), want, "{i}");
    }
}

#[test]
fn reload_keeps_broken_and_unchanged_services_and_removes_deleted_ones() {
    let echo = bin("charon-echo");
    let a = "app.keep.0.raw";
    let b = "app.gone.0.raw";
    let prestart = "prestart-processes = true\nminimum-processes = 2";
    let d = Daemon::start_args(
        &[
            (a, &echo_conf(&echo, prestart)),
            (b, &echo_conf(&echo, prestart)),
        ],
        &[],
    );
    wait_for(LONG, "4 instances", || d.instances().len() == 4);
    let mut c = d.client();
    let pids_of = |key: &str| pids_of(&d, key);
    wait_for(LONG, "instances up", || {
        d.ps().iter().all(|i| i["state"] == "idle") && d.ps().len() == 4
    });
    let a_pids = pids_of(a);
    assert_eq!(a_pids.len(), 2);

    // A file that no longer parses: reported, and the service runs on.
    d.write_conf(b, "exec = [\nthis is not toml");
    let (code, out, err) = d.charon(&["reload"]);
    assert_ne!(code, 0, "a config error is a failed reload: {out}");
    assert!(out.contains("config error (previous config kept)"), "{out}");
    assert!(out.contains(&format!("{b}.toml")), "{out}");
    assert!(err.contains("config error"), "{err}");
    assert!(out.contains(&format!("unchanged: {a}")), "{out}");
    assert_eq!(
        c.call(b, b"still here").expect("old config serves"),
        b"still here"
    );
    assert_eq!(pids_of(a), a_pids, "an unchanged file keeps its instances");

    a_removed_file_stops_only_its_service(&d, &mut c, b, (a, &a_pids));
}

/// The pids of `key`'s instances, sorted (`charon ps`).
fn pids_of(d: &Daemon, key: &str) -> Vec<i64> {
    let mut p: Vec<i64> = d
        .ps()
        .iter()
        .filter(|i| i["key"] == key)
        .filter_map(|i| i["pid"].as_i64())
        .collect();
    p.sort_unstable();
    p
}

/// `removed`'s file deleted and a reload: its socket goes, clients get
/// NotFound, its instances drain and exit; `other` keeps its instances
/// (`other_pids`) and serves.
fn a_removed_file_stops_only_its_service(
    d: &Daemon,
    c: &mut Client,
    removed: &str,
    (other, other_pids): (&str, &[i64]),
) {
    std::fs::remove_file(d.conf.join(format!("{removed}.toml"))).unwrap();
    let (code, out, err) = d.charon(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("stopped: {removed}")), "{out}");
    let e = c.call(removed, b"x").expect_err("removed service");
    assert!(matches!(e.kind(), ErrorKind::NotFound { .. }), "{e}");
    wait_for(LONG, "the removed service's instances gone", || {
        d.instances().len() == 2
    });
    assert_eq!(
        pids_of(d, other),
        other_pids,
        "the other service is untouched"
    );
    assert_eq!(c.call(other, b"ok").unwrap(), b"ok");
    let (code, _, err) = d.charon(&["stats", removed]);
    assert_eq!(code, 4, "a removed key is not found: {err}");
}

#[test]
fn a_new_generation_that_cannot_start_leaves_the_old_one_serving() {
    let d = Daemon::start_args(
        &[(
            KEY,
            &echo_conf(
                &bin("charon-echo"),
                "prestart-processes = true\nminimum-processes = 1",
            ),
        )],
        &[],
    );
    wait_for(LONG, "1 instance", || d.instances().len() == 1);
    let before = d.instances();
    d.write_conf(
        KEY,
        "exec = \"/nonexistent/program\"\nprestart-processes = true\nminimum-processes = 1\n",
    );
    let (code, out, err) = d.charon(&["reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("could not apply") && err.contains(KEY),
        "the answer says which and why: {err}"
    );
    assert_eq!(d.client().call(KEY, b"old").unwrap(), b"old");
    wait_for(LONG, "only the old instance", || d.instances() == before);
}

#[test]
fn control_socket_answers_garbage_with_an_error_and_goes_on() {
    let d = Daemon::start_args(&[(KEY, &echo_conf(&bin("charon-echo"), ""))], &[]);
    let sock = d.run.join("charond.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    garbage_gets_an_error_and_the_connection_goes_on(&sock);
    a_burst_gets_one_answer_each_in_order(&d, &sock);

    // An endless line: an error answer, the connection closed, and the
    // manager still serves others.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let big = vec![b'x'; 100 * 1024];
    let _ = s.write_all(&big);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.contains("longer than"), "{answer:?}");
    let (code, out, _) = d.charon(&["stats"]);
    assert_eq!(code, 0);
    assert!(out.contains(KEY), "{out}");
}

/// On one connection: each kind of garbage gets an error answer, and
/// good requests after it are answered.
fn garbage_gets_an_error_and_the_connection_goes_on(sock: &Path) {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut ask = |line: &[u8]| -> Value {
        w.write_all(line).unwrap();
        let mut a = String::new();
        r.read_line(&mut a).unwrap();
        serde_json::from_str(&a).unwrap_or_else(|e| panic!("{a:?}: {e}"))
    };
    for junk in [
        &b"\xff\xfe garbage\n"[..],
        b"{\"cmd\":\"explode\"}\n",
        b"[1,2,3]\n",
        b"{\"cmd\":\"restart\"}\n",
    ] {
        let a = ask(junk);
        assert_eq!(a["ok"], false, "{a}");
        assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{a}");
    }
    let a = ask(b"{\"cmd\":\"stats\"}\n");
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["services"][0]["key"], KEY);
    let a = ask(b"{\"cmd\":\"version\"}\n");
    assert!(a["version"].is_string(), "{a}");
}

/// Many requests in one burst: one answer each, in order, while other
/// clients are still served.
fn a_burst_gets_one_answer_each_in_order(d: &Daemon, sock: &Path) {
    let burst = UnixStream::connect(sock).unwrap();
    burst.set_read_timeout(Some(LONG)).unwrap();
    let mut bw = burst.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..3000 {
            if i % 3 == 0 {
                all.extend_from_slice(b"{\"cmd\":\"stats\"}\n");
            } else {
                all.extend_from_slice(b"{\"cmd\":\"version\"}\n");
            }
        }
        bw.write_all(&all).unwrap();
        bw.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let (code, _, _) = d.charon(&["ps"]);
    assert_eq!(code, 0);
    let answers: Vec<String> = BufReader::new(burst).lines().map(Result::unwrap).collect();
    writer.join().unwrap();
    assert_eq!(answers.len(), 3000);
    for (i, a) in answers.iter().enumerate() {
        let v: Value = serde_json::from_str(a).unwrap();
        assert_eq!(v["ok"], true, "{a}");
        assert_eq!(
            v.get("services").is_some(),
            i % 3 == 0,
            "answer {i} in order: {a}"
        );
    }
}

/// Checks Prometheus text: every sample line is `name{labels} value` with a
/// valid name, and each metric has HELP and TYPE before its samples.
/// Returns the sample names with their labels.
fn parse_prometheus(text: &str) -> BTreeSet<String> {
    let mut helped = BTreeSet::new();
    let mut typed = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let name = p.next().unwrap();
            let kind = p.next().unwrap_or("");
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        let (series, name) = check_sample(line);
        // A histogram's samples are its name with a suffix.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|f| typed.contains(*f))
            .unwrap_or(name);
        assert!(
            helped.contains(family) && typed.contains(family),
            "HELP/TYPE before {line}"
        );
        samples.insert(series.to_string());
    }
    samples
}

/// Checks one Prometheus sample line, `name{labels} value`: a number, a
/// valid metric name, valid label names and quoted values. Returns the
/// series (name and labels) and the name.
fn check_sample(line: &str) -> (&str, &str) {
    assert!(
        !line.starts_with('#') && !line.is_empty(),
        "stray line {line:?}"
    );
    let (series, value) = line.rsplit_once(' ').expect("name and value");
    value
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("value of {line:?}"));
    let name = series.split('{').next().unwrap();
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "metric name {name:?}"
    );
    if let Some(labels) = series.strip_prefix(name) {
        if !labels.is_empty() {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("labels of {line:?}"));
            for pair in inner.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
    }
    (series, name)
}

/// Runs `promtool check metrics` (Prometheus' own linter) on `text` and
/// fails on any complaint. .ci/run installs promtool; a machine without it
/// skips the check with a loud message, except under CI.
fn promtool_accepts(text: &str) {
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "metrics"])
        .stdin(std::process::Stdio::piped());
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!("\n!!! promtool not found: the Prometheus exposition was NOT checked by promtool (.ci/run installs it) !!!\n");
            return;
        }
        Err(e) => panic!("unable to run promtool (.ci/run installs it): {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}: {said}\n{text}",
        out.status
    );
}

/// What `stats_match_what_happened_in_every_format` did to `KEY`: requests
/// served, faulted on purpose and crashed.
struct Happened {
    served: u64,
    faulted: u64,
    crashed: u64,
}

/// The service sent into a long backoff by the stats test.
const BAD: &str = "app.bad.0.raw";

#[test]
fn stats_match_what_happened_in_every_format() {
    let port = free_port();
    let d = start_for_stats(port);
    let mut c = d.client();
    let h = Happened {
        served: 10,
        faulted: 3,
        crashed: 2,
    };
    serve_fault_and_crash(&d, &mut c, &h);
    send_bad_into_backoff(&mut c);
    wait_for(LONG, "the figures", || {
        let s = d.stats(KEY);
        s["requests"] == h.served + h.faulted && s["exits"]["crashed"] == h.crashed
    });
    json_has_every_field_and_the_figures(&d.stats(KEY), &h);
    json_reports_the_backoff(&d);
    table_shows_the_backoff(&d);
    prometheus_matches_from_the_command_and_over_http(&d, port, &h);
    restart_ends_the_backoff(&d, &mut c);
    ps_lists_one_line_per_instance(&d);
}

/// charond with `KEY` and `BAD`, both prestarted, and metrics on `port`.
fn start_for_stats(port: u16) -> Daemon {
    let echo = bin("charon-echo");
    let addr = format!("127.0.0.1:{port}");
    Daemon::start_args(
        &[
            (
                KEY,
                &echo_conf(
                    &echo,
                    "prestart-processes = true\nminimum-processes = 1",
                ),
            ),
            (
                BAD,
                // A backoff longer than the test, so the figures read
                // below cannot move under a trial.
                &echo_conf(
                    &echo,
                    "prestart-processes = true\nminimum-processes = 1\nbackoff-initial = \"10m\"\nexec-failure-backoff = \"10m\"",
                ),
            ),
        ],
        &["--metrics-listen", &addr],
    )
}

/// Serves, faults and crashes requests on `KEY` as `h` says, the crashes
/// once every earlier request has been reported.
fn serve_fault_and_crash(d: &Daemon, c: &mut Client, h: &Happened) {
    for i in 0..h.served {
        let body = format!("ok {i}");
        assert_eq!(c.call(KEY, body.as_bytes()).unwrap(), body.as_bytes());
    }
    for _ in 0..h.faulted {
        let r = Request::new(KEY, b"f".to_vec()).context("echo.fault", "7:on purpose");
        let e = c.call_request(&r).expect_err("a fault");
        assert!(
            matches!(e.kind(), ErrorKind::ServiceFault { code: 7, .. }),
            "{e}"
        );
    }
    // Instances batch their reports (sent once a batch is a second old):
    // let every one arrive before the crashes, which take an unsent batch
    // with them (its requests then count without latency or outcome). The
    // requests may have been served by two instances: a sequential
    // client's next connection can come while the only instance finishes
    // the last request, and the pool grows. So the faults alone arriving
    // (from one instance) do not say the other's batch has.
    let reported = h.served + h.faulted;
    wait_for(LONG, "every request reported", || {
        let s = d.stats(KEY);
        s["requests"] == reported && s["latency_histogram"]["count"] == reported
    });
    for _ in 0..h.crashed {
        let r = Request::new(KEY, b"c".to_vec())
            .context("echo.signal", "11")
            .no_retry();
        assert!(c.call_request(&r).is_err());
    }
}

/// A backoff with its reason: `BAD`'s instance exits 3 on a request.
fn send_bad_into_backoff(c: &mut Client) {
    let r = Request::new(BAD, b"x".to_vec())
        .context("echo.log", "about to fail")
        .context("echo.exit", "3")
        .no_retry();
    assert!(c.call_request(&r).is_err());
}

/// The JSON stats of `KEY`: every documented field, with numbers where
/// numbers belong, and the figures of what happened.
fn json_has_every_field_and_the_figures(s: &Value, h: &Happened) {
    for f in [
        "key",
        "state",
        "instances",
        "requests",
        "faults",
        "retried",
        "queue_depth",
        "latency_us",
        "exits",
        "launches",
        "backoffs",
        "fast_failed",
        "backoff_remaining_s",
        "cpu_ms",
        "max_rss_kb",
        "last_exit",
    ] {
        assert!(s.get(f).is_some(), "field {f} missing: {s}");
    }
    let numbers = [
        ("instances", &["running", "busy", "idle", "max"][..]),
        ("latency_us", &["p50", "p90", "p99", "p999", "max"]),
        (
            "exits",
            &[
                "clean",
                "nonzero",
                "crashed",
                "unresponsive",
                "max_requests",
                "idle",
                "excess",
                "shutdown",
                "launch_failed",
            ],
        ),
    ];
    for (group, fields) in numbers {
        for f in fields {
            assert!(s[group][f].is_u64(), "{group}.{f}: {s}");
        }
    }
    for f in ["pid", "status", "signal", "reason", "stderr"] {
        assert!(s["last_exit"].get(f).is_some(), "last_exit.{f}: {s}");
    }
    json_has_the_figures(s, h);
}

/// The figures of `KEY`'s JSON stats: what `h` says happened.
fn json_has_the_figures(s: &Value, h: &Happened) {
    assert_eq!(s["faults"], h.faulted, "{s}");
    assert_eq!(s["retried"], 0, "{s}");
    assert_eq!(s["last_exit"]["signal"], 11, "{s}");
    assert_eq!(s["last_exit"]["reason"], "crashed", "{s}");
    assert!(s["latency_us"]["max"].as_u64().unwrap() > 0, "{s}");
    assert!(s["launches"].as_u64().unwrap() > h.crashed, "{s}");
    assert_eq!(s["state"], "running", "{s}");
}

/// The JSON stats of `BAD`: in backoff, with the exit that caused it.
fn json_reports_the_backoff(d: &Daemon) {
    wait_for(LONG, "the backoff", || d.stats(BAD)["state"] == "backoff");
    let b = d.stats(BAD);
    assert!(b["backoffs"].as_u64().unwrap() >= 1, "{b}");
    assert_eq!(b["exits"]["nonzero"], 1, "{b}");
    assert_eq!(b["last_exit"]["status"], 3, "{b}");
    assert_eq!(b["last_exit"]["reason"], "nonzero", "{b}");
    assert_eq!(
        b["last_exit"]["stderr"], "charon-echo: about to fail",
        "{b}"
    );
    assert!(b["backoff_remaining_s"].as_f64().unwrap() > 60.0, "{b}");
}

/// The table: a header, one aligned line per service, and charond's fd
/// headroom.
fn table_shows_the_backoff(d: &Daemon) {
    let (code, table, _) = d.charon(&["stats"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[3].starts_with("charond (pid ") && lines[3].contains("fds open of"),
        "{table}"
    );
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("REQUESTS"),
        "{table}"
    );
    let col = lines[0].find("STATE").unwrap();
    assert!(
        lines[1][col..].starts_with("backoff") || lines[2][col..].starts_with("backoff"),
        "{table}"
    );
}

/// Prometheus, from the command and over HTTP: the same valid series,
/// with the figures, and latency as a histogram.
fn prometheus_matches_from_the_command_and_over_http(d: &Daemon, port: u16, h: &Happened) {
    let reported = h.served + h.faulted;
    let (code, prom, err) = d.charon(&["stats", "--prometheus"]);
    assert_eq!(code, 0, "{err}");
    let from_cli = parse_prometheus(&prom);
    assert!(
        prom.contains(&format!(
            "charon_requests_total{{key=\"{KEY}\"}} {reported}"
        )),
        "{prom}"
    );
    assert!(
        prom.contains(&format!(
            "charon_exits_total{{key=\"{KEY}\",reason=\"crashed\"}} {}",
            h.crashed
        )),
        "{prom}"
    );
    let mut body = String::new();
    wait_for(LONG, "/metrics with the figures", || {
        let resp = http_get(port, "/metrics");
        body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        resp.split(' ').nth(1) == Some("200")
            && body.contains(&format!(
                "charon_requests_total{{key=\"{KEY}\"}} {reported}"
            ))
    });
    assert_eq!(parse_prometheus(&body), from_cli, "same series over HTTP");
    promtool_accepts(&prom);
    promtool_accepts(&body);
    latency_is_a_histogram_of_every_reported_request(d, &prom, reported);
    assert_eq!(http_get(port, "/other").split(' ').nth(1), Some("404"));
}

/// Latency as a histogram in seconds, one count per reported request:
/// all `reported` were reported before the crashes, whose requests report
/// nothing, so the figure no longer moves.
fn latency_is_a_histogram_of_every_reported_request(d: &Daemon, prom: &str, reported: u64) {
    let count = format!("charon_request_duration_seconds_count{{key=\"{KEY}\"}} ");
    let count_line = prom.lines().find(|l| l.starts_with(&count)).expect(&count);
    assert_eq!(
        count_line[count.len()..].parse::<u64>(),
        Ok(reported),
        "{prom}"
    );
    let s = d.stats(KEY);
    assert_eq!(s["latency_histogram"]["count"], reported, "{s}");
    let inf = format!("charon_request_duration_seconds_bucket{{key=\"{KEY}\",le=\"+Inf\"}} ");
    assert!(prom.contains(&inf), "{prom}");
    assert!(!prom.contains("quantile="), "{prom}");
}

/// `charon restart` ends `BAD`'s (10 minute) backoff at once, and names
/// an unknown service as such.
fn restart_ends_the_backoff(d: &Daemon, c: &mut Client) {
    let (code, out, err) = d.charon(&["restart", BAD]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backoff ended"), "{out}");
    wait_for(LONG, "the service out of backoff", || {
        let b = d.stats(BAD);
        b["state"] != "backoff" && b["instances"]["running"] == 1
    });
    assert_eq!(c.call(BAD, b"fixed").unwrap(), b"fixed");
    let (code, _, err) = d.charon(&["restart", "app.none.0.raw"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no service"), "{err}");
}

/// ps: one line per instance, with its state and served count.
fn ps_lists_one_line_per_instance(d: &Daemon) {
    let (code, ps, _) = d.charon(&["ps", KEY]);
    assert_eq!(code, 0);
    assert!(ps.lines().next().unwrap().starts_with("PID"), "{ps}");
    assert!(ps.lines().skip(1).all(|l| l.contains(KEY)), "{ps}");
    assert_eq!(ps.lines().count(), 2, "{ps}");
}

#[test]
fn log_file_is_reopened_on_sigusr1_and_sighup_reloads() {
    let dir = TestDir::new();
    let log = dir.join("charond.log");
    let d = Daemon::start_args(
        &[(KEY, &echo_conf(&bin("charon-echo"), ""))],
        &["--log-file", log.to_str().unwrap()],
    );
    wait_for(LONG, "the log file", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("started"))
    });
    assert!(
        !d.log().contains("started"),
        "stderr is not the log any more"
    );
    let rotated = dir.join("charond.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    d.proc.as_ref().unwrap().signal(Signal::SIGUSR1);
    wait_for(LONG, "the new log file", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("log reopened"))
    });
    // SIGHUP reloads as `charon reload` does, and says so in the log.
    d.proc.as_ref().unwrap().signal(Signal::SIGHUP);
    wait_for(LONG, "the reload logged in the new file", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reload done"))
    });
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("reload done"));
}
