//! Client loops against a running charond: `n` threads, each with its own
//! client, calling until stopped and checking every answer against its
//! request's body, with each call's end tallied by kind. The loops stop and
//! are joined on drop, so a failing test leaves no thread calling.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use charon_client::{Client, ErrorKind, Request};

use super::daemon::CLIENT_NAME;
use super::wait_for;

/// How long [`Load::wait_more`] waits: generous, the machine is shared.
const PATIENCE: Duration = Duration::from_secs(60);

/// A client on `run` with this timeout, named [`CLIENT_NAME`].
pub fn client_at(run: &Path, timeout: Duration) -> Client {
    Client::builder()
        .run_dir(run)
        .timeout(timeout)
        .name(CLIENT_NAME)
        .build()
        .expect("client")
}

/// How the calls of a run ended.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Answered with the request's own body.
    pub ok: u64,
    /// `Unavailable`: the service was fast-failed.
    pub fast_failed: u64,
    /// `Timeout`.
    pub timed_out: u64,
    /// `Disconnected`: closed unanswered (after the client's one retry).
    pub disconnected: u64,
    /// Anything else, a wrong body included.
    pub other: u64,
    /// The first few errors that were not answers, as text.
    pub errors: Vec<String>,
    /// The slowest call.
    pub slowest: Duration,
}

impl Tally {
    /// Every call made.
    pub fn total(&self) -> u64 {
        self.ok + self.fast_failed + self.timed_out + self.disconnected + self.other
    }

    fn add(&mut self, t: Tally) {
        self.ok += t.ok;
        self.fast_failed += t.fast_failed;
        self.timed_out += t.timed_out;
        self.disconnected += t.disconnected;
        self.other += t.other;
        self.slowest = self.slowest.max(t.slowest);
        for e in t.errors {
            self.note(e);
        }
    }

    fn note(&mut self, error: String) {
        if self.errors.len() < 10 {
            self.errors.push(error);
        }
    }

    /// Counts one call's end; true if it was answered.
    fn record(
        &mut self,
        res: Result<Vec<u8>, charon_client::Error>,
        body: &[u8],
        took: Duration,
    ) -> bool {
        self.slowest = self.slowest.max(took);
        match res {
            Ok(b) if b == body => {
                self.ok += 1;
                return true;
            }
            Ok(b) => {
                self.other += 1;
                self.note(format!(
                    "{:?} answered {:?}",
                    String::from_utf8_lossy(body),
                    String::from_utf8_lossy(&b)
                ));
            }
            Err(e) => {
                let text = e.to_string();
                match e.into_kind() {
                    ErrorKind::Unavailable { .. } => self.fast_failed += 1,
                    ErrorKind::Timeout { .. } => self.timed_out += 1,
                    ErrorKind::Disconnected { .. } => self.disconnected += 1,
                    _ => self.other += 1,
                }
                self.note(text);
            }
        }
        false
    }
}

/// Client loops running until [`Load::finish`] (or drop).
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    loops: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// `n` loops of plain echo requests to `key` (loop `i` sends `loop i`
    /// request `k`), each client with `timeout`.
    pub fn echo(run: &Path, key: &str, n: usize, timeout: Duration) -> Load {
        let key = key.to_string();
        Load::start(run, n, timeout, move |i, k| {
            Request::new(key.as_str(), format!("loop {i} request {k}").into_bytes())
        })
    }

    /// `n` loops; loop `i`'s `k`th call sends `request(i, k)`, whose body
    /// the answer must echo.
    pub fn start(
        run: &Path,
        n: usize,
        timeout: Duration,
        request: impl Fn(usize, u64) -> Request + Send + Sync + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let request = Arc::new(request);
        let loops = (0..n)
            .map(|i| {
                let (stop, answered, request) = (
                    Arc::clone(&stop),
                    Arc::clone(&answered),
                    Arc::clone(&request),
                );
                let mut c = client_at(run, timeout);
                std::thread::spawn(move || {
                    let mut t = Tally::default();
                    let mut k = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let req = request(i, k);
                        let t0 = Instant::now();
                        let res = c.call_request(&req);
                        if t.record(res, req.body(), t0.elapsed()) {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        k += 1;
                    }
                    t
                })
            })
            .collect();
        Load {
            stop,
            answered,
            loops,
        }
    }

    /// Waits until `n` more calls have been answered.
    pub fn wait_more(&self, n: u64, what: &str) {
        let before = self.answered.load(Ordering::Relaxed);
        wait_for(PATIENCE, what, || {
            self.answered.load(Ordering::Relaxed) >= before + n
        });
    }

    /// Stops the loops and sums their tallies.
    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for l in self.loops.drain(..) {
            total.add(l.join().expect("client loop"));
        }
        total
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for l in self.loops.drain(..) {
            let _ = l.join();
        }
    }
}
