//! The request loop: accepting connections, reading one request frame at a
//! time under the read timeout, refusing bad input with a framework error,
//! keeping affinity connections, and stopping cleanly on SIGTERM.
//!
//! The request itself, and how it is answered, is `request.rs`; which mode
//! runs is `mode.rs`; the manager's side channels are `managed.rs`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use charon_protocol::report::Outcome;
use charon_protocol::scoreboard::SlotState;
use charon_protocol::{
    decode_request, encode_ok_head, encode_response, Attributes, ErrorCode, FrameBuf, FrameKind,
    Response,
};
use nix::poll::{PollFd, PollFlags};

use crate::error::{Error, ErrorKind};
use crate::idle::IdleWait;
use crate::io::{wait, write_all2};
use crate::managed::Managed;
use crate::mode::{self, Bound, Mode, Source};
use crate::options::Options;
use crate::peer::{Allowed, Peer};
use crate::read::{record, Step};
use crate::request::{split_key, Request};
use crate::sys;

/// Pause after `accept` fails for lack of fds or memory, so the loop does
/// not spin while the shortage lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A service instance: the request loop a service program runs.
///
/// See the [crate documentation](crate) for the theory of operation.
#[derive(Debug)]
pub struct Service {
    buf: FrameBuf,
    core: Core,
}

/// Everything but the read buffer, so that a [`Request`] can borrow the
/// buffer shared (its body) and this mutably (to answer) at once.
#[derive(Debug)]
pub(crate) struct Core {
    name: String,
    pub(crate) mode: Mode,
    pub(crate) opts: Options,
    pub(crate) stop_fd: BorrowedFd<'static>,
    pub(crate) source: Source,
    pub(crate) conn: Option<Conn>,
    pub(crate) managed: Option<Managed>,
    // Dropped last among what matters: removes the accept-mode socket file.
    _bound: Option<Bound>,
    pub(crate) head: Vec<u8>,
    /// `CHARON_ALLOWED_UIDS` / `_GIDS`: who may call.
    allowed: Allowed,
    inflight: Option<InFlight>,
    pub(crate) finished: bool,
    /// How an idle listener waits (managed and accept mode).
    idle: Option<IdleWait>,
    /// When a drain was first seen: it takes connections until
    /// `opts.drain_timeout` after.
    drain_since: Option<Instant>,
}

/// A connection we are reading a request from, or keeping for affinity.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: UnixStream,
    /// When its current request started (accept, or first byte when kept).
    pub(crate) started: Instant,
    /// Until when the current request may take to arrive.
    pub(crate) deadline: Instant,
    /// Kept after a response, waiting for the next request's first byte.
    pub(crate) idle_since: Option<Instant>,
    /// Set when the peer is not allowed to call: its request is read, then
    /// answered `NOT_PERMITTED`.
    pub(crate) refused: Option<Peer>,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    started: Instant,
    request_bytes: u32,
    attempt: u8,
    keep: bool,
}

impl Service {
    /// Starts the service, choosing the mode from the environment with
    /// default [`Options`].
    ///
    /// `name` only labels this program in the library's own messages (a
    /// refused peer, a panic); any short name does, such as the program's
    /// name or the key it is written for. It does not choose which requests
    /// come: the manager's config file (or the socket path in accept mode)
    /// decides that, and the key of each request is in [`Request::key`].
    ///
    /// Call it first thing in `main`: in managed and standalone mode it
    /// takes ownership of the inherited fds 3 to 5, which the program must
    /// not have used. It installs a SIGTERM and SIGINT handler, and a panic
    /// hook that prints one line, `NAME: panicked at FILE:LINE:COL:
    /// MESSAGE`, as the program's last stderr line (the one the manager
    /// shows in `charon stats` and in the reason of a fast fail).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoMode`] if none of the three ways to run applies (the
    /// message names all three); [`ErrorKind::BadEnv`] or
    /// [`ErrorKind::BadFd`] if the environment or an inherited fd is not
    /// what its mode needs; [`ErrorKind::Socket`] if accept mode cannot bind
    /// its path; [`ErrorKind::AlreadyInitialized`] on a second call.
    pub fn init(name: &str) -> Result<Service, Error> {
        Service::init_with(name, Options::default())
    }

