//! `Request` through a real service process: what the accessors return, and
//! the library's own answers when the program drops a request, uses fault
//! code 0, or produces an oversized response.
//!
//! The service is this test binary itself, re-run as a child in accept mode
//! (the ignored `child_service` test), so the library is exercised exactly
//! as a program links it, without depending on `charon-echo`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use charon_protocol::{
    decode_response, encode_request, Attributes, ErrorCode, Fill, FrameBuf, FrameKind, Limits,
    RequestHead, Response,
};
use charon_service::{ErrorKind, Options, Service};

const CHILD_ENV: &str = "CHARON_SERVICE_TEST_CHILD";
const LONG: Duration = Duration::from_secs(30);
/// The child's response limit, small so a test can exceed it cheaply.
const CHILD_MAX_RESPONSE: u32 = 16;

/// The service: answers according to the body.
#[test]
#[ignore = "run as a child process by the other tests in this file"]
fn child_service() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut opts = Options::default();
    opts.limits.max_response_body = CHILD_MAX_RESPONSE;
    let mut svc = Service::init_with("test.child.1.raw", opts).expect("init");
    match Service::init("again") {
        Err(e) if matches!(e.kind(), ErrorKind::AlreadyInitialized) => {}
        other => panic!("a second init must fail: {other:?}"),
    }
    while let Some(req) = svc.next_request().expect("next_request") {
        match req.body() {
            b"drop" => drop(req),
            b"zero" => {
                let err = req.fault(0, "zero").expect_err("code 0 is refused");
                assert!(matches!(err.kind(), ErrorKind::ZeroFaultCode));
            }
            b"big" => {
                let err = req.respond(&[b'x'; 32]).expect_err("over the limit");
                assert!(matches!(err.kind(), ErrorKind::ResponseTooLarge { .. }));
            }
            _ => {
                let ctx: Vec<String> = req
                    .context_entries()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect();
                let dump = format!(
                    "{}|{}|{}|{}|{}|{}|{}|{:?}|{}|{}",
                    req.key(),
                    req.application(),
                    req.function(),
                    req.version(),
                    req.serialization(),
                    req.client(),
                    req.attempt(),
                    req.context(
                        ctx.first()
                            .map_or("", |c| c.split('=').next().unwrap_or(""))
                    ),
                    ctx.join(","),
                    req.attributes().contains(Attributes::NO_RETRY),
                );
                // A fault text has its own (64 KiB) limit, so the dump is
                // not cut by the child's small response limit.
                req.fault(100, &dump).expect("fault");
            }
        }
    }
}

struct ChildService {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for ChildService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> ChildService {
    let dir = tempfile::Builder::new()
        .prefix("chs")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let sock = dir.path().join("s.sock");
    let child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--ignored", "--exact", "child_service", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env("CHARON_ACCEPT_SOCKET", &sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + LONG;
    while UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "the child service never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    ChildService {
        child,
        sock,
        _dir: dir,
    }
}

/// Sends one request and returns the response's debug form.
fn ask(sock: &Path, head: RequestHead<'_>, ctx: &[(&str, &[u8])], body: &[u8]) -> String {
    let mut wire = Vec::new();
    encode_request(&head, ctx, body, &Limits::default(), &mut wire).expect("encode");
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    s.write_all(&wire).expect("write");
    let mut fb = FrameBuf::new(FrameKind::Response, 1 << 20);
    assert_eq!(fb.read_from(&mut s).expect("read"), Fill::Complete);
    format!(
        "{:?}",
        decode_response(fb.payload(), &Limits::default()).expect("decode")
    )
}

fn head(key: &str) -> RequestHead<'_> {
    RequestHead {
        key,
        client: "request-test",
        attempt: 1,
        attributes: Attributes::NONE,
    }
}

#[test]
fn accessors_return_what_the_client_sent() {
    let c = start();
    let mut h = head("shop.order.12.JSON");
    h.attempt = 2;
    h.attributes = Attributes::NO_RETRY;
    let got = ask(&c.sock, h, &[("lang", b"fr"), ("trace", b"abc")], b"{}");
    let want = Response::Fault {
        code: 100,
        text: "shop.order.12.JSON|shop|order|12|JSON|request-test|2|Some([102, 114])|lang=fr,trace=abc|true",
    };
    assert_eq!(got, format!("{want:?}"));
}

#[test]
fn the_library_answers_for_a_program_that_does_not() {
    let c = start();
    let got = ask(&c.sock, head("a.b.0.raw"), &[], b"drop");
    assert!(
        got.contains(&format!("{:?}", ErrorCode::NO_ANSWER)),
        "{got}"
    );
    let got = ask(&c.sock, head("a.b.0.raw"), &[], b"zero");
    assert!(got.contains(&format!("{:?}", ErrorCode::INTERNAL)), "{got}");
    assert!(got.contains("fault code 0"), "{got}");
    let got = ask(&c.sock, head("a.b.0.raw"), &[], b"big");
    assert!(
        got.contains(&format!("{:?}", ErrorCode::RESPONSE_TOO_LARGE)),
        "{got}"
    );
    // And it is still serving.
    let got = ask(&c.sock, head("a.b.0.raw"), &[], b"x");
    assert!(got.starts_with("Fault { code: 100"), "{got}");
}
