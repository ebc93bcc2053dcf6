//! The client against small servers written here with the protocol crate,
//! one per failure the protocol allows: garbage, silent close, partial
//! response, no answer, full backlog, early answer, affinity, parallel
//! batches. Real services are tested at the top level (`tests/client.rs`).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use charon_client::{Client, ErrorKind, Request};
use charon_protocol::{
    decode_request, encode_response, Fill, FrameBuf, FrameKind, Limits, Response,
};

/// What a fake server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    attempt: u8,
    body: Vec<u8>,
    conn: usize,
}

/// A listener on a thread; each accepted connection runs `handler` on its
/// own thread. Dropping it stops accepting and joins every thread.
struct Server {
    stop: Arc<AtomicBool>,
    accepts: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

type Handler = dyn Fn(&mut UnixStream, usize, &Mutex<Vec<Seen>>) + Send + Sync;

impl Server {
    fn start(
        path: &Path,
        handler: impl Fn(&mut UnixStream, usize, &Mutex<Vec<Seen>>) + Send + Sync + 'static,
    ) -> Server {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepts = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (s, a, v, d) = (stop.clone(), accepts.clone(), seen.clone(), closed.clone());
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let n = a.fetch_add(1, Ordering::SeqCst);
                        let (h, v, d) = (handler.clone(), v.clone(), d.clone());
                        workers.push(std::thread::spawn(move || {
                            conn.set_read_timeout(Some(Duration::from_millis(50)))
                                .unwrap();
                            h(&mut conn, n, &v);
                            drop(conn);
                            d.fetch_add(1, Ordering::SeqCst);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Server {
            stop,
            accepts,
            closed,
            seen,
            thread: Some(thread),
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request frame, retrying reads that time out (the handler's
/// socket has a short read timeout so that no thread can hang a test).
fn read_request(conn: &mut UnixStream, n: usize, seen: &Mutex<Vec<Seen>>) -> Option<Seen> {
    let mut fb = FrameBuf::new(FrameKind::Request, Limits::default().max_request_payload());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fb.read_from(conn) {
            Ok(Fill::Complete) => break,
            Ok(Fill::Eof { .. }) => return None,
            Ok(Fill::Pending) => {}
            Err(charon_protocol::ReadError::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("server read: {e}"),
        }
        if Instant::now() > deadline {
            return None;
        }
    }
    let req = decode_request(fb.payload(), &Limits::default()).unwrap();
    let s = Seen {
        attempt: req.head.attempt,
        body: req.body.to_vec(),
        conn: n,
    };
    seen.lock().unwrap().push(s.clone());
    Some(s)
}

fn respond(conn: &mut UnixStream, resp: &Response<'_>) {
    let mut out = Vec::new();
    encode_response(resp, &Limits::default(), &mut out).unwrap();
    let _ = conn.write_all(&out);
}

fn echo(conn: &mut UnixStream, n: usize, seen: &Mutex<Vec<Seen>>) {
    if let Some(s) = read_request(conn, n, seen) {
        respond(conn, &Response::Ok(&s.body));
    }
}

fn setup(timeout: Duration) -> (tempfile::TempDir, Client) {
    let dir = tempfile::Builder::new()
        .prefix("cc")
        .tempdir_in("/tmp")
        .unwrap();
    let client = Client::builder()
        .run_dir(dir.path())
        .timeout(timeout)
        .name("fake-test")
        .build()
        .unwrap();
    (dir, client)
}

fn sock(dir: &tempfile::TempDir, key: &str) -> PathBuf {
    dir.path().join(format!("{key}.sock"))
}

#[test]
fn echo_round_trip_and_wildcard() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let srv = Server::start(&sock(&dir, "test..0.raw"), echo);
    assert_eq!(client.call("test.anything.0.raw", b"hi").unwrap(), b"hi");
    assert_eq!(client.call("test.other.0.raw", b"").unwrap(), b"");
    assert_eq!(srv.accepts(), 2);
    let err = client.call("nope.x.0.raw", b"").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NotFound { stale: None, .. }),
        "{err}"
    );
    let err = client.call("bad.key.01.raw", b"").unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidKey(_)), "{err}");
}

#[test]
fn garbage_is_a_protocol_error_not_a_hang() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let _srv = Server::start(&sock(&dir, "g.f.0.raw"), |c, n, s| {
        let _ = read_request(c, n, s);
        let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let t = Instant::now();
    let err = client.call("g.f.0.raw", b"x").unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Protocol(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn silent_close_is_retried_once_as_attempt_two() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let srv = Server::start(&sock(&dir, "s.f.0.raw"), |c, n, s| {
        let got = read_request(c, n, s);
        if n > 0 {
            if let Some(got) = got {
                respond(c, &Response::Ok(&got.body));
            }
        }
        // The first connection closes without a byte of response.
    });
    assert_eq!(client.call("s.f.0.raw", b"again").unwrap(), b"again");
    let seen = srv.seen();
    assert_eq!(seen.iter().map(|s| s.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(srv.accepts(), 2);
}

#[test]
fn silent_close_with_no_retry_is_disconnected() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let srv = Server::start(&sock(&dir, "s.f.0.raw"), |c, n, s| {
        let _ = read_request(c, n, s);
    });
    let err = client
        .call_request(&Request::new("s.f.0.raw", b"x".to_vec()).no_retry())
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Disconnected { received: 0 }),
        "{err}"
    );
    assert_eq!(srv.accepts(), 1);
}

#[test]
fn close_after_partial_response_is_disconnected_not_retried() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let srv = Server::start(&sock(&dir, "p.f.0.raw"), |c, n, s| {
        let _ = read_request(c, n, s);
        let mut out = Vec::new();
        encode_response(&Response::Ok(b"0123456789"), &Limits::default(), &mut out).unwrap();
        let _ = c.write_all(&out[..out.len() - 3]);
    });
    let err = client.call("p.f.0.raw", b"x").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Disconnected { received } if *received > 0),
        "{err}"
    );
    assert_eq!(srv.accepts(), 1);
}

#[test]
fn no_answer_times_out_within_the_deadline() {
    let (dir, mut client) = setup(Duration::from_millis(300));
    let _srv = Server::start(&sock(&dir, "t.f.0.raw"), |c, n, s| {
        let _ = read_request(c, n, s);
        let mut buf = [0u8; 1];
        // Hold the connection open until the client gives up.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(0) = c.read(&mut buf) {
                return;
            }
        }
    });
    let t = Instant::now();
    let err = client.call("t.f.0.raw", b"x").unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout { .. }), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn full_backlog_is_overloaded_at_once() {
    use nix::sys::socket::{
        bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let (dir, mut client) = setup(Duration::from_secs(10));
    let path = sock(&dir, "o.f.0.raw");
    let listener = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let addr = UnixAddr::new(&path).unwrap();
    bind(listener.as_raw_fd(), &addr).unwrap();
    listen(&listener, Backlog::new(1).unwrap()).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..64 {
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        if connect(s.as_raw_fd(), &addr).is_err() {
            break;
        }
        fillers.push(s);
    }
    assert!(fillers.len() < 64, "the backlog never filled");
    let t = Instant::now();
    let err = client.call("o.f.0.raw", b"x").unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Overloaded), "{err}");
    assert!(err.is_retryable());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn answer_before_reading_the_request_still_arrives() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let _srv = Server::start(&sock(&dir, "e.f.0.raw"), |c, _, _| {
        respond(
            c,
            &Response::Unavailable {
                retry_after: 7,
                reason: "exited with status 3",
            },
        );
    });
    // A body far larger than the socket buffers, so the send cannot finish
    // before the server closes.
    let body = vec![7u8; 8 << 20];
    let err = client.call("e.f.0.raw", &body).unwrap_err();
    match err.kind() {
        ErrorKind::Unavailable {
            retry_after,
            reason,
        } => {
            assert_eq!(*retry_after, 7);
            assert_eq!(reason, "exited with status 3");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn faults_and_framework_errors_are_told_apart() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let _srv = Server::start(&sock(&dir, "f.f.0.raw"), |c, n, s| {
        let got = read_request(c, n, s);
        if got.is_some_and(|g| g.body == b"fault") {
            respond(
                c,
                &Response::Fault {
                    code: 101,
                    text: "no such user",
                },
            );
        } else {
            respond(
                c,
                &Response::Error {
                    code: charon_protocol::ErrorCode::NO_ANSWER,
                    text: "the service did not answer",
                },
            );
        }
    });
    let err = client.call("f.f.0.raw", b"fault").unwrap_err();
    assert!(err.is_service_fault());
    assert!(
        matches!(err.kind(), ErrorKind::ServiceFault { code: 101, text } if text == "no such user")
    );
    let err = client.call("f.f.0.raw", b"other").unwrap_err();
    assert!(!err.is_service_fault());
    assert!(
        matches!(err.kind(), ErrorKind::Framework { code, .. } if *code == charon_protocol::ErrorCode::NO_ANSWER),
        "{err}"
    );
}

#[test]
fn affinity_reuses_the_kept_connection() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let srv = Server::start(&sock(&dir, "a.f.0.raw"), |c, n, s| {
        // Serve requests on this connection until the client closes it.
        while let Some(got) = read_request(c, n, s) {
            respond(c, &Response::Ok(&got.body));
        }
    });
    let err = client
        .call_request(&Request::new("a.f.0.raw", b"1".to_vec()).need_affinity())
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoAffinity), "{err}");
    assert_eq!(srv.accepts(), 0, "need-affinity must not open a connection");
    client
        .call_request(&Request::new("a.f.0.raw", b"1".to_vec()).keep_affinity())
        .unwrap();
    assert!(client.has_affinity("a.f.0.raw"));
    client
        .call_request(
            &Request::new("a.f.0.raw", b"2".to_vec())
                .need_affinity()
                .keep_affinity(),
        )
        .unwrap();
    client
        .call_request(&Request::new("a.f.0.raw", b"3".to_vec()).need_affinity())
        .unwrap();
    assert!(!client.has_affinity("a.f.0.raw"));
    let conns: Vec<usize> = srv.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, [0, 0, 0]);
}

