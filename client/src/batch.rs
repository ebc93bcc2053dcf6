//! A [`Batch`]: many requests in flight at once, in the caller's thread,
//! driven by one `mio::Poll` under one timeout clock.
//!
//! Each request is an [`Exchange`] registered once (edge-triggered, readable
//! and writable) under a token equal to its index; every readiness event
//! advances that exchange as far as it goes. Connecting, the one retry and
//! affinity follow the same rules as [`Client::call`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::client::{deadline_after, may_retry, Client};
use crate::error::{Error, ErrorKind};
use crate::exchange::{Exchange, Step};
use crate::request::Request;
use charon_protocol::Attributes;

/// Identifies a request within its [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(usize);

impl RequestId {
    /// The request's position in its batch, from 0 in order of
    /// [`Batch::add`].
    #[must_use]
    pub const fn index(self) -> usize {
        self.0
    }
}

/// A result as a batch stores it.
pub type Outcome = Result<Vec<u8>, Error>;

#[derive(Debug)]
enum State {
    Live(Exchange),
    /// Finished; `None` once the caller took the result.
    Done(Option<Outcome>),
}

#[derive(Debug)]
struct Entry {
    req: Request,
    head: Vec<u8>,
    attempt: u8,
    state: State,
}

/// Many requests progressing in parallel on non-blocking sockets, driven by
/// one poll in the calling thread, under one timeout clock.
///
/// The clock starts at the first [`Batch::add`] and runs for the client's
/// timeout unless [`Batch::set_timeout`] says otherwise. Requests start at
/// once when added; the `wait_*` methods drive them. A request still
/// unanswered when the clock runs out gets [`ErrorKind::Timeout`].
///
/// ```no_run
/// use charon_client::{Client, Request};
/// let mut client = Client::new()?;
/// let mut batch = client.batch();
/// let a = batch.add(Request::new("system.echo.0.raw", b"a".to_vec()))?;
/// let b = batch.add(Request::new("system.echo.0.raw", b"b".to_vec()))?;
/// batch.wait_all();
/// assert_eq!(batch.take(a).unwrap()?, b"a");
/// assert_eq!(batch.take(b).unwrap()?, b"b");
/// # Ok::<(), charon_client::Error>(())
/// ```
#[derive(Debug)]
pub struct Batch<'c> {
    client: &'c mut Client,
    poll: Option<Poll>,
    events: Events,
    entries: Vec<Entry>,
    timeout: Duration,
    deadline: Option<Instant>,
    /// Finished requests not yet reported by `wait_any`.
    completed: VecDeque<usize>,
    live: usize,
}

impl Client {
    /// Starts a batch of requests sharing one timeout clock.
    #[must_use]
    pub fn batch(&mut self) -> Batch<'_> {
        Batch::new(self)
    }
}

impl<'c> Batch<'c> {
    fn new(client: &'c mut Client) -> Batch<'c> {
        let timeout = client.timeout();
        Batch {
            client,
            poll: None,
            events: Events::with_capacity(64),
            entries: Vec::new(),
            timeout,
            deadline: None,
            completed: VecDeque::new(),
            live: 0,
        }
    }

    /// Sets the batch's timeout and restarts its clock from now.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.deadline = Some(deadline_after(timeout));
    }

    /// Number of requests added.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no request was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of requests not finished yet.
    #[must_use]
    pub const fn pending(&self) -> usize {
        self.live
    }

    /// Adds a request and starts it: connects and sends what the socket
    /// takes without blocking. A failure to reach the service (not found,
    /// overloaded ...) becomes the request's result.
    ///
    /// # Errors
    ///
    /// A request that breaks a rule (invalid key, reserved context name,
    /// too large) is refused here and nothing is sent; creating the poll
    /// may fail with [`ErrorKind::Io`].
    pub fn add(&mut self, req: Request) -> Result<RequestId, Error> {
        let mut head = Vec::new();
        let limits = *self.client.limits();
        req.encode_head(self.client.name(), 1, &limits, &mut head)?;
        if self.poll.is_none() {
            let poll = Poll::new()
                .map_err(|e| Error::with_key(Error::io("create a poll", e), req.key()))?;
            self.poll = Some(poll);
        }
        let deadline = deadline_after(self.timeout);
        self.deadline.get_or_insert(deadline);
        let idx = self.entries.len();
        self.entries.push(Entry {
            req,
            head,
            attempt: 1,
            state: State::Done(None),
        });
        self.live += 1;
        self.start(idx);
        Ok(RequestId(idx))
    }

