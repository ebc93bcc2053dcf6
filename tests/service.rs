//! The service library through `charon-echo`, in its three modes: standalone
//! (`3<request 4>response`), accept mode (hostile input, affinity, SIGTERM),
//! and managed mode with the manager simulated here (a scoreboard, a report
//! channel and a listening socket at fds 3-5). Frames are built and parsed
//! with the protocol crate only, not the client library.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use charon_protocol::report::{self, Message};
use charon_protocol::scoreboard::{Scoreboard, SlotState};
use charon_protocol::{
    decode_response, encode_request, Attributes, ErrorCode, Fill, FrameBuf, FrameHeader, FrameKind,
    Limits, RequestHead, Response,
};
use nix::sys::signal::Signal;

use crate::util::pass_fds;
use crate::util::{bin, run, wait_for, Proc, TestDir};

const LONG: Duration = Duration::from_secs(30);

/// A response, owned.
#[derive(Debug, PartialEq, Eq)]
enum Resp {
    Ok(Vec<u8>),
    Fault(u32, String),
    Error(ErrorCode, String),
    Unavailable,
}

fn frame(ctx: &[(&str, &str)], body: &[u8], attributes: Attributes) -> Vec<u8> {
    let head = RequestHead {
        key: "system.echo.0.raw",
        client: "service-test",
        attempt: 1,
        attributes,
    };
    let ctx: Vec<(&str, &[u8])> = ctx.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let mut out = Vec::new();
    encode_request(&head, &ctx, body, &Limits::default(), &mut out).expect("encode");
    out
}

fn simple(body: &[u8]) -> Vec<u8> {
    frame(&[], body, Attributes::NONE)
}

/// Reads one response frame; `None` if the stream closes first. Only for a
/// stream that carries one response: the buffer may read ahead.
fn read_resp(r: &mut impl Read) -> Option<Resp> {
    let mut fb = FrameBuf::new(
        FrameKind::Response,
        Limits::default().max_response_payload(),
    );
    read_next(r, &mut fb)
}

/// Reads the next response frame through `fb`, which keeps bytes read
/// ahead for the next call.
fn read_next(r: &mut impl Read, fb: &mut FrameBuf) -> Option<Resp> {
    fb.reset();
    match fb.read_from(r) {
        Ok(Fill::Complete) => {}
        Ok(other) => {
            assert!(
                matches!(other, Fill::Eof { received: 0 }),
                "partial: {other:?}"
            );
            return None;
        }
        Err(e) => panic!("bad response frame: {e}"),
    }
    Some(
        match decode_response(fb.payload(), &Limits::default()).expect("decode") {
            Response::Ok(b) => Resp::Ok(b.to_vec()),
            Response::Fault { code, text } => Resp::Fault(code, text.to_string()),
            Response::Error { code, text } => Resp::Error(code, text.to_string()),
            Response::Unavailable { .. } => Resp::Unavailable,
        },
    )
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    s.set_write_timeout(Some(LONG)).expect("timeout");
    s
}

/// One request on a fresh connection. The write runs on a thread so a
/// large body cannot deadlock against a large response.
fn exchange(path: &Path, req: Vec<u8>) -> Option<Resp> {
    let mut s = connect(path);
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&req);
    });
    let r = read_resp(&mut s);
    writer.join().expect("writer");
    r
}

fn body_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

// ------------------------------------------------------------ standalone

/// Runs `charon-echo 3<request 4>response`; returns its status, the
/// response (if any) and stderr.
fn standalone(req: &[u8]) -> (std::process::ExitStatus, Option<Resp>, String) {
    let dir = TestDir::new();
    let req_path = dir.write("req.bin", req);
    let resp_path = dir.join("resp.bin");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec "$0" 3<"$1" 4>"$2""#)
        .arg(bin("charon-echo"))
        .arg(&req_path)
        .arg(&resp_path);
    let (status, _out, err) = run(cmd, LONG);
    let bytes = std::fs::read(&resp_path).expect("response file");
    let resp = if bytes.is_empty() {
        None
    } else {
        read_resp(&mut &bytes[..])
    };
    (status, resp, String::from_utf8_lossy(&err).into_owned())
}