#[test]
fn batch_runs_requests_in_parallel_across_services() {
    let (dir, mut client) = setup(Duration::from_secs(20));
    let slow = |c: &mut UnixStream, n: usize, s: &Mutex<Vec<Seen>>| {
        if let Some(got) = read_request(c, n, s) {
            std::thread::sleep(Duration::from_millis(200));
            respond(c, &Response::Ok(&got.body));
        }
    };
    let _a = Server::start(&sock(&dir, "b.a.0.raw"), slow);
    let _b = Server::start(&sock(&dir, "b.b.0.raw"), slow);
    let mut batch = client.batch();
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 0..20u8 {
        let key = if i % 2 == 0 { "b.a.0.raw" } else { "b.b.0.raw" };
        ids.push(batch.add(Request::new(key, vec![i; 1000])).unwrap());
    }
    let missing = batch.add(Request::new("b.c.0.raw", Vec::new())).unwrap();
    batch.wait_all();
    // 20 sleeps of 200 ms would take 4 s one after the other.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(batch.take(id).unwrap().unwrap(), vec![i as u8; 1000]);
    }
    assert!(matches!(
        batch.take(missing).unwrap().unwrap_err().kind(),
        ErrorKind::NotFound { .. }
    ));
}

#[test]
fn batch_wait_any_reports_each_once_and_times_out_the_rest() {
    let (dir, mut client) = setup(Duration::from_secs(20));
    let _srv = Server::start(&sock(&dir, "w.f.0.raw"), |c, n, s| {
        if let Some(got) = read_request(c, n, s) {
            if got.body == b"hang" {
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut b = [0u8; 1];
                while Instant::now() < deadline && !matches!(c.read(&mut b), Ok(0)) {}
            } else {
                respond(c, &Response::Ok(&got.body));
            }
        }
    });
    let mut batch = client.batch();
    batch.set_timeout(Duration::from_millis(500));
    let fast = batch
        .add(Request::new("w.f.0.raw", b"fast".to_vec()))
        .unwrap();
    let hang = batch
        .add(Request::new("w.f.0.raw", b"hang".to_vec()))
        .unwrap();
    let bad = batch.add(Request::new("w.f.0.raw", Vec::new()).context("charon.x", "y"));
    assert!(matches!(
        bad.unwrap_err().kind(),
        ErrorKind::ReservedContext { .. }
    ));
    let first = batch.wait_any().unwrap();
    assert_eq!(first, fast);
    assert_eq!(batch.take(fast).unwrap().unwrap(), b"fast");
    let second = batch.wait_any().unwrap();
    assert_eq!(second, hang);
    assert!(matches!(
        batch.take(hang).unwrap().unwrap_err().kind(),
        ErrorKind::Timeout { .. }
    ));
    assert_eq!(batch.wait_any(), None);
}

