//! Managed mode's report channel under low load: an instance that goes idle
//! between requests must not send a report at every gap (that woke the
//! manager once per request), yet its records must still reach the
//! manager while it sits idle, and when the service calls `exit()`.
//!
//! The service is this test binary itself, re-run as a managed child (the
//! ignored `child_service` test) with the listening socket, a scoreboard
//! and the report channel at fds 3-5, as the manager arranges them.

// The integration tests' fd placement for a child.
#[path = "../../tests/util/fds.rs"]
mod fds;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use charon_protocol::report::{self, Message};
use charon_protocol::scoreboard::{Scoreboard, SlotState};
use charon_protocol::{encode_request, Attributes, Limits, RequestHead};
use charon_service::Service;
use nix::sys::socket::{recv, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

const CHILD_ENV: &str = "CHARON_REPORTS_TEST_CHILD";
const LONG: Duration = Duration::from_secs(30);

/// The service: echoes every body.
#[test]
#[ignore = "run as a child process by the other tests in this file"]
fn child_service() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut svc = Service::init("test.reports.1.raw").expect("init");
    while let Some(req) = svc.next_request().expect("next_request") {
        if req.body() == b"exit" {
            std::process::exit(0);
        }
        let body = req.body().to_vec();
        req.respond(&body).expect("respond");
    }
}

struct Instance {
    child: Child,
    sb: Scoreboard,
    report: OwnedFd,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Instance {
    let dir = tempfile::Builder::new()
        .prefix("chr")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let sock = dir.path().join("r.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let (sb, sb_fd) = Scoreboard::create(c"reports-test", 1).expect("scoreboard");
    sb.slot(0).expect("slot").reset(1, 0);
    sb.header().slots_in_use.store(1, Ordering::Relaxed);
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let fds = [listener.as_raw_fd(), sb_fd.as_raw_fd(), theirs.as_raw_fd()];
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.args(["--ignored", "--exact", "child_service", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env("CHARON_SLOT", "0")
        .env("CHARON_SERVICE_KEY", "test.reports.1.raw")
        .env_remove("CHARON_ACCEPT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    fds::pass_fds(&mut cmd, fds.to_vec());
    let child = cmd.spawn().expect("spawn child");
    drop((listener, sb_fd, theirs));
    Instance {
        child,
        sb,
        report: ours,
        sock,
        _dir: dir,
    }
}

impl Instance {
    fn idle(&self) -> bool {
        self.sb.slot(0).expect("slot").state() == Some(SlotState::Idle)
    }

    /// Records in every message that has arrived, and the message count.
    fn drain(&self) -> (usize, usize) {
        let (mut records, mut messages) = (0, 0);
        let mut buf = [0u8; report::MAX_MESSAGE_LEN + 16];
        while let Ok(n) = recv(self.report.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            if n == 0 {
                break;
            }
            messages += 1;
            if let Message::Records(r) = report::decode(&buf[..n]).expect("valid report") {
                records += r.len();
            }
        }
        (records, messages)
    }

    /// Sends `body` and returns what came back before the close.
    fn send(&self, body: &[u8]) -> Vec<u8> {
        let head = RequestHead {
            key: "test.reports.1.raw",
            client: "reports-test",
            attempt: 1,
            attributes: Attributes::NONE,
        };
        let mut wire = Vec::new();
        encode_request(
            &head,
            &[] as &[(&str, &[u8])],
            body,
            &Limits::default(),
            &mut wire,
        )
        .expect("encode");
        let mut s = UnixStream::connect(&self.sock).expect("connect");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        s.write_all(&wire).expect("write");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read");
        resp
    }

    fn echo(&self, body: &[u8]) {
        let resp = self.send(body);
        assert!(resp.ends_with(body), "{resp:?}");
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn idle_gaps_do_not_send_a_report_each_but_records_arrive() {
    let c = start();
    wait_until("the instance to go idle", || c.idle());
    let t0 = Instant::now();
    for i in 0..5u8 {
        c.echo(&[i]);
        // The instance goes idle between requests.
        wait_until("the instance to go idle again", || c.idle());
    }
    let early = c.drain();
    // Five idle gaps used to send five messages; a batch is due only a
    // second after its oldest record, so on a machine quick enough to do
    // the five exchanges within that second none has come yet.
    if t0.elapsed() < Duration::from_millis(900) {
        assert_eq!(early.1, 0, "reports sent at idle gaps: {early:?}");
    }
    // While idle, the instance still sends them once they are due.
    let mut total = early;
    wait_until("five records", || {
        let (r, m) = c.drain();
        total = (total.0 + r, total.1 + m);
        total.0 >= 5
    });
    assert_eq!(total.0, 5);
    assert!(total.1 <= 2, "five records in {} messages", total.1);
}

#[test]
fn records_held_back_are_sent_when_the_service_calls_exit() {
    let mut c = start();
    wait_until("the instance to go idle", || c.idle());
    for i in 0..3u8 {
        c.echo(&[i]);
    }
    assert!(c.send(b"exit").is_empty(), "exit answers nothing");
    let mut status = None;
    wait_until("the instance to exit", || {
        status = c.child.try_wait().expect("try_wait");
        status.is_some()
    });
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // Sent by the exit hook, not a second later by a process now gone.
    assert_eq!(c.drain().0, 3);
}