#[test]
fn standalone_echoes_bodies_of_every_size_exactly() {
    for n in [0, 1024, 8 << 20] {
        let body = body_of(n);
        let (status, resp, err) = standalone(&simple(&body));
        assert_eq!(status.code(), Some(0), "{n} bytes: {err}");
        match resp {
            Some(Resp::Ok(got)) => assert!(got == body, "{n}-byte body came back different"),
            other => panic!("{n} bytes: {other:?}"),
        }
    }
}

#[test]
fn standalone_fault_passes_code_and_text() {
    let req = frame(
        &[("echo.fault", "123:out of stock")],
        b"x",
        Attributes::NONE,
    );
    let (status, resp, _) = standalone(&req);
    assert_eq!(status.code(), Some(0));
    assert_eq!(resp, Some(Resp::Fault(123, "out of stock".into())));
}

#[test]
fn standalone_exit_gives_no_response_and_that_status() {
    let req = frame(&[("echo.exit", "3")], b"x", Attributes::NONE);
    let (status, resp, _) = standalone(&req);
    assert_eq!(status.code(), Some(3));
    assert_eq!(resp, None);
}

#[test]
fn standalone_bad_control_and_garbage_get_clear_answers() {
    let req = frame(&[("echo.sleep-ms", "soon")], b"x", Attributes::NONE);
    let (status, resp, _) = standalone(&req);
    assert_eq!(status.code(), Some(0));
    match resp {
        Some(Resp::Fault(5, text)) => assert!(text.contains("echo.sleep-ms must be"), "{text}"),
        other => panic!("{other:?}"),
    }
    let (status, resp, _) = standalone(b"definitely not a frame");
    assert_eq!(status.code(), Some(0));
    assert!(
        matches!(resp, Some(Resp::Error(ErrorCode::MALFORMED_REQUEST, _))),
        "{resp:?}"
    );
}

#[test]
fn no_mode_is_a_clear_start_failure() {
    // Close 3 and 4 explicitly: a test runner may leak its own fds there
    // (cargo's jobserver pipe, for one).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec "$0" 3<&- 4>&-"#)
        .arg(bin("charon-echo"))
        .env_remove("CHARON_SLOT")
        .env_remove("CHARON_ACCEPT_SOCKET");
    let (status, _, err) = run(cmd, LONG);
    let err = String::from_utf8_lossy(&err);
    assert_eq!(status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for way in ["CHARON_SLOT", "CHARON_ACCEPT_SOCKET", "fd 3"] {
        assert!(err.contains(way), "{err}");
    }
}

// ----------------------------------------------------------- accept mode

/// An accept-mode echo; the socket is ready when this returns. Its stderr
/// lines are collected in `stderr`.
struct Echo {
    proc: Proc,
    sock: std::path::PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: TestDir,
}

impl Echo {
    fn start(env: &[(&str, &str)]) -> Echo {
        let dir = TestDir::new();
        let sock = dir.join("echo.sock");
        let mut cmd = Command::new(bin("charon-echo"));
        cmd.env("CHARON_ACCEPT_SOCKET", &sock)
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("charon-echo", cmd);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = proc.child_mut().stderr.take().expect("stderr");
        let lines = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().expect("lock").push(line);
            }
        });
        wait_for(LONG, "the echo socket", || {
            UnixStream::connect(&sock).is_ok()
        });
        Echo {
            proc,
            sock,
            stderr,
            _dir: dir,
        }
    }

    fn wait_for_line(&self, text: &str) {
        wait_for(LONG, &format!("stderr line {text:?}"), || {
            self.stderr
                .lock()
                .expect("lock")
                .iter()
                .any(|l| l.contains(text))
        });
    }

    fn echo_ok(&self, body: &[u8]) {
        assert_eq!(
            exchange(&self.sock, simple(body)),
            Some(Resp::Ok(body.to_vec()))
        );
    }
}

#[test]
fn accept_mode_answers_many_connections() {
    let e = Echo::start(&[]);
    for i in 0..40 {
        e.echo_ok(&body_of(i * 37));
    }
    e.echo_ok(&body_of(8 << 20));
}