    /// As [`Service::init`], with the program's own [`Options`]. The
    /// `CHARON_READ_TIMEOUT_MS` and `CHARON_AFFINITY_TIMEOUT_MS`
    /// environment variables override them.
    ///
    /// # Errors
    ///
    /// As [`Service::init`].
    pub fn init_with(name: &str, opts: Options) -> Result<Service, Error> {
        let env = |k: &str| std::env::var(k).ok();
        let opts = opts.with_env(env)?;
        let allowed = Allowed::from_env(env)?;
        if !sys::claim_process() {
            return Err(Error::new(ErrorKind::AlreadyInitialized));
        }
        // The mode first: it looks at fds 3 and 4, which the wake-up eventfd
        // would otherwise take.
        let setup = mode::setup(&env)?;
        crate::panic::install(name);
        let stop_fd =
            sys::install_stop_handler().map_err(|e| Error::io("install the SIGTERM handler", e))?;
        let idle = match &setup.source {
            Source::Listener(l) => Some(
                IdleWait::new(
                    l.as_fd(),
                    stop_fd,
                    setup.managed.as_ref().map(Managed::report_fd),
                )
                .map_err(|e| Error::io("set up waiting for connections", e))?,
            ),
            Source::Standalone { .. } => None,
        };
        let max = opts.limits.max_request_payload();
        Ok(Service {
            buf: FrameBuf::new(FrameKind::Request, max),
            core: Core {
                name: name.to_string(),
                mode: setup.mode,
                opts,
                stop_fd,
                source: setup.source,
                conn: None,
                managed: setup.managed,
                _bound: setup.bound,
                head: Vec::with_capacity(64),
                allowed,
                inflight: None,
                finished: false,
                drain_since: None,
                idle,
            },
        })
    }

    /// The name given to [`Service::init`].
    #[must_use]
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// How this process is being run.
    #[must_use]
    pub const fn mode(&self) -> Mode {
        self.core.mode
    }

    /// Waits for the next request. `Ok(None)` means "stop now and exit 0":
    /// SIGTERM or SIGINT arrived, SIGUSR1 arrived or the manager is gone
    /// and no connection is left queued on the socket, standalone mode's
    /// one request was served, or the program should otherwise leave.
    ///
    /// Bad input (garbage, a truncated or oversized frame, a client that
    /// sends nothing within the read timeout) is answered with a framework
    /// error and dropped here; it never reaches the program.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] if accepting or waiting fails in a way that will
    /// not heal (the listening socket was closed under us, for instance).
    pub fn next_request(&mut self) -> Result<Option<Request<'_>>, Error> {
        let limits = self.core.opts.limits;
        self.clear_buf();
        let frame_len = loop {
            if !self.core.take_frame(&mut self.buf)? {
                self.core.leave();
                return Ok(None);
            }
            match decode_request(self.buf.payload(), &limits) {
                Ok(_) if self.core.conn.as_ref().is_some_and(|c| c.refused.is_some()) => {
                    self.core.refuse_peer(self.buf.received());
                    self.clear_buf();
                }
                Ok(_) => break self.buf.frame().len(),
                Err(e) => {
                    self.core.refuse_decode_at(&e, self.buf.received());
                    self.clear_buf();
                }
            }
        };
        let view = decode_request(self.buf.payload(), &limits).map_err(|e| {
            // Decoded successfully just above: the bytes have not changed.
            Error::io("decode a request", io::Error::other(e))
        })?;
        let keep = view.head.attributes.contains(Attributes::KEEP_AFFINITY)
            && self.core.mode != Mode::Standalone;
        self.core.begin(&view, frame_len, keep);
        let parts = split_key(view.head.key);
        Ok(Some(Request::new(view, parts, &mut self.core)))
    }

    /// Forgets the last frame; bytes a client pipelined after it are kept
    /// only while its connection is.
    fn clear_buf(&mut self) {
        if self.core.conn.is_none() && self.buf.surplus() > 0 {
            self.buf = FrameBuf::new(
                FrameKind::Request,
                self.core.opts.limits.max_request_payload(),
            );
        } else {
            self.buf.reset();
        }
    }
}

impl Core {
    pub(crate) fn stopping(&self) -> bool {
        self.finished || sys::stop_requested()
    }

