//! The client library and the `charon` command line end to end, against
//! accept-mode `charon-echo` processes (and, for answers an echo cannot give,
//! small servers written here with the protocol crate).
//!
//! Protocol-level failures in isolation are tested in
//! `client/tests/fake_servers.rs`; this file checks the pieces together.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use charon_client::{Client, ErrorKind, Limits, Request};
use charon_protocol::{decode_request, encode_response, Fill, FrameBuf, FrameKind, Response};

use crate::util::{bin, run, wait_for, Proc, TestDir};

const LONG: Duration = Duration::from_secs(30);

/// An accept-mode `charon-echo` serving `key` in `run_dir`, ready when
/// returned.
fn echo(run_dir: &Path, key: &str) -> Proc {
    let sock = run_dir.join(format!("{key}.sock"));
    let mut cmd = Command::new(bin("charon-echo"));
    cmd.env("CHARON_ACCEPT_SOCKET", &sock);
    let p = Proc::spawn(key, cmd);
    wait_until_listening(&sock);
    p
}

fn wait_until_listening(sock: &Path) {
    wait_for(LONG, &format!("{} to listen", sock.display()), || {
        UnixStream::connect(sock).is_ok()
    });
}

fn client(run_dir: &Path, timeout: Duration) -> Client {
    Client::builder()
        .run_dir(run_dir)
        .timeout(timeout)
        .name("client-test")
        .build()
        .expect("client")
}