#[test]
fn a_program_that_closes_its_stdio_never_prints_into_a_client() {
    // The next connection would take the lowest free fd, the one the
    // program closed, and its log lines would go into that client's answer.
    let e = Echo::start(&[]);
    for fd in ["2", "1", "0"] {
        let closing = frame(&[("echo.close-stdio", fd)], b"closing", Attributes::NONE);
        assert_eq!(
            exchange(&e.sock, closing),
            Some(Resp::Ok(b"closing".to_vec()))
        );
        for _ in 0..3 {
            let logging = frame(&[("echo.log", "a line")], b"after", Attributes::NONE);
            assert_eq!(
                exchange(&e.sock, logging),
                Some(Resp::Ok(b"after".to_vec()))
            );
        }
    }
}

#[test]
fn a_forked_child_that_panics_leaves_the_parents_request_and_socket_alone() {
    // The child's panic unwound through copies of the request and the
    // service: it answered NO_ANSWER on the parent's connection and
    // unlinked the parent's socket file.
    let e = Echo::start(&[]);
    for _ in 0..2 {
        let req = frame(
            &[("echo.fork-panic", "a worker's bug")],
            b"parent",
            Attributes::NONE,
        );
        assert_eq!(exchange(&e.sock, req), Some(Resp::Ok(b"parent".to_vec())));
        assert!(e.sock.exists(), "the socket file is the parent's");
    }
    e.wait_for_line("echo.fork-panic: a worker's bug");
}

#[test]
fn keep_affinity_conversation_uses_one_connection() {
    let e = Echo::start(&[]);
    let mut s = connect(&e.sock);
    let mut fb = FrameBuf::new(
        FrameKind::Response,
        Limits::default().max_response_payload(),
    );
    for i in 0..4u8 {
        s.write_all(&frame(&[], &[i; 3], Attributes::KEEP_AFFINITY))
            .expect("write");
        assert_eq!(read_next(&mut s, &mut fb), Some(Resp::Ok(vec![i; 3])));
    }
    // Two requests sent at once (pipelined) on the kept connection: both
    // answered, in order, the last without affinity so the service closes.
    let mut both = frame(&[], b"five", Attributes::KEEP_AFFINITY);
    both.extend(frame(&[], b"six", Attributes::NONE));
    s.write_all(&both).expect("write");
    assert_eq!(read_next(&mut s, &mut fb), Some(Resp::Ok(b"five".to_vec())));
    assert_eq!(read_next(&mut s, &mut fb), Some(Resp::Ok(b"six".to_vec())));
    assert_eq!(
        read_next(&mut s, &mut fb),
        None,
        "closed after a request without affinity"
    );
    e.echo_ok(b"others are served afterwards");
}

#[test]
fn a_kept_connection_expires_after_the_affinity_timeout() {
    let e = Echo::start(&[("CHARON_AFFINITY_TIMEOUT_MS", "200")]);
    let mut s = connect(&e.sock);
    s.write_all(&frame(&[], b"a", Attributes::KEEP_AFFINITY))
        .expect("write");
    assert_eq!(read_resp(&mut s), Some(Resp::Ok(b"a".to_vec())));
    let t = Instant::now();
    assert_eq!(
        read_resp(&mut s),
        None,
        "the service closes the idle connection"
    );
    assert!(t.elapsed() < LONG);
    e.echo_ok(b"b");
}

#[test]
fn hostile_input_gets_framework_errors_and_the_instance_carries_on() {
    let e = Echo::start(&[("CHARON_READ_TIMEOUT_MS", "300")]);
    malformed_frames_get_their_error_and_the_instance_carries_on(&e);
    a_silent_client_times_out_and_an_empty_one_is_closed(&e);
}