    /// Serve what is queued, then stop: SIGUSR1 arrived, or the manager is
    /// gone (its death loses nothing a client already wrote).
    pub(crate) fn draining(&self) -> bool {
        sys::drain_requested() || self.managed.as_ref().is_some_and(Managed::manager_gone)
    }

    /// Gets a whole frame into `buf`. False: time to stop.
    fn take_frame(&mut self, buf: &mut FrameBuf) -> Result<bool, Error> {
        loop {
            if let Source::Standalone { .. } = self.source {
                return Ok(self.standalone_frame(buf));
            }
            if self.conn.is_none() && !self.accept()? {
                return Ok(false);
            }
            match self.read_conn(buf) {
                Step::Frame => return Ok(true),
                Step::Stop => {
                    self.conn = None;
                    return Ok(false);
                }
                Step::Next => {
                    if self.conn.is_none() && buf.surplus() > 0 {
                        *buf = FrameBuf::new(
                            FrameKind::Request,
                            self.opts.limits.max_request_payload(),
                        );
                    } else {
                        buf.reset();
                    }
                }
            }
        }
    }

    /// Waits for and accepts one connection. False: time to stop.
    fn accept(&mut self) -> Result<bool, Error> {
        let Core {
            source,
            conn,
            managed,
            stop_fd,
            opts,
            finished,
            allowed,
            idle,
            drain_since,
            ..
        } = self;
        let Source::Listener(listener) = source else {
            return Ok(false);
        };
        let listener: &UnixListener = listener;
        // Set when a wait ended for a connection: with an exclusive wait no
        // other instance was woken for it, so it is taken even if a stop
        // request came in meanwhile (and served as the request in hand).
        let mut woken = false;
        loop {
            // The request limit is a hard bound: not one connection more,
            // however it woke us.
            if managed.as_ref().is_some_and(Managed::at_limit) {
                return Ok(false);
            }
            let draining =
                sys::drain_requested() || managed.as_ref().is_some_and(Managed::manager_gone);
            // A drain that new clients keep feeding (a dead manager's socket
            // stays in place) ends after the drain timeout.
            let drained = draining
                && drain_since.get_or_insert_with(Instant::now).elapsed() >= opts.drain_timeout;
            let stop = *finished || sys::stop_requested() || drained;
            if stop && !std::mem::take(&mut woken) {
                return Ok(false);
            }
            let e = match sys::accept_nonblocking(listener.as_fd()) {
                Ok(stream) => {
                    if let Some(m) = managed.as_mut() {
                        m.accepted();
                    }
                    let now = Instant::now();
                    let refused = allowed.refuses(&stream);
                    *conn = Some(Conn {
                        stream,
                        started: now,
                        deadline: now + opts.read_timeout,
                        idle_since: None,
                        refused,
                    });
                    return Ok(true);
                }
                Err(e) => e,
            };
            match e.raw_os_error() {
                // Another took it, and we were only to take that one.
                Some(libc::EAGAIN) if stop => return Ok(false),
                // Draining (SIGUSR1, or the manager is gone): the queue is
                // empty, so we are done.
                Some(libc::EAGAIN) if draining => return Ok(false),
                Some(libc::EAGAIN) => {
                    // Going idle. The batch goes out once it is due, not at
                    // every gap: at low load each request ends in a short
                    // idle gap, and flushing there woke the manager once
                    // per request (measured with strace -c: one report and
                    // one manager epoll wake-up per request). A wait that
                    // outlasts the due time ends to send it.
                    let mut due = None;
                    if let Some(m) = managed.as_mut() {
                        m.set_state(SlotState::Idle);
                        match m.flush_due() {
                            Some(d) if d <= Instant::now() => m.flush(),
                            d => due = d,
                        }
                    }
                    // init made the wait set for every listener.
                    let woke = idle
                        .as_ref()
                        .ok_or_else(|| io::Error::other("no wait set for the listener"))
                        .and_then(|w| w.wait(due))
                        .map_err(|e| Error::io("wait for a connection", e))?;
                    if woke.report {
                        if let Some(m) = managed.as_mut() {
                            m.check_channel();
                        }
                    }
                    woken = woke.listener;
                }
                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    let mut fds = [PollFd::new(*stop_fd, PollFlags::POLLIN)];
                    wait(&mut fds, Some(Instant::now() + ACCEPT_BACKOFF))
                        .map_err(|e| Error::io("wait for a connection", e))?;
                }
                _ => return Err(Error::io("accept a connection", e)),
            }
        }
    }

    /// Writes `self.head` and `body` to where the response goes.
    pub(crate) fn write_out(&mut self, body: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + self.opts.write_timeout;
        match (&self.source, &self.conn) {
            (Source::Standalone { output, .. }, _) => {
                write_all2(output.as_fd(), false, &self.head, body, deadline)
            }
            (_, Some(conn)) => write_all2(conn.stream.as_fd(), true, &self.head, body, deadline),
            (_, None) => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn begin(&mut self, view: &charon_protocol::RequestView<'_>, frame_len: usize, keep: bool) {
        let started = self.conn.as_ref().map_or_else(Instant::now, |c| c.started);
        self.inflight = Some(InFlight {
            started,
            request_bytes: u32::try_from(frame_len).unwrap_or(u32::MAX),
            attempt: view.head.attempt,
            keep,
        });
        if let Some(m) = &mut self.managed {
            m.begin(view.head.attempt, frame_len as u64, view.head.client);
        }
    }

    /// Sends an OK response.
    pub(crate) fn answer_ok(&mut self, body: &[u8]) -> Result<(), Error> {
        self.head.clear();
        if encode_ok_head(body.len(), &self.opts.limits, &mut self.head).is_err() {
            let limit = self.opts.limits.max_response_body;
            let text = format!(
                "the service produced a response of {} bytes, over the limit of {limit} bytes",
                body.len()
            );
            self.answer(
                &Response::Error {
                    code: ErrorCode::RESPONSE_TOO_LARGE,
                    text: &text,
                },
                Outcome::Error,
            );
            return Err(Error::new(ErrorKind::ResponseTooLarge {
                len: body.len(),
                limit,
            }));
        }
        let ok = self.write_out(body).is_ok();
        let bytes = self.head.len() + body.len();
        self.complete(
            if ok { Outcome::Ok } else { Outcome::NoAnswer },
            if ok { bytes } else { 0 },
            ok,
        );
        Ok(())
    }

    /// Sends a fault or framework error response.
    pub(crate) fn answer(&mut self, resp: &Response<'_>, outcome: Outcome) {
        self.head.clear();
        let ok = encode_response(resp, &self.opts.limits, &mut self.head).is_ok()
            && self.write_out(&[]).is_ok();
        let bytes = self.head.len();
        self.complete(
            if ok { outcome } else { Outcome::NoAnswer },
            if ok { bytes } else { 0 },
            ok,
        );
    }

    /// Bookkeeping after a response was written (or failed to be).
    fn complete(&mut self, outcome: Outcome, response_bytes: usize, written: bool) {
        let Some(f) = self.inflight.take() else {
            return;
        };
        if let Some(m) = &mut self.managed {
            let r = record(
                f.started,
                f.request_bytes as usize,
                response_bytes,
                outcome,
                f.attempt,
            );
            m.finish(r);
        }
        let at_limit = self.managed.as_ref().is_some_and(Managed::at_limit);
        match &mut self.conn {
            Some(c) if f.keep && written && !at_limit => c.idle_since = Some(Instant::now()),
            _ => self.conn = None,
        }
    }

    /// Answers a peer that may not call with `NOT_PERMITTED` (counted as an
    /// error) and drops its connection; the request it sent is not served.
    fn refuse_peer(&mut self, received: usize) {
        let Some(peer) = self.conn.as_ref().and_then(|c| c.refused) else {
            return;
        };
        let text = format!(
            "{}: peer uid {} gid {} is not allowed to call this service \
             (allowed-uids / allowed-gids)",
            self.name, peer.uid, peer.gid
        );
        self.refuse(ErrorCode::NOT_PERMITTED, &text, received);
    }

    /// Leaving: the slot says so and the last records go out.
    fn leave(&mut self) {
        self.conn = None;
        if let Some(m) = &mut self.managed {
            m.flush();
            m.set_state(SlotState::Exiting);
        }
    }
}