#[test]
fn no_wait_is_done_once_sent() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    let srv = Server::start(&sock(&dir, "n.f.0.raw"), |c, n, s| {
        let _ = read_request(c, n, s);
    });
    let got = client
        .call_request(&Request::new("n.f.0.raw", b"fire".to_vec()).no_wait())
        .unwrap();
    assert!(got.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.seen().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(srv.seen()[0].body, b"fire");
    let mut batch = client.batch();
    let id = batch
        .add(Request::new("n.f.0.raw", vec![1u8; 1 << 20]).no_wait())
        .unwrap();
    batch.wait_sent();
    assert_eq!(batch.wait_one(id).unwrap(), b"");
}

#[test]
fn closed_kept_connection_is_a_silent_close() {
    let (dir, mut client) = setup(Duration::from_secs(10));
    // One request per connection, then close: every kept connection dies.
    let srv = Server::start(&sock(&dir, "k.f.0.raw"), echo);
    let keep = || Request::new("k.f.0.raw", b"k".to_vec()).keep_affinity();
    client.call_request(&keep()).unwrap();
    wait_closed(&srv, 1);
    // Keep-affinity over a dead kept connection: retried on a fresh one.
    assert_eq!(client.call_request(&keep()).unwrap(), b"k");
    let attempts: Vec<u8> = srv.seen().iter().map(|s| s.attempt).collect();
    assert_eq!(attempts, [1, 2]);
    wait_closed(&srv, 2);
    // Need-affinity over a dead kept connection: lost, not retried.
    let err = client
        .call_request(&Request::new("k.f.0.raw", b"n".to_vec()).need_affinity())
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Disconnected { .. }),
        "{err}"
    );
    assert_eq!(srv.accepts(), 2);
}

/// Waits until the server has closed `n` connections.
fn wait_closed(srv: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.closed.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "server never closed {n} connections"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