/// Garbage, a truncated frame, a 4 GiB length claim and a bad field each
/// get their framework error; the instance serves the next request.
fn malformed_frames_get_their_error_and_the_instance_carries_on(e: &Echo) {
    let mut s = connect(&e.sock);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let r = read_resp(&mut s);
    assert!(
        matches!(r, Some(Resp::Error(ErrorCode::MALFORMED_REQUEST, _))),
        "{r:?}"
    );
    e.echo_ok(b"after garbage");

    let good = simple(b"truncated");
    let mut s = connect(&e.sock);
    s.write_all(&good[..good.len() - 3]).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let r = read_resp(&mut s);
    match r {
        Some(Resp::Error(ErrorCode::MALFORMED_REQUEST, t)) => assert!(t.contains("closed"), "{t}"),
        other => panic!("truncated: {other:?}"),
    }
    e.echo_ok(b"after truncation");

    let claim = FrameHeader {
        kind: FrameKind::Request,
        payload_len: u32::MAX,
    }
    .pack();
    let mut s = connect(&e.sock);
    s.write_all(&claim).expect("write");
    let r = read_resp(&mut s);
    assert!(
        matches!(r, Some(Resp::Error(ErrorCode::REQUEST_TOO_LARGE, _))),
        "{r:?}"
    );
    e.echo_ok(b"after a 4 GiB claim");

    let mut bad_field = simple(b"x");
    bad_field[8] = 9; // attempt 9
    let r = exchange(&e.sock, bad_field);
    assert!(
        matches!(r, Some(Resp::Error(ErrorCode::MALFORMED_REQUEST, _))),
        "{r:?}"
    );
}

/// A silent client gets READ_TIMEOUT after the configured 300 ms; a
/// connection closed before sending anything is just closed. The instance
/// serves on.
fn a_silent_client_times_out_and_an_empty_one_is_closed(e: &Echo) {
    let t = Instant::now();
    let mut s = connect(&e.sock);
    let r = read_resp(&mut s);
    match r {
        Some(Resp::Error(ErrorCode::READ_TIMEOUT, t)) => assert!(t.contains("300 ms"), "{t}"),
        other => panic!("silent client: {other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    e.echo_ok(b"after a silent client");

    // A connection closed before sending anything is just closed.
    drop(connect(&e.sock));
    e.echo_ok(b"after an empty connection");
}

#[test]
fn a_client_that_vanishes_mid_response_leaves_the_instance_alive() {
    let mut e = Echo::start(&[]);
    for _ in 0..3 {
        let mut s = connect(&e.sock);
        // The response (8 MiB) is written while nobody reads it any more.
        s.write_all(&frame(
            &[("echo.sleep-ms", "100")],
            &body_of(8 << 20),
            Attributes::NONE,
        ))
        .expect("write");
        drop(s);
    }
    e.echo_ok(b"still here");
    assert!(e.proc.try_wait().is_none(), "the instance died");
}

#[test]
fn sigterm_finishes_the_request_in_hand_then_exits_zero() {
    let mut e = Echo::start(&[]);
    let mut s = connect(&e.sock);
    let ctx = [("echo.log", "in hand"), ("echo.sleep-ms", "500")];
    s.write_all(&frame(&ctx, b"last one", Attributes::NONE))
        .expect("write");
    // The log line is written just before the sleep: the request is in
    // hand, not merely queued, when the signal lands.
    e.wait_for_line("charon-echo: in hand");
    e.proc.signal(Signal::SIGTERM);
    assert_eq!(read_resp(&mut s), Some(Resp::Ok(b"last one".to_vec())));
    let status = e.proc.wait_timeout(LONG);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!e.sock.exists(), "the socket file is removed");
}

#[test]
fn sigterm_while_idle_exits_zero_promptly() {
    let mut e = Echo::start(&[]);
    e.echo_ok(b"warm");
    let t = Instant::now();
    e.proc.signal(Signal::SIGTERM);
    let status = e.proc.wait_timeout(LONG);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!e.sock.exists());
}

#[test]
fn accept_mode_refuses_a_file_in_the_way() {
    let dir = TestDir::new();
    let p = dir.write("not-a-socket", b"keep me");
    let mut cmd = Command::new(bin("charon-echo"));
    cmd.env("CHARON_ACCEPT_SOCKET", &p);
    let (status, _, err) = run(cmd, LONG);
    let err = String::from_utf8_lossy(&err);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&p).expect("read"), b"keep me");
}

// ---------------------------------------------------------- managed mode

/// The manager's side of one managed instance.
struct Managed {
    proc: Proc,
    sb: Scoreboard,
    report: OwnedFd,
    sock: std::path::PathBuf,
    _dir: TestDir,
}

