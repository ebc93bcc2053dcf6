//! The template's fork server, with this test acting as the manager: it
//! starts the template (this same binary, re-run with `CHARON_TEMPLATE`
//! and the listener, scoreboard and control channel at fds 3-5), asks it
//! for instances over the control channel, and checks that each one is a
//! real managed instance: it answers on the listener from its own pid,
//! its parent is this process (`CLONE_PARENT`, so this process reaps it),
//! its stderr and report channel are the ones sent with the start, and it
//! exits 0 on SIGTERM with its records flushed. A program that runs a
//! thread is refused with a not-forkable message.
//!
//! `harness = false`: a template must be single-threaded, and libtest runs
//! each test on a thread of its own; `main` runs the cases in turn.

#[path = "../../tests/util/fds.rs"]
mod fds;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use charon_protocol::report::{self, Message};
use charon_protocol::scoreboard::{Scoreboard, SlotState};
use charon_protocol::template::{decode_reply, encode_command, Command as Cmd, Reply};
use charon_protocol::{encode_request, Attributes, Limits, RequestHead};
use charon_service::Service;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, Pid};

const CHILD_ENV: &str = "CHARON_TEMPLATE_TEST_CHILD";
const LONG: Duration = Duration::from_secs(30);
const SLOTS: u32 = 2;