/// `charon ARGS...` with the run dir given, run to completion.
fn charon(run_dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> (i32, Vec<u8>, String) {
    let mut cmd = Command::new(bin("charon"));
    cmd.args(args).env("CHARON_RUN_DIR", run_dir);
    let (status, out, err) = match stdin {
        None => run(cmd, LONG),
        Some(input) => {
            let dir = TestDir::new();
            let f = dir.write("stdin", input);
            cmd.stdin(std::fs::File::open(f).expect("stdin file"));
            run_with_stdin(cmd)
        }
    };
    (
        status.code().unwrap_or(-1),
        out,
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Like `util::run`, but keeps the stdin the command was given (the
/// harness's `Proc::spawn` would replace it with /dev/null).
fn run_with_stdin(mut cmd: Command) -> (std::process::ExitStatus, Vec<u8>, Vec<u8>) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn charon");
    // wait_with_output reaps the child; the command always ends (its own
    // timeouts bound it).
    let out = child.wait_with_output().expect("charon output");
    (out.status, out.stdout, out.stderr)
}

#[test]
fn echo_bodies_of_0_1k_and_8mib() {
    let dir = TestDir::new();
    let _e = echo(dir.path(), "system.echo.0.raw");
    let mut c = client(dir.path(), LONG);
    for size in [0usize, 1024, 8 << 20] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let got = c.call("system.echo.0.raw", &body).expect("echo");
        assert_eq!(got.len(), size);
        assert!(got == body, "body of {size} bytes came back different");
    }
}

#[test]
fn a_timeout_past_the_clock_waits_as_long_as_the_service_takes() {
    // Duration::MAX, for "no limit": a call and a batch under it are
    // answered (adding it to the clock used to panic).
    let dir = TestDir::new();
    let _echo = echo(dir.path(), "system.echo.0.raw");
    let mut c = client(dir.path(), Duration::MAX);
    assert_eq!(c.call("system.echo.0.raw", b"call").expect("call"), b"call");
    let mut batch = c.batch();
    let id = batch
        .add(Request::new("system.echo.0.raw", b"batch".to_vec()))
        .expect("add");
    batch.wait_all();
    assert_eq!(batch.take(id).expect("finished").expect("echo"), b"batch");
    batch.set_timeout(Duration::MAX);
}

#[test]
fn batch_of_64_across_4_echoes_runs_in_parallel() {
    let dir = TestDir::new();
    let keys: Vec<String> = (0..4).map(|i| format!("test.e{i}.0.raw")).collect();
    let _echoes: Vec<Proc> = keys.iter().map(|k| echo(dir.path(), k)).collect();
    let mut c = client(dir.path(), LONG);
    let mut batch = c.batch();
    let t = Instant::now();
    let ids: Vec<_> = (0..64u32)
        .map(|i| {
            let req = Request::new(keys[i as usize % 4].clone(), i.to_be_bytes().to_vec())
                .context("echo.sleep-ms", "100");
            batch.add(req).expect("add")
        })
        .collect();
    batch.wait_all();
    let took = t.elapsed();
    for (i, id) in ids.into_iter().enumerate() {
        let got = batch.take(id).expect("finished").expect("echo");
        assert_eq!(got, (i as u32).to_be_bytes());
    }
    // One after the other, the sleeps alone take 6.4 s; four echoes in
    // parallel need about 1.6 s.
    assert!(took < Duration::from_millis(3200), "took {took:?}");
}

/// Relays each connection on `front` to an echo on `back` (restarted by a
/// shell loop after each exit), recording the attempt number of every
/// request. A backend that closes without answering makes the relay close
/// the client's connection the same way.
struct Relay {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(front: &Path, back: PathBuf) -> Relay {
        let listener = UnixListener::bind(front).expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => relay_one(conn, &back, &a),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Relay {
            stop,
            attempts,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay_one(mut conn: UnixStream, back: &Path, attempts: &Mutex<Vec<u8>>) {
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(LONG)).expect("timeout");
    let limits = Limits::default();
    let mut req = FrameBuf::new(FrameKind::Request, limits.max_request_payload());
    if !matches!(req.read_from(&mut conn), Ok(Fill::Complete)) {
        return;
    }
    let view = decode_request(req.payload(), &limits).expect("request from the client");
    attempts.lock().expect("lock").push(view.head.attempt);
    let deadline = Instant::now() + LONG;
    loop {
        let mut backend = loop {
            match UnixStream::connect(back) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("backend never came back: {e}"),
            }
        };
        backend.set_read_timeout(Some(LONG)).expect("timeout");
        let mut resp = FrameBuf::new(FrameKind::Response, limits.max_response_payload());
        if backend.write_all(req.frame()).is_ok() {
            if let Ok(Fill::Complete) = resp.read_from(&mut backend) {
                let _ = conn.write_all(resp.frame());
                return;
            }
        }
        // The backend closed silently. A first attempt passes that on (it is
        // the death under test); a retry stands for "another instance", so
        // it waits for the restarted echo: the connect above can land in
        // the backlog of the echo that is still exiting.
        if view.head.attempt == 1 || Instant::now() >= deadline {
            return;
        }
    }
}

#[test]
fn die_once_is_retried_as_attempt_2_and_answered() {
    let dir = TestDir::new();
    let back = dir.join("backend.sock");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"while :; do "$0"; done"#)
        .arg(bin("charon-echo"))
        .env("CHARON_ACCEPT_SOCKET", &back);
    let _loop = Proc::spawn("echo loop", cmd);
    wait_until_listening(&back);
    let relay = Relay::start(&dir.join("test.die.0.raw.sock"), back);
    let flag = dir.join("died");
    let mut c = client(dir.path(), LONG);
    let req = Request::new("test.die.0.raw", b"still here".to_vec())
        .context("echo.die-once", flag.to_str().expect("utf-8 path"));
    let got = c.call_request(&req).expect("answered after one retry");
    assert_eq!(got, b"still here");
    assert!(flag.exists(), "the first attempt did not die");
    assert_eq!(*relay.attempts.lock().expect("lock"), [1, 2]);
}

#[test]
fn die_once_with_no_retry_is_disconnected() {
    let dir = TestDir::new();
    let _e = echo(dir.path(), "test.die.0.raw");
    let flag = dir.join("died");
    let mut c = client(dir.path(), LONG);
    let req = Request::new("test.die.0.raw", b"x".to_vec())
        .context("echo.die-once", flag.to_str().expect("utf-8 path"))
        .no_retry();
    let err = c.call_request(&req).expect_err("no retry");
    assert!(
        matches!(err.kind(), ErrorKind::Disconnected { received: 0 }),
        "{err}"
    );
    assert!(flag.exists());
}

/// Accepts one connection on `path` and reads its request, then closes the
/// listening socket (the path stays, with nobody listening on it) and the
/// connection, without answering: an instance that died mid-request with
/// nobody left behind it.
fn vanishing_server(path: &Path) -> JoinHandle<()> {
    use std::io::Read;
    let listener = UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut head = [0u8; 8];
        conn.read_exact(&mut head).expect("the request's header");
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let mut payload = vec![0u8; len as usize];
        conn.read_exact(&mut payload)
            .expect("the request's payload");
        drop(listener);
        drop(conn);
    })
}

/// The first attempt is written, its instance dies without answering, and
/// nobody listens when the retry comes: the request was written to a
/// service that existed, so the caller hears Disconnected, never NotFound,
/// from a call and from a batch alike.
#[test]
fn a_retry_that_finds_nobody_listening_is_disconnected_not_not_found() {
    let dir = TestDir::new();
    for batch in [false, true] {
        let key = "test.gone.0.raw";
        let path = dir.join(format!("{key}.sock"));
        let _ = std::fs::remove_file(&path);
        let server = vanishing_server(&path);
        let mut c = client(dir.path(), LONG);
        let req = Request::new(key, b"x".to_vec());
        let err = if batch {
            let mut b = c.batch();
            let id = b.add(req).expect("added");
            b.wait_all();
            b.take(id).expect("a result").expect_err("nobody answers")
        } else {
            c.call_request(&req).expect_err("nobody answers")
        };
        assert!(
            matches!(err.kind(), ErrorKind::Disconnected { received: 0 }),
            "batch {batch}: {err}"
        );
        server.join().expect("server thread");
    }
}

#[test]
fn faults_pass_through_with_code_and_text() {
    let dir = TestDir::new();
    let _e = echo(dir.path(), "system.echo.0.raw");
    let mut c = client(dir.path(), LONG);
    let req = Request::new("system.echo.0.raw", b"x".to_vec())
        .context("echo.fault", "123:no such account");
    let err = c.call_request(&req).expect_err("fault");
    assert!(err.is_service_fault());
    assert!(
        matches!(err.kind(), ErrorKind::ServiceFault { code: 123, text } if text == "no such account"),
        "{err}"
    );
    // The echo is still there for the next request.
    assert_eq!(c.call("system.echo.0.raw", b"y").expect("echo"), b"y");
}

#[test]
fn slow_service_times_out_within_the_deadline() {
    let dir = TestDir::new();
    let _e = echo(dir.path(), "system.echo.0.raw");
    let mut c = client(dir.path(), Duration::from_millis(300));
    let req = Request::new("system.echo.0.raw", Vec::new()).context("echo.sleep-ms", "5000");
    let t = Instant::now();
    let err = c.call_request(&req).expect_err("timeout");
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// `Client::call` leaves a kept connection in blocking mode (it waits in a
/// blocking read); a batch that takes it back must not block on it.
#[test]
fn a_connection_kept_by_call_does_not_block_a_batch() {
    let dir = TestDir::new();
    let _e = echo(dir.path(), "system.echo.0.raw");
    let mut c = client(dir.path(), LONG);
    let keep = Request::new("system.echo.0.raw", b"one".to_vec()).keep_affinity();
    assert_eq!(c.call_request(&keep).expect("first"), b"one");
    assert!(c.has_affinity("system.echo.0.raw"));
    let mut batch = c.batch();
    let slow = Request::new("system.echo.0.raw", b"two".to_vec())
        .need_affinity()
        .context("echo.sleep-ms", "3000");
    let t = Instant::now();
    let id = batch.add(slow).expect("add");
    // Sending never waits for the answer: on a blocking socket the batch's
    // first read would have taken the service's 3 s.
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "add took {:?}",
        t.elapsed()
    );
    batch.wait_all();
    assert_eq!(batch.take(id).expect("finished").expect("answered"), b"two");
}

#[test]
fn oversize_request_is_refused_before_sending() {
    let dir = TestDir::new();
    let _e = echo(dir.path(), "system.echo.0.raw");
    let limits = Limits {
        max_request_body: 1 << 20,
        ..Limits::default()
    };
    let mut c = Client::builder()
        .run_dir(dir.path())
        .limits(limits)
        .build()
        .expect("client");
    let err = c
        .call("system.echo.0.raw", &vec![0u8; (1 << 20) + 1])
        .expect_err("too large");
    assert!(matches!(err.kind(), ErrorKind::InvalidRequest(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("1048577") && msg.contains("limit of 1048576 bytes"),
        "{msg}"
    );
    let big_context =
        Request::new("system.echo.0.raw", Vec::new()).context("k", vec![0u8; 65 * 1024]);
    let err = c.call_request(&big_context).expect_err("context too large");
    assert!(matches!(err.kind(), ErrorKind::InvalidRequest(_)), "{err}");
    assert_eq!(c.call("system.echo.0.raw", b"ok").expect("echo"), b"ok");
}

#[test]
fn unknown_key_is_not_found_and_wildcard_serves_any_function() {
    let dir = TestDir::new();
    let _e = echo(dir.path(), "test..0.raw");
    let mut c = client(dir.path(), LONG);
    assert_eq!(c.call("test.anything.0.raw", b"w").expect("wildcard"), b"w");
    let err = c
        .call("test.anything.1.raw", b"w")
        .expect_err("other version");
    assert!(matches!(err.kind(), ErrorKind::NotFound { .. }), "{err}");
    let err = c.call("other.thing.0.raw", b"").expect_err("unknown");
    assert!(matches!(err.kind(), ErrorKind::NotFound { .. }), "{err}");
}

/// A server that answers every connection with one fixed response (or
/// bytes), without reading the request; stops on drop.
struct Fixed {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Fixed {
    fn start(path: &Path, wire: Vec<u8>) -> Fixed {
        let listener = UnixListener::bind(path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(&wire);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Fixed {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Fixed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wire(resp: &Response<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_response(resp, &Limits::default(), &mut out).expect("encode");
    out
}

#[test]
fn cli_send_exit_statuses() {
    let dir = TestDir::new();
    let d = dir.path();
    let _e = echo(d, "system.echo.0.raw");
    let _gone = echo(d, "test.gone.0.raw");
    let _unavail = Fixed::start(
        &d.join("test.down.0.raw.sock"),
        wire(&Response::Unavailable {
            retry_after: 5,
            reason: "last exit: status 3",
        }),
    );
    let _garbage = Fixed::start(
        &d.join("test.junk.0.raw.sock"),
        b"SSH-2.0-hello\r\n".to_vec(),
    );
    send_answers_on_stdout_and_a_fault_exits_1(d);
    // Usage errors: status 2 and a one-line message.
    for args in [
        &["send", "--bogus", "system.echo.0.raw"][..],
        &["send", "bad.key.01.raw", "x"],
        &["send", "-C", "charon.attempt=2", "system.echo.0.raw", "x"],
        &["send", "-t", "0", "system.echo.0.raw", "x"],
    ] {
        let (code, _, err) = charon(d, args, None);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    each_failure_exits_with_its_own_status(d);
}

/// Each failure exits with its own status, and stderr says what it was.
fn each_failure_exits_with_its_own_status(d: &Path) {
    let failures: [(&[&str], i32, &[&str]); 5] = [
        (
            &["send", "test.down.0.raw", "x"],
            3,
            &["unavailable", "retry after 5", "status 3"],
        ),
        (&["send", "test.none.0.raw", "x"], 4, &[]),
        (
            &[
                "send",
                "-t",
                "0.3",
                "-C",
                "echo.sleep-ms=5000",
                "system.echo.0.raw",
            ],
            5,
            &["300 ms"],
        ),
        (
            &[
                "send",
                "--no-retry",
                "-C",
                "echo.exit=0",
                "test.gone.0.raw",
                "x",
            ],
            6,
            &[],
        ),
        (
            &["send", "test.junk.0.raw", "x"],
            7,
            &["not a charon frame"],
        ),
    ];
    for (args, status, says) in failures {
        let (code, _, err) = charon(d, args, None);
        assert_eq!(code, status, "{err}");
        for s in says {
            assert!(err.contains(s), "{err}");
        }
    }
}

/// `charon send` prints the answer alone on stdout (from an argument or
/// stdin) and exits 0; a service fault exits 1 with the fault on stderr.
fn send_answers_on_stdout_and_a_fault_exits_1(d: &Path) {
    let (code, out, err) = charon(d, &["send", "system.echo.0.raw", "hello"], None);
    assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
    assert!(err.is_empty(), "{err}");

    let (code, out, err) = charon(d, &["send", "system.echo.0.raw"], Some(b"from stdin"));
    assert_eq!((code, out.as_slice()), (0, &b"from stdin"[..]), "{err}");

    let (code, _, err) = charon(
        d,
        &[
            "send",
            "-C",
            "echo.fault=42:bad input",
            "system.echo.0.raw",
            "x",
        ],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim_end(), "fault 42: bad input");
}

#[test]
fn cli_send_overloaded_is_status_3() {
    use nix::sys::socket::{
        bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let dir = TestDir::new();
    let path = dir.join("test.busy.0.raw.sock");
    let listener = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = UnixAddr::new(&path).expect("addr");
    bind(listener.as_raw_fd(), &addr).expect("bind");
    listen(&listener, Backlog::new(1).expect("backlog")).expect("listen");
    let mut fillers = Vec::new();
    while fillers.len() < 64 {
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket");
        if connect(s.as_raw_fd(), &addr).is_err() {
            break;
        }
        fillers.push(s);
    }
    let t = Instant::now();
    let (code, _, err) = charon(dir.path(), &["send", "test.busy.0.raw", "x"], None);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("overloaded"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn cli_lookup_resolves_wildcards_and_reports_missing() {
    let dir = TestDir::new();
    let d = dir.path();
    let _e = echo(d, "system.echo.0.raw");
    let _w = echo(d, "mail..1.JSON");
    let (code, out, err) = charon(
        d,
        &["lookup", "system.echo.0.raw", "mail.send.1.JSON"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let expected = format!(
        "{}\n{}\n",
        d.join("system.echo.0.raw.sock").display(),
        d.join("mail..1.JSON.sock").display()
    );
    assert_eq!(String::from_utf8_lossy(&out), expected);
    let (code, out, err) = charon(d, &["lookup", "system.echo.0.raw", "no.such.0.raw"], None);
    assert_eq!(code, 4, "{err}");
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
    assert!(err.contains("no.such.0.raw"), "{err}");
    let (code, _, err) = charon(d, &["lookup", "no.such.x.raw"], None);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn cli_test_runs_a_service_standalone() {
    let dir = TestDir::new();
    let d = dir.path();
    let echo_bin = bin("charon-echo");
    let echo_bin = echo_bin.to_str().expect("utf-8 path");

    let (code, out, err) = charon(d, &["test", "--", echo_bin], Some(b"standalone body"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"standalone body");
    // Success is silent: no line that reads like an error.
    assert!(err.is_empty(), "{err}");

    let input = dir.write("in", b"from a file");
    let output = dir.join("out");
    let (code, out, err) = charon(
        d,
        &[
            "test",
            "-i",
            input.to_str().expect("utf-8"),
            "-o",
            output.to_str().expect("utf-8"),
            "--",
            echo_bin,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    assert_eq!(std::fs::read(&output).expect("output"), b"from a file");

    let (code, _, err) = charon(
        d,
        &["test", "-C", "echo.fault=9:nine", "--", echo_bin],
        Some(b"x"),
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim_end(), "fault 9: nine");

    let (code, _, err) = charon(
        d,
        &["test", "-C", "echo.exit=3", "--", echo_bin],
        Some(b"x"),
    );
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
}

#[test]
fn cli_ping_json_has_every_field() {
    let dir = TestDir::new();
    let _e = echo(dir.path(), "system.echo.0.raw");
    let (code, out, err) = charon(
        dir.path(),
        &["ping", "-c", "50", "-p", "4", "-s", "512", "--json"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
    assert_eq!(v["count"], 50);
    assert_eq!(v["errors"], 0);
    for field in ["rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(v[field].is_number(), "{field} missing in {v}");
    }
    assert!(v["p50_us"].as_u64() <= v["max_us"].as_u64());
    assert!(v["rps"].as_f64().unwrap_or(0.0) > 0.0);

    // A key nobody serves: ping stops at the first answer (no later one
    // can differ), the object still comes for scripts, and the status says
    // why.
    let (code, out, err) = charon(
        dir.path(),
        &["ping", "-c", "3", "--json", "no.one.0.raw"],
        None,
    );
    assert_eq!(code, 4, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
    assert_eq!(v["errors"], 1, "{v}");
    assert_eq!(v["count"], 1, "{v}");
}
