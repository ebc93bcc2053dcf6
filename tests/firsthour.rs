//! The first hour of a new user, against the real binaries: the command
//! line's rough edges (bare `charon`, invalid keys, a missing service, a
//! key served by a wildcard, `send` on a terminal), what the messages say
//! (a panic, a program that is not there yet), charond's defaults (its run
//! dir, a failed metrics bind, generation numbers). Each test polls for
//! conditions with deadlines.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use charon_client::ErrorKind;
use serde_json::Value;

use crate::util::daemon::{control_answers, Daemon};
use crate::util::{bin, run, wait_for, Proc, TestDir};

const KEY: &str = "system.echo.0.raw";
const LONG: Duration = Duration::from_secs(60);

fn echo_conf(extra: &str) -> String {
    format!("exec = \"{}\"\n{extra}\n", bin("charon-echo").display())
}

/// Runs `charon ARGS` with `CHARON_RUN_DIR` set: (exit code, stdout,
/// stderr).
fn charon_in(run_dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("charon"));
    cmd.args(args).env("CHARON_RUN_DIR", run_dir);
    let (st, out, err) = run(cmd, LONG);
    (
        st.code().unwrap_or(-1),
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[test]
fn bare_charon_prints_the_help_as_a_usage_error() {
    let dir = TestDir::new();
    let (code, out, err) = charon_in(dir.path(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("Usage: charon <COMMAND>"), "{err}");
    assert!(err.contains("send") && err.contains("stats"), "{err}");
    assert!(
        !err.contains("Pluton-style"),
        "not the package blurb: {err}"
    );
}

#[test]
fn an_invalid_key_is_a_usage_error_for_every_command() {
    // No manager runs: a command that asked one would fail otherwise (7).
    let dir = TestDir::new();
    for args in [
        &["send", "no-dots", "x"][..],
        &["ping", "no-dots"],
        &["lookup", "no-dots"],
        &["stats", "no-dots"],
        &["ps", "no-dots"],
        &["restart", "no-dots"],
    ] {
        let (code, _, err) = charon_in(dir.path(), args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("invalid service key"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    // A wildcard is a valid key for the manager's commands: it gets as far
    // as asking (and finds no manager).
    let (code, _, err) = charon_in(dir.path(), &["stats", "text..1.raw"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("no charond"), "{err}");
}

#[test]
fn ping_at_a_missing_service_says_only_why() {
    let d = Daemon::start(&[(KEY, &echo_conf(""))]);
    let (code, out, err) = d.charon(&["ping", "-c", "10", "app.none.0.raw"]);
    assert_eq!(code, 4, "{err}");
    assert!(out.is_empty(), "no summary of nothing but failures: {out}");
    assert!(
        err.starts_with("charon: no service app.none.0.raw"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // And a working ping still sums up.
    let (code, out, err) = d.charon(&["ping", "-c", "5"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("5 requests, 0 errors"), "{out}");
}

#[test]
fn restart_of_a_key_served_by_a_wildcard_names_the_wildcard() {
    let d = Daemon::start(&[("text..1.raw", &echo_conf(""))]);
    let (code, _, err) = d.charon(&["restart", "text.reverse.1.raw"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("the wildcard \"text..1.raw\" serves it")
            && err.contains("charon restart text..1.raw"),
        "{err}"
    );
    let (code, _, err) = d.charon(&["restart", "text..1.raw"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = d.charon(&["restart", "mail.send.1.raw"]);
    assert_eq!(code, 4, "{err}");
    assert!(!err.contains("wildcard"), "{err}");
}

/// A pseudo-terminal: (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    let p = nix::pty::openpty(None, None).expect("openpty");
    (p.master, p.slave)
}

#[test]
fn send_ends_its_line_on_a_terminal_only() {
    let d = Daemon::start(&[(KEY, &echo_conf(""))]);
    let (master, slave) = pty();
    let mut cmd = Command::new(bin("charon"));
    cmd.args(["send", "--run-dir"])
        .arg(&d.run)
        .args([KEY, "hello"])
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped());
    let mut p = Proc::spawn("charon send", cmd);
    let status = p.wait_timeout(LONG);
    assert!(status.success());
    drop(p);
    // The slave is closed now (the child is gone and our copy moved into
    // the Command, dropped with it): read what is buffered.
    let mut seen = Vec::new();
    let mut f = std::fs::File::from(master);
    let mut buf = [0u8; 64];
    // EIO once the buffer is drained and no slave is open.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    // The terminal turns "\n" into "\r\n".
    assert_eq!(seen, b"hello\r\n");
    // In a pipe, exactly the body.
    let (code, out, err) = d.charon(&["send", KEY, "hello"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello");
}

#[test]
fn a_panic_is_the_last_stderr_line_shown_by_stats() {
    let d = Daemon::start(&[(KEY, &echo_conf(""))]);
    let (code, _, err) = d.charon(&["send", "-C", "echo.panic=out of cheese", KEY, "x"]);
    assert_ne!(code, 0, "{err}");
    let mut last = Value::Null;
    wait_for(LONG, "the exit in stats", || {
        last = d.stats(KEY)["last_exit"].clone();
        last.is_object()
    });
    let line = last["stderr"].as_str().unwrap_or_default();
    assert!(
        line.starts_with("system.echo.0.raw: panicked at src/bin/charon-echo/main.rs:")
            && line.ends_with(": out of cheese"),
        "{last}"
    );
    assert_eq!(last["description"], "exit 101 (nonzero)", "{last}");
    let log = d.log();
    assert!(
        !log.contains("RUST_BACKTRACE"),
        "the panic is one line: {log}"
    );
}

/// The first hour as the issue met it: the program is not there yet, the
/// client is told which path is missing, the program appears, and `charon
/// restart` ends the backoff at once instead of after it runs out.
#[test]
fn a_missing_program_is_named_and_restart_ends_the_backoff_at_once() {
    let dir = TestDir::new();
    let program = dir.join("bin/charon-echo");
    // A backoff far longer than the test's patience, so that only the
    // restart can end it (the test is about ending a backoff).
    let d = Daemon::start(&[(
        KEY,
        &format!(
            "exec = \"{}\"\nbackoff-initial = \"10m\"\nexec-failure-backoff = \"10m\"\n",
            program.display()
        ),
    )]);
    let mut c = d.client();
    let err = c.call(KEY, b"hello").expect_err("no program yet");
    // The first connect waited for the launch; the failure may reach the
    // client as a closed connection or, once in backoff, as Unavailable.
    let reason = match err.into_kind() {
        ErrorKind::Unavailable { reason, .. } => reason,
        _ => match c.call(KEY, b"hello").expect_err("in backoff").into_kind() {
            ErrorKind::Unavailable { reason, .. } => reason,
            other => panic!("expected Unavailable, got {other:?}"),
        },
    };
    assert!(
        reason.contains(&format!(
            "unable to exec {}: No such file or directory",
            program.display()
        )),
        "{reason}"
    );
    assert!(
        reason.ends_with(&format!(
            "once fixed, `charon restart {KEY}` retries at once"
        )),
        "{reason}"
    );
    std::fs::create_dir_all(program.parent().expect("dir")).expect("mkdir");
    std::os::unix::fs::symlink(bin("charon-echo"), &program).expect("symlink");
    let (code, out, err) = d.charon(&["restart", KEY]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backoff ended"), "{out}");
    let mut answer = Vec::new();
    wait_for(LONG, "an answer after the restart", || {
        c.call(KEY, b"hello").is_ok_and(|a| {
            answer = a;
            true
        })
    });
    assert_eq!(answer, b"hello");
}

#[test]
fn every_service_starts_at_generation_1() {
    let keys = ["a.one.0.raw", "b.two.0.raw", "c.three.0.raw"];
    let conf = echo_conf("prestart-processes = true\nminimum-processes = 1");
    let d = Daemon::start(&keys.map(|k| (k, conf.as_str())));
    wait_for(LONG, "one instance each", || d.ps().len() == 3);
    for i in d.ps() {
        assert_eq!(i["generation"], 1, "{i}");
    }
    let (code, out, _) = d.charon(&["ps", "c.three.0.raw"]);
    assert_eq!(code, 0);
    let row = out.lines().nth(1).expect("a row");
    assert_eq!(row.split_whitespace().nth(2), Some("1"), "{out}");
}

#[test]
fn charond_takes_its_run_dir_from_charon_run_dir_as_the_clients_do() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), echo_conf(""));
    let run_dir = dir.join("run");
    let mut cmd = Command::new(bin("charond"));
    cmd.arg("--config-dir")
        .arg(&conf)
        .env("CHARON_RUN_DIR", &run_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("charond", cmd);
    wait_for(LONG, "charond on $CHARON_RUN_DIR", || {
        control_answers(&run_dir)
    });
    assert!(run_dir.join(format!("{KEY}.sock")).exists());
    let (code, out, err) = charon_in(&run_dir, &["stats", KEY]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(KEY), "{out}");
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(p.wait_timeout(LONG).success());
}

#[test]
fn a_failed_metrics_bind_leaves_no_control_socket() {
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), echo_conf(""));
    let run_dir = dir.join("run");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut cmd = Command::new(bin("charond"));
    cmd.arg("--config-dir")
        .arg(&conf)
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["--metrics-listen", &addr]);
    let (st, _, err) = run(cmd, LONG);
    let err = String::from_utf8_lossy(&err);
    assert_eq!(st.code(), Some(100), "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(!run_dir.join("charond.sock").exists(), "{err}");
    // So that `charon` says no manager runs, not that one does not answer.
    let (code, _, err) = charon_in(&run_dir, &["stats"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("no charond is running"), "{err}");
}

/// A config file with errors at start-up does not vanish: its key is
/// listed as broken with `FILE:LINE: message`, its clients are told the
/// config is broken (naming the file) instead of "no such service", and a
/// reload that finds it fixed starts the service.
#[test]
fn a_broken_config_file_is_listed_and_its_clients_told() {
    let good = echo_conf("");
    let bad = format!("{good}maximum-processes = \"many\"\n");
    let dir = TestDir::new();
    let conf = dir.mkdir("conf");
    dir.write(&format!("conf/{KEY}.toml"), &good);
    let bad_file = dir.write(&format!("conf/{BROKEN}.toml"), &bad);
    let run_dir = dir.join("run");
    let d = Daemon::start_in(dir, conf, run_dir);
    d.wait_log("the start line", |l| {
        l.contains("started (1 service(s), 1 broken config file(s)")
    });
    let log = d.log();
    let load_line = log
        .lines()
        .find(|l| l.contains("unable to load config"))
        .unwrap_or_default();
    assert!(
        load_line.contains(" warn: unable to load config: "),
        "{log}"
    );
    stats_and_ps_list_it_with_file_line_and_message(&d, &bad_file);
    let mut c = clients_are_told_with_the_file_named(&d, &bad_file);

    // Fixed and reloaded: it runs.
    d.write_conf(BROKEN, &good);
    let (code, out, err) = d.charon(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("started: {BROKEN}")), "{out}");
    assert_eq!(c.call(BROKEN, b"fixed").expect("runs now"), b"fixed");
    assert_ne!(d.stats(BROKEN)["state"], "broken");

    // Broken again by a reload while it runs: it keeps its config.
    d.write_conf(BROKEN, &bad);
    let (code, _, _) = d.charon(&["reload"]);
    assert_eq!(code, 7);
    assert_eq!(c.call(BROKEN, b"still").expect("old config"), b"still");
    assert_ne!(d.stats(BROKEN)["state"], "broken", "it runs");
    d.write_conf(BROKEN, &good);

    a_new_broken_file_is_listed_until_removed(&d, &bad);
}

/// The service whose config file is broken in
/// `a_broken_config_file_is_listed_and_its_clients_told`.
const BROKEN: &str = "app.bad.0.raw";

/// stats (JSON, table, Prometheus) and ps list `BROKEN` as broken, with the
/// file, the line and the message.
fn stats_and_ps_list_it_with_file_line_and_message(d: &Daemon, bad_file: &std::path::Path) {
    let s = d.stats(BROKEN);
    assert_eq!(s["state"], "broken", "{s}");
    let first = s["config_errors"][0].as_str().unwrap_or_default();
    assert!(
        first.starts_with(&format!("{}:3: maximum-processes: ", bad_file.display())),
        "{s}"
    );
    let (code, table, _) = d.charon(&["stats"]);
    assert_eq!(code, 0);
    let row = table
        .lines()
        .find(|l| l.starts_with(BROKEN))
        .unwrap_or_default();
    assert!(
        row.contains("broken") && row.contains("config error: "),
        "{table}"
    );
    let (code, prom, _) = d.charon(&["stats", "--prometheus"]);
    assert_eq!(code, 0);
    assert!(
        prom.contains(&format!(
            "charon_state{{key=\"{BROKEN}\",state=\"broken\"}} 1"
        )),
        "{prom}"
    );
    let (code, ps, err) = d.charon(&["ps"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        ps.contains(&format!(
            "{BROKEN}: broken, not running: config file {}",
            bad_file.display()
        )),
        "{ps}"
    );
}

/// `BROKEN`'s clients are told at once, with the file named; `charon send`
/// exits 3. Returns the client.
fn clients_are_told_with_the_file_named(
    d: &Daemon,
    bad_file: &std::path::Path,
) -> charon_client::Client {
    let mut c = d.client();
    match c.call(BROKEN, b"x").expect_err("broken").into_kind() {
        ErrorKind::Unavailable { reason, .. } => {
            assert!(reason.contains(&bad_file.display().to_string()), "{reason}");
            assert!(reason.contains("charon reload"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let (code, _, err) = d.charon(&["send", BROKEN, "x"]);
    assert_eq!(code, 3, "{err}");
    c
}

/// A new broken file (`bad`) at a reload is listed too; removing it
/// unlists it and removes its socket.
fn a_new_broken_file_is_listed_until_removed(d: &Daemon, bad: &str) {
    const NEW: &str = "app.new.0.raw";
    d.write_conf(NEW, bad);
    let (code, _, _) = d.charon(&["reload"]);
    assert_eq!(code, 7);
    assert_eq!(d.stats(NEW)["state"], "broken");
    assert!(d.run.join(format!("{NEW}.sock")).exists());
    let (code, _, err) = d.charon(&["restart", NEW]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("its config file") && err.contains("has errors"),
        "{err}"
    );
    std::fs::remove_file(d.conf.join(format!("{NEW}.toml"))).expect("rm");
    let (code, out, err) = d.charon(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = d.charon(&["stats", NEW]);
    assert_eq!(code, 4);
    assert!(!d.run.join(format!("{NEW}.sock")).exists());
}