    /// Waits until every request has finished (answered, failed or timed
    /// out).
    pub fn wait_all(&mut self) {
        self.drive(|b| b.live == 0);
    }

    /// Waits for the next request to finish and returns it; `None` when
    /// every finished request has been returned already and none is left.
    /// Each request is returned once.
    pub fn wait_any(&mut self) -> Option<RequestId> {
        loop {
            self.drive(|b| !b.completed.is_empty() || b.live == 0);
            let idx = self.completed.pop_front()?;
            // A result taken meanwhile (by `wait_one` or `take`) is skipped.
            if matches!(self.entries[idx].state, State::Done(Some(_))) {
                return Some(RequestId(idx));
            }
        }
    }

    /// Waits for request `id` and takes its result.
    ///
    /// # Errors
    ///
    /// The request's own failure; [`ErrorKind::InvalidOption`] if `id` is
    /// not of this batch or its result was already taken.
    pub fn wait_one(&mut self, id: RequestId) -> Outcome {
        if id.0 >= self.entries.len() {
            return Err(ErrorKind::InvalidOption(format!(
                "request {} is not in this batch of {}",
                id.0,
                self.entries.len()
            ))
            .into());
        }
        self.drive(|b| matches!(b.entries[id.0].state, State::Done(_)));
        self.take(id).unwrap_or_else(|| {
            Err(ErrorKind::InvalidOption(format!(
                "the result of request {} was already taken",
                id.0
            ))
            .into())
        })
    }

    /// Waits until every request is fully sent (or finished): what a
    /// caller of no-wait requests needs before it may exit.
    pub fn wait_sent(&mut self) {
        self.drive(|b| {
            b.entries.iter().all(|e| match &e.state {
                State::Live(ex) => ex.is_sent(),
                State::Done(_) => true,
            })
        });
    }