/// The service: answers `<pid ppid>` to every request; says `hello` on
/// stderr when asked. `threaded` starts a thread before its first request.
fn child(variant: &str) {
    let mut svc = Service::init("test.template.1.raw").expect("init");
    if variant == "threaded" {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    while let Some(req) = svc.next_request().expect("next_request") {
        if req.body() == b"stderr" {
            eprintln!("hello from {}", std::process::id());
        }
        let body = format!("<{} {}>", std::process::id(), nix::unistd::getppid());
        req.respond(body.as_bytes()).expect("respond");
    }
}

struct Template {
    child: Child,
    sb: Scoreboard,
    control: OwnedFd,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Template {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(variant: &str) -> Template {
    let dir = tempfile::Builder::new()
        .prefix("chr")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let sock = dir.path().join("t.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let (sb, sb_fd) = Scoreboard::create(c"template-test", SLOTS).expect("scoreboard");
    sb.header().slots_in_use.store(SLOTS, Ordering::Relaxed);
    let (ours, theirs) = seqpacket();
    let fds = [listener.as_raw_fd(), sb_fd.as_raw_fd(), theirs.as_raw_fd()];
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.env(CHILD_ENV, variant)
        .env("CHARON_TEMPLATE", "1")
        .env("CHARON_SERVICE_KEY", "test.template.1.raw")
        .env_remove("CHARON_SLOT")
        .env_remove("CHARON_ACCEPT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    fds::pass_fds(&mut cmd, fds.to_vec());
    let child = cmd.spawn().expect("spawn the template");
    drop((listener, sb_fd, theirs));
    Template {
        child,
        sb,
        control: ours,
        sock,
        _dir: dir,
    }
}

fn seqpacket() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair")
}

/// Waits up to [`LONG`] for `fd` to be readable.
fn readable(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(LONG.as_millis()).unwrap_or(u16::MAX);
    poll(&mut fds, PollTimeout::from(ms)).expect("poll") == 1
}

/// A started instance, as the manager sees it.
struct Instance {
    pid: Pid,
    stderr: OwnedFd,
    report: OwnedFd,
}

impl Template {
    fn reply(&self) -> Reply {
        assert!(readable(&self.control), "no reply from the template");
        let mut buf = [0u8; 512];
        let n = recv(self.control.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv");
        decode_reply(&buf[..n]).expect("a valid reply")
    }

    fn start_instance(&self, slot: u32) -> Instance {
        self.sb.slot(slot).expect("slot").reset(0, 0);
        let (stderr_read, stderr_write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let (report, theirs) = seqpacket();
        let msg = encode_command(Cmd::Start { slot });
        let fds = [stderr_write.as_raw_fd(), theirs.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(&msg)];
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .expect("send start");
        drop((stderr_write, theirs));
        let Reply::Started { slot: s, pid } = self.reply() else {
            panic!("the template did not start slot {slot}");
        };
        assert_eq!(s, slot);
        Instance {
            pid: Pid::from_raw(i32::try_from(pid).expect("pid")),
            stderr: stderr_read,
            report,
        }
    }

    fn call(&self, body: &[u8]) -> (i32, i32) {
        let head = RequestHead {
            key: "test.template.1.raw",
            client: "template-test",
            attempt: 1,
            attributes: Attributes::NONE,
        };
        let mut wire = Vec::new();
        let no_context: &[(&str, &[u8])] = &[];
        encode_request(&head, no_context, body, &Limits::default(), &mut wire).expect("encode");
        let mut s = UnixStream::connect(&self.sock).expect("connect");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        s.write_all(&wire).expect("write");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read");
        let text = String::from_utf8_lossy(&resp);
        let inner = text
            .rsplit_once('<')
            .and_then(|(_, t)| t.strip_suffix('>'))
            .unwrap_or_else(|| panic!("not an answer: {text:?}"));
        let (pid, ppid) = inner.split_once(' ').expect("two numbers");
        (pid.parse().expect("pid"), ppid.parse().expect("ppid"))
    }
}

/// Reaps `pid`, a child of this process, within [`LONG`].
fn reap(pid: Pid) -> WaitStatus {
    let deadline = Instant::now() + LONG;
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::StillAlive => {}
            done => return done,
        }
        assert!(Instant::now() < deadline, "{pid} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_child(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the template did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn forked_instances_serve_report_and_are_this_process_s_children() {
    let mut t = start("plain");
    assert_eq!(t.reply(), Reply::Ready);
    let template_pid = i32::try_from(t.child.id()).expect("pid");
    let me = i32::try_from(std::process::id()).expect("pid");
    let a = t.start_instance(0);
    let (pid, ppid) = t.call(b"stderr");
    assert_eq!(pid, a.pid.as_raw(), "the forked instance answers");
    assert_ne!(pid, template_pid, "the template never serves");
    assert_eq!(ppid, me, "CLONE_PARENT: the manager is the parent");
    let slot = t.sb.slot(0).expect("slot").snapshot();
    assert_eq!(slot.requests, 1, "the instance counts in its slot");
    assert!(readable(&a.stderr), "nothing on the instance's stderr");
    let mut line = [0u8; 64];
    let n = nix::unistd::read(&a.stderr, &mut line).expect("read stderr");
    let said = String::from_utf8_lossy(&line[..n]);
    assert_eq!(
        said,
        format!("hello from {pid}\n"),
        "stderr is the pipe sent"
    );
    // A second instance from the same template, in the other slot.
    let b = t.start_instance(1);
    assert_ne!(b.pid, a.pid);
    kill(a.pid, Signal::SIGTERM).expect("kill");
    assert_eq!(reap(a.pid), WaitStatus::Exited(a.pid, 0));
    assert_eq!(
        t.sb.slot(0).expect("slot").state(),
        Some(SlotState::Exiting)
    );
    let mut buf = [0u8; report::MAX_MESSAGE_LEN];
    assert!(readable(&a.report), "no report from the instance");
    let n = recv(a.report.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv report");
    let Message::Records(records) = report::decode(&buf[..n]).expect("a report") else {
        panic!("not records");
    };
    assert_eq!(records.len(), 1, "its one request, flushed at exit");
    let (pid, _) = t.call(b"again");
    assert_eq!(pid, b.pid.as_raw(), "the second instance serves on");
    kill(b.pid, Signal::SIGTERM).expect("kill");
    assert_eq!(reap(b.pid), WaitStatus::Exited(b.pid, 0));
    // The manager hanging up ends the template, cleanly.
    nix::sys::socket::shutdown(t.control.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        .expect("shutdown");
    assert_eq!(wait_child(&mut t.child).code(), Some(0));
}

fn a_bad_start_is_refused_and_sigterm_ends_the_template() {
    let mut t = start("plain");
    assert_eq!(t.reply(), Reply::Ready);
    let msg = encode_command(Cmd::Start { slot: SLOTS });
    nix::sys::socket::send(t.control.as_raw_fd(), &msg, MsgFlags::empty()).expect("send");
    assert_eq!(
        t.reply(),
        Reply::Failed {
            slot: SLOTS,
            errno: libc::EBADF
        },
        "a start without its fds"
    );
    kill(Pid::from_raw(t.child.id() as i32), Signal::SIGTERM).expect("kill");
    assert_eq!(wait_child(&mut t.child).code(), Some(0));
}

fn a_threaded_program_is_not_forkable() {
    let mut t = start("threaded");
    let Reply::NotForkable(why) = t.reply() else {
        panic!("a threaded template said something else");
    };
    assert!(why.starts_with("2 threads"), "{why}");
    assert_eq!(wait_child(&mut t.child).code(), Some(1));
}

fn main() {
    if let Ok(variant) = std::env::var(CHILD_ENV) {
        child(&variant);
        return;
    }
    let cases: [(&str, fn()); 3] = [
        (
            "forked_instances_serve_report_and_are_this_process_s_children",
            forked_instances_serve_report_and_are_this_process_s_children,
        ),
        (
            "a_bad_start_is_refused_and_sigterm_ends_the_template",
            a_bad_start_is_refused_and_sigterm_ends_the_template,
        ),
        (
            "a_threaded_program_is_not_forkable",
            a_threaded_program_is_not_forkable,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, case) in cases {
        if filter.iter().all(|f| name.contains(f.as_str())) {
            eprint!("test {name} ... ");
            case();
            eprintln!("ok");
        }
    }
}