impl Managed {
    /// Spawns charon-echo in slot 0 of a 2-slot scoreboard.
    fn start(request_limit: u64, want_hints: bool, other_slot: SlotState) -> Managed {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

        let dir = TestDir::new();
        let sock = dir.join("m.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let (sb, sb_fd) = Scoreboard::create(c"service-test", 2).expect("scoreboard");
        sb.slot(0).expect("slot").reset(1, request_limit);
        sb.slot(1).expect("slot").reset(1, 0);
        sb.slot(1).expect("slot").set_state(other_slot);
        sb.header().slots_in_use.store(2, Ordering::Relaxed);
        sb.header()
            .want_hints
            .store(u32::from(want_hints), Ordering::Relaxed);
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let fds = [listener.as_raw_fd(), sb_fd.as_raw_fd(), theirs.as_raw_fd()];
        let mut cmd = Command::new(bin("charon-echo"));
        cmd.env("CHARON_SLOT", "0")
            .env("CHARON_SERVICE_KEY", "system.echo.0.raw")
            .env_remove("CHARON_ACCEPT_SOCKET")
            .stderr(Stdio::null());
        pass_fds(&mut cmd, fds.to_vec());
        let proc = Proc::spawn("charon-echo (managed)", cmd);
        drop((listener, sb_fd, theirs));
        Managed {
            proc,
            sb,
            report: ours,
            sock,
            _dir: dir,
        }
    }

    fn slot(&self) -> &charon_protocol::scoreboard::Slot {
        self.sb.slot(0).expect("slot 0")
    }

    /// Every report message that has arrived, without waiting.
    fn messages(&self) -> Vec<Message> {
        use nix::sys::socket::{recv, MsgFlags};
        let mut out = Vec::new();
        let mut buf = [0u8; report::MAX_MESSAGE_LEN + 16];
        while let Ok(n) = recv(self.report.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            if n == 0 {
                break;
            }
            out.push(report::decode(&buf[..n]).expect("valid report"));
        }
        out
    }

    /// Collects messages until `done` says enough.
    fn collect_until(&self, what: &str, mut done: impl FnMut(&[Message]) -> bool) -> Vec<Message> {
        let mut all = Vec::new();
        wait_for(LONG, what, || {
            all.extend(self.messages());
            done(&all)
        });
        all
    }
}

fn record_count(msgs: &[Message]) -> usize {
    msgs.iter()
        .map(|m| match m {
            Message::Records(r) => r.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn managed_slot_goes_idle_then_counts_requests() {
    let m = Managed::start(0, false, SlotState::Empty);
    wait_for(LONG, "slot 0 idle", || {
        m.slot().state() == Some(SlotState::Idle)
    });
    for i in 0..3u8 {
        assert_eq!(exchange(&m.sock, simple(&[i])), Some(Resp::Ok(vec![i])));
    }
    wait_for(LONG, "3 requests counted", || {
        let s = m.slot().snapshot();
        s.requests == 3 && s.state == Some(SlotState::Idle) && s.busy_since_ns == 0
    });
    assert!(m.slot().snapshot().busy_total_ns > 0);
    check_instance_fds(m.proc.pid());
}

/// A managed instance holds fds 3-5 as arranged, close-on-exec (its own
/// children must not inherit them), and adds only its wake-up eventfd.
fn check_instance_fds(pid: i32) {
    for fd in [3, 4, 5] {
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .expect("flags line");
        assert_ne!(
            flags & 0o2_000_000,
            0,
            "fd {fd} is not close-on-exec: {info}"
        );
    }
    let mut extra = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir") {
        let entry = entry.expect("entry");
        let n: i32 = entry
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("fd number");
        if n > 5 {
            let target = std::fs::read_link(entry.path()).expect("link");
            extra.push(target.to_string_lossy().into_owned());
        }
    }
    // The test runner may leak its own inheritable fds (cargo's jobserver
    // pipe, /dev/null); what the library adds is one eventfd, and no
    // socket or memfd may appear twice.
    let count = |p: &str| extra.iter().filter(|t| t.starts_with(p)).count();
    assert_eq!(count("anon_inode:[eventfd]"), 1, "{extra:?}");
    assert_eq!(count("socket:"), 0, "{extra:?}");
    assert_eq!(count("/memfd:"), 0, "{extra:?}");
}

#[test]
fn managed_records_are_batched_and_flushed_when_idle() {
    let m = Managed::start(0, false, SlotState::Empty);
    wait_for(LONG, "slot 0 idle", || {
        m.slot().state() == Some(SlotState::Idle)
    });
    // The first connection is accepted at once, and the instance waits for
    // its request while ten more connections queue up with theirs. Once
    // the first request is sent, all eleven are served back to back,
    // without the instance ever going idle: one message.
    let mut first = connect(&m.sock);
    let mut queued: Vec<UnixStream> = (0..10u8)
        .map(|i| {
            let mut s = connect(&m.sock);
            s.write_all(&simple(&[i])).expect("write");
            s
        })
        .collect();
    first
        .write_all(&frame(
            &[("echo.sleep-ms", "100")],
            b"first",
            Attributes::NONE,
        ))
        .expect("write");
    assert_eq!(read_resp(&mut first), Some(Resp::Ok(b"first".to_vec())));
    for (i, s) in queued.iter_mut().enumerate() {
        assert_eq!(read_resp(s), Some(Resp::Ok(vec![i as u8])));
    }
    // Only going idle sends them here: the batch is not full, and it is a
    // second old only on a very slow machine (one extra message allowed).
    let msgs = m.collect_until("11 records", |all| record_count(all) >= 11);
    assert_eq!(record_count(&msgs), 11);
    assert!(
        msgs.len() <= 2,
        "11 back-to-back requests came in {} messages: {msgs:?}",
        msgs.len()
    );
    let Some(Message::Records(recs)) = msgs.first() else {
        panic!("{msgs:?}");
    };
    assert!(recs[0].elapsed_us >= 100_000, "{recs:?}");
    assert!(recs
        .iter()
        .all(|r| r.outcome == report::Outcome::Ok && r.attempt == 1));
    assert_eq!(m.slot().snapshot().requests, 11);
}

#[test]
fn managed_retiring_is_sent_at_the_request_limit_and_the_instance_leaves() {
    let mut m = Managed::start(3, false, SlotState::Empty);
    for i in 0..3u8 {
        assert_eq!(exchange(&m.sock, simple(&[i])), Some(Resp::Ok(vec![i])));
    }
    // The limit is a hard bound: the instance accepts nothing more and
    // exits 0 on its own, having said "retiring" once.
    let status = m.proc.wait_timeout(LONG);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(m.slot().state(), Some(SlotState::Exiting));
    assert_eq!(m.slot().snapshot().requests, 3);
    let msgs = m.messages();
    assert_eq!(
        msgs.iter().filter(|x| **x == Message::Retiring).count(),
        1,
        "{msgs:?}"
    );
    assert_eq!(record_count(&msgs), 3);
}

#[test]
fn managed_saturated_hint_when_all_instances_are_busy() {
    let m = Managed::start(0, true, SlotState::Busy);
    wait_for(LONG, "slot 0 idle", || {
        m.slot().state() == Some(SlotState::Idle)
    });
    assert_eq!(
        exchange(&m.sock, simple(b"x")),
        Some(Resp::Ok(b"x".to_vec()))
    );
    m.collect_until("a saturated hint", |all| all.contains(&Message::Saturated));
}

#[test]
fn managed_no_hint_while_another_instance_is_idle() {
    let m = Managed::start(0, true, SlotState::Idle);
    wait_for(LONG, "slot 0 idle", || {
        m.slot().state() == Some(SlotState::Idle)
    });
    assert_eq!(
        exchange(&m.sock, simple(b"x")),
        Some(Resp::Ok(b"x".to_vec()))
    );
    // The record arrives when the instance goes idle again; a hint would
    // have been sent before it.
    let msgs = m.collect_until("the record", |all| record_count(all) == 1);
    assert!(!msgs.contains(&Message::Saturated), "{msgs:?}");
}

#[test]
fn managed_instance_leaves_when_the_manager_is_gone() {
    let mut m = Managed::start(0, false, SlotState::Empty);
    wait_for(LONG, "slot 0 idle", || {
        m.slot().state() == Some(SlotState::Idle)
    });
    let report = std::mem::replace(
        &mut m.report,
        std::fs::File::open("/dev/null").expect("null").into(),
    );
    drop(report);
    let status = m.proc.wait_timeout(LONG);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(m.slot().state(), Some(SlotState::Exiting));
}

#[test]
fn managed_mode_refuses_a_non_listening_fd_3() {
    // fd 3 is a plain file here.
    let dir = TestDir::new();
    let f = dir.write("f", b"");
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(r#"exec "$0" 3<"$1" 4<"$1" 5<"$1""#)
        .arg(bin("charon-echo"))
        .arg(&f)
        .env("CHARON_SLOT", "0");
    let (status, _, err) = run(sh, LONG);
    let err = String::from_utf8_lossy(&err);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("fd 3 must be a listening AF_UNIX stream socket"),
        "{err}"
    );
}

// ------------------------------------------------------- echo controls

#[test]
fn echo_help_lists_the_controls() {
    let (status, out, _) = run(
        {
            let mut c = Command::new(bin("charon-echo"));
            c.arg("--help");
            c
        },
        LONG,
    );
    assert_eq!(status.code(), Some(0));
    let out = String::from_utf8_lossy(&out);
    for control in [
        "echo.sleep-ms",
        "echo.fault",
        "echo.exit",
        "echo.signal",
        "echo.die-once",
        "echo.log",
        "echo.panic",
    ] {
        assert!(out.contains(control), "{out}");
    }
}

#[test]
fn echo_die_once_dies_then_echoes() {
    let e = Echo::start(&[]);
    let marker = e._dir.join("died");
    let marker_s = marker.to_str().expect("utf-8 path");
    let req = || frame(&[("echo.die-once", marker_s)], b"again", Attributes::NONE);
    let mut e = e;
    assert_eq!(
        exchange(&e.sock, req()),
        None,
        "silent close the first time"
    );
    let status = e.proc.wait_timeout(LONG);
    assert_eq!(status.code(), Some(0));
    assert!(marker.exists());
    let e2 = Echo::start(&[]);
    assert_eq!(exchange(&e2.sock, req()), Some(Resp::Ok(b"again".to_vec())));
}

#[test]
fn echo_log_writes_one_line_and_echoes() {
    let e = Echo::start(&[]);
    let req = frame(&[("echo.log", "hello from a test")], b"b", Attributes::NONE);
    assert_eq!(exchange(&e.sock, req), Some(Resp::Ok(b"b".to_vec())));
    e.wait_for_line("charon-echo: hello from a test");
}

#[test]
fn echo_signal_kills_with_that_signal() {
    use std::os::unix::process::ExitStatusExt;
    // 11 matters: Rust's runtime handles SIGSEGV, and the echo must undo
    // that for the simulated crash to happen.
    for sig in [9, 11] {
        let req = frame(&[("echo.signal", &sig.to_string())], b"x", Attributes::NONE);
        let (status, resp, _) = standalone(&req);
        assert_eq!(status.signal(), Some(sig), "{status:?}");
        assert_eq!(resp, None);
    }
}

#[test]
fn echo_fault_code_zero_is_bad_context() {
    // Code 0 is not a fault code: the echo refuses it before acting.
    let req = frame(&[("echo.fault", "0:zero")], b"x", Attributes::NONE);
    let (status, resp, _) = standalone(&req);
    assert_eq!(status.code(), Some(0));
    match resp {
        Some(Resp::Fault(5, text)) => assert!(text.contains("from 1"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sigusr1_drains_queued_connections_then_exits_zero() {
    let mut e = Echo::start(&[]);
    let mut busy = connect(&e.sock);
    let ctx = [("echo.log", "draining soon"), ("echo.sleep-ms", "300")];
    busy.write_all(&frame(&ctx, b"in hand", Attributes::NONE))
        .expect("write");
    e.wait_for_line("charon-echo: draining soon");
    let mut queued: Vec<UnixStream> = (0..3u8)
        .map(|i| {
            let mut s = connect(&e.sock);
            s.write_all(&simple(&[i])).expect("write");
            s
        })
        .collect();
    e.proc.signal(Signal::SIGUSR1);
    assert_eq!(read_resp(&mut busy), Some(Resp::Ok(b"in hand".to_vec())));
    for (i, s) in queued.iter_mut().enumerate() {
        assert_eq!(read_resp(s), Some(Resp::Ok(vec![i as u8])), "queued {i}");
    }
    let status = e.proc.wait_timeout(LONG);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!e.sock.exists());
}