    /// The result of a finished request, without taking it:
    /// `Some(Ok(body))` for a response, `Some(Err(error))` for a fault or a
    /// failure (see [`crate::ErrorKind`]), `None` while the request is
    /// still running, once [`Batch::take`] took it, or for an id of another
    /// batch.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), charon_client::Error> {
    /// # let mut client = charon_client::Client::new()?;
    /// let mut batch = client.batch();
    /// let id = batch.add(charon_client::Request::new("system.echo.0.raw", b"hi".to_vec()))?;
    /// batch.wait_all();
    /// match batch.result(id) {
    ///     Some(Ok(body)) => println!("{} bytes", body.len()),
    ///     Some(Err(e)) => eprintln!("{e}"),
    ///     None => eprintln!("still running"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn result(&self, id: RequestId) -> Option<&Outcome> {
        match &self.entries.get(id.0)?.state {
            State::Done(r) => r.as_ref(),
            State::Live(_) => None,
        }
    }

    /// Takes the result of a finished request; `None` while it runs or
    /// once taken.
    pub fn take(&mut self, id: RequestId) -> Option<Outcome> {
        match &mut self.entries.get_mut(id.0)?.state {
            State::Done(r) => r.take(),
            State::Live(_) => None,
        }
    }

    /// The request `id` as it was added.
    #[must_use]
    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.entries.get(id.0).map(|e| &e.req)
    }

    /// Polls and advances exchanges until `done` holds, nothing is live, or
    /// the clock runs out (every live request then times out).
    fn drive(&mut self, done: impl Fn(&Batch<'_>) -> bool) {
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        while !done(self) && self.live > 0 {
            let deadline = self.deadline.unwrap_or_else(Instant::now);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.expire();
                break;
            }
            let Some(poll) = self.poll.as_mut() else {
                break;
            };
            match poll.poll(&mut events, Some(left)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail_live(|| Error::io("wait for services", clone_io(&e)));
                    break;
                }
            }
            for ev in &events {
                self.step(ev.token().0);
            }
        }
        self.events = events;
    }

    /// Connects request `idx` (attempt 1 or its retry) and advances it.
    fn start(&mut self, idx: usize) {
        let key = self.entries[idx].req.key().to_string();
        let stream = match self.open(idx, &key) {
            Ok(stream) => stream,
            Err(e) => return self.finish(idx, Err(e)),
        };
        let ex = Exchange::new(stream, self.client.limits());
        let fd = ex.fd().as_raw_fd();
        self.entries[idx].state = State::Live(ex);
        match self.register(fd, idx) {
            Ok(()) => self.step(idx),
            Err(e) => self.finish(
                idx,
                Err(Error::with_key(
                    Error::io("register with the poll", e),
                    &key,
                )),
            ),
        }
    }

    /// The connection request `idx` goes over, non-blocking for the poll.
    fn open(&mut self, idx: usize, key: &str) -> Result<UnixStream, Error> {
        let entry = &self.entries[idx];
        let (attrs, attempt) = (entry.req.attributes(), entry.attempt);
        let s = self.client.open(key, attrs, attempt)?;
        // A connection kept by `Client::call` is in blocking mode; the
        // poll needs it non-blocking.
        if attrs.contains(Attributes::KEEP_AFFINITY) || attrs.contains(Attributes::NEED_AFFINITY) {
            s.set_nonblocking(true).map_err(|e| {
                Error::with_key(Error::io("make a kept connection non-blocking", e), key)
            })?;
        }
        Ok(s)
    }

    /// Registers `fd`, request `idx`'s connection, with the poll.
    fn register(&self, fd: RawFd, idx: usize) -> io::Result<()> {
        let poll = self.poll.as_ref().ok_or(io::ErrorKind::NotFound)?;
        poll.registry().register(
            &mut SourceFd(&fd),
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Advances request `idx` after a readiness event.
    fn step(&mut self, idx: usize) {
        let limits = *self.client.limits();
        let Some(entry) = self.entries.get_mut(idx) else {
            return;
        };
        let State::Live(ex) = &mut entry.state else {
            // A stale event for a request already finished.
            return;
        };
        let attrs = entry.req.attributes();
        let no_wait = attrs.contains(Attributes::NO_WAIT);
        match ex.advance(&entry.head, entry.req.body(), no_wait, &limits) {
            Step::WantRead | Step::WantWrite => {}
            Step::Sent => self.finish(idx, Ok(Vec::new())),
            Step::Response(r) => self.answered(idx, r),
            Step::SilentClose if may_retry(attrs, entry.attempt) => self.retry(idx),
            Step::SilentClose => {
                let key = entry.req.key().to_string();
                self.finish(
                    idx,
                    Err(Error::with_key(
                        ErrorKind::Disconnected { received: 0 },
                        &key,
                    )),
                );
            }
        }
    }

    /// Request `idx`'s response (or failure) came: its connection is kept
    /// if asked, and it is done.
    fn answered(&mut self, idx: usize, r: Result<Vec<u8>, ErrorKind>) {
        let entry = &mut self.entries[idx];
        let State::Live(ex) = std::mem::replace(&mut entry.state, State::Done(None)) else {
            return;
        };
        let attrs = entry.req.attributes();
        let key = entry.req.key().to_string();
        if attrs.contains(Attributes::KEEP_AFFINITY) {
            // The kept connection will be polled by someone else.
            if let Some(p) = &self.poll {
                let _ = p.registry().deregister(&mut SourceFd(&ex.fd().as_raw_fd()));
            }
        }
        self.client.keep_if_asked(&key, attrs, &r, ex.into_stream());
        self.finish(idx, r.map_err(|k| Error::with_key(k, &key)));
    }

    /// Request `idx`'s connection closed silently: it is sent again, once,
    /// on a fresh connection.
    fn retry(&mut self, idx: usize) {
        let limits = *self.client.limits();
        let entry = &mut self.entries[idx];
        entry.attempt = 2;
        let client_name = self.client.name().to_string();
        let encoded = entry
            .req
            .encode_head(&client_name, 2, &limits, &mut entry.head);
        // Closing the old socket removes it from the poll.
        entry.state = State::Done(None);
        match encoded {
            Ok(()) => self.start(idx),
            Err(e) => self.finish(idx, Err(e)),
        }
    }

    fn finish(&mut self, idx: usize, outcome: Outcome) {
        let entry = &mut self.entries[idx];
        if matches!(entry.state, State::Done(Some(_))) {
            return;
        }
        entry.state = State::Done(Some(outcome));
        self.live -= 1;
        self.completed.push_back(idx);
    }

    fn expire(&mut self) {
        let after = self.timeout;
        for idx in 0..self.entries.len() {
            if let State::Live(_) = self.entries[idx].state {
                let key = self.entries[idx].req.key().to_string();
                self.finish(
                    idx,
                    Err(Error::with_key(ErrorKind::Timeout { after }, &key)),
                );
            }
        }
    }

    fn fail_live(&mut self, make: impl Fn() -> ErrorKind) {
        for idx in 0..self.entries.len() {
            if let State::Live(_) = self.entries[idx].state {
                let key = self.entries[idx].req.key().to_string();
                self.finish(idx, Err(Error::with_key(make(), &key)));
            }
        }
    }
}

fn clone_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}
