//! The state of a running service apart from its read buffer ([`Core`]),
//! so that a `Request` can borrow the buffer shared (its body) and this
//! mutably (to answer) at once: accepting connections, answering the
//! request in hand, and the report record of each.
//!
//! Reading a request frame is `read.rs`; the request the program sees is
//! `request.rs`; the public face and its request loop are `service.rs`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use charon_protocol::report::{Outcome, Record};
use charon_protocol::scoreboard::SlotState;
use charon_protocol::{encode_ok_head, encode_response, ErrorCode, Response};
use nix::poll::{PollFd, PollFlags};

use crate::bind::Bound;
use crate::error::{Error, ErrorKind};
use crate::idle::IdleWait;
use crate::io::{wait, write_all2};
use crate::managed::Managed;
use crate::mode::{Mode, Setup, Source};
use crate::options::Options;
use crate::peer::{Allowed, Peer};
use crate::sys;
use crate::template::Template;

/// Pause after `accept` fails for lack of fds or memory, so the loop does
/// not spin while the shortage lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Everything but the read buffer, so that a `Request` can borrow the
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
    /// The process that made this core: a child the program forks
    /// (without exec) has copies of what the parent's core owns.
    pid: u32,
    /// A template's endpoints until its first `next_request`.
    template: Option<Template>,
}

impl Drop for Core {
    fn drop(&mut self) {
        // In a forked child (its panic unwinding through main, say), the
        // slot, the unsent records and the accept-mode socket file are
        // the parent's: dropping them would mark the parent's slot
        // exiting, send its records twice and unlink its socket. The
        // child's copies of their fds are left to its exit.
        if self.forked() {
            std::mem::forget(self.managed.take());
            std::mem::forget(self._bound.take());
        }
    }
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

impl Conn {
    /// A connection just accepted: its request may take `read_timeout` to
    /// arrive; a peer `allowed` refuses is read, then answered
    /// `NOT_PERMITTED`.
    fn accepted(stream: UnixStream, opts: &Options, allowed: &Allowed) -> Conn {
        let now = Instant::now();
        let refused = allowed.refuses(&stream);
        Conn {
            stream,
            started: now,
            deadline: now + opts.read_timeout,
            idle_since: None,
            refused,
        }
    }
}

/// Whether to serve what is queued, then stop: SIGUSR1 arrived, or the
/// manager is gone (its death loses nothing a client already wrote).
fn drain_wanted(managed: Option<&Managed>) -> bool {
    sys::drain_requested() || managed.is_some_and(Managed::manager_gone)
}

/// Whether the listener drains ([`drain_wanted`]), and whether it is to
/// stop taking connections: finished, asked to stop, or drained. A drain
/// that new clients keep feeding (a dead manager's socket stays in place)
/// ends after the drain timeout.
fn stop_wanted(
    managed: Option<&Managed>,
    finished: bool,
    drain_since: &mut Option<Instant>,
    opts: &Options,
) -> (bool, bool) {
    let draining = drain_wanted(managed);
    let drained =
        draining && drain_since.get_or_insert_with(Instant::now).elapsed() >= opts.drain_timeout;
    (draining, finished || sys::stop_requested() || drained)
}

/// What the listener does after `accept` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterError {
    /// Take no more connections.
    Stop,
    /// Nothing queued: wait until something comes.
    WaitIdle,
    /// Try `accept` again at once.
    Again,
    /// Out of fds or memory: pause, so the loop does not spin meanwhile.
    Pause,
    /// Give up on the listener.
    Fail,
}

/// The listener's next move after `accept` failed with `errno`, when it
/// was to `stop` after the connection that woke it, or is `draining`.
fn after_accept_error(errno: Option<i32>, stop: bool, draining: bool) -> AfterError {
    match errno {
        // Another took it, and we were only to take that one.
        Some(libc::EAGAIN) if stop => AfterError::Stop,
        // Draining (SIGUSR1, or the manager is gone): the queue is empty,
        // so we are done.
        Some(libc::EAGAIN) if draining => AfterError::Stop,
        Some(libc::EAGAIN) => AfterError::WaitIdle,
        Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => AfterError::Again,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AfterError::Pause,
        _ => AfterError::Fail,
    }
}

/// Waits [`ACCEPT_BACKOFF`], or less if a stop signal comes (`stop_fd`).
fn pause(stop_fd: BorrowedFd<'_>) -> Result<(), Error> {
    let mut fds = [PollFd::new(stop_fd, PollFlags::POLLIN)];
    wait(&mut fds, Some(Instant::now() + ACCEPT_BACKOFF))
        .map_err(|e| Error::io("wait for a connection", e))?;
    Ok(())
}

/// Going idle: waits on the listener (and the report channel) until a
/// connection or a message comes. True if the listener woke it.
///
/// The report batch goes out once it is due, not at every gap: at low load
/// each request ends in a short idle gap, and flushing there woke the
/// manager once per request (measured with strace -c: one report and one
/// manager epoll wake-up per request). A wait that outlasts the due time
/// ends to send it.
fn wait_idle(managed: &mut Option<Managed>, idle: Option<&IdleWait>) -> Result<bool, Error> {
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
        .ok_or_else(|| io::Error::other("no wait set for the listener"))
        .and_then(|w| w.wait(due))
        .map_err(|e| Error::io("wait for a connection", e))?;
    if woke.report {
        if let Some(m) = managed.as_mut() {
            m.check_channel();
        }
    }
    Ok(woke.listener)
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    started: Instant,
    request_bytes: u32,
    attempt: u8,
    keep: bool,
}

impl Core {
    /// The state of a service that `init` set up: no connection yet.
    pub(crate) fn new(
        name: &str,
        setup: Setup,
        opts: Options,
        stop_fd: BorrowedFd<'static>,
        allowed: Allowed,
        idle: Option<IdleWait>,
    ) -> Core {
        Core {
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
            pid: std::process::id(),
            template: setup.template,
        }
    }

    /// A template (see `template.rs`) becomes the fork server here, and
    /// returns only in each instance it forks, set up as a managed
    /// instance with the slot the manager gave it. Does nothing in any
    /// other process.
    pub(crate) fn become_instance(&mut self) -> Result<(), Error> {
        let Some(template) = self.template.take() else {
            return Ok(());
        };
        let forked = template
            .serve(&self.name)
            .map_err(|e| Error::io("start as an instance forked by the template", e))?;
        // This process owns what it holds now, as an exec'd instance would.
        self.pid = std::process::id();
        if forked.slot >= forked.scoreboard.slot_count() {
            return Err(Error::new(ErrorKind::BadEnv {
                var: charon_protocol::managed::ENV_SLOT,
                value: forked.slot.to_string(),
                expected: "below the scoreboard's slot count",
            }));
        }
        let managed = crate::mode::managed_part(
            forked.scoreboard,
            forked.scoreboard_fd,
            forked.slot,
            forked.report,
        )?;
        let Source::Listener(listener) = &self.source else {
            return Err(Error::io(
                "start as an instance forked by the template",
                io::Error::other("a template without a listener"),
            ));
        };
        let idle = IdleWait::new(listener.as_fd(), self.stop_fd, Some(managed.report_fd()))
            .map_err(|e| Error::io("set up waiting for connections", e))?;
        self.idle = Some(idle);
        self.managed = Some(managed);
        Ok(())
    }

    /// True in a child the program forked (without exec): the connection,
    /// slot and socket it has copies of are its parent's.
    pub(crate) fn forked(&self) -> bool {
        std::process::id() != self.pid
    }

    /// The name given to `Service::init`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn stopping(&self) -> bool {
        self.finished || sys::stop_requested()
    }

    /// Serve what is queued, then stop: see [`drain_wanted`].
    pub(crate) fn draining(&self) -> bool {
        drain_wanted(self.managed.as_ref())
    }

    /// Waits for and accepts one connection. False: time to stop.
    pub(crate) fn accept(&mut self) -> Result<bool, Error> {
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
            let (draining, stop) = stop_wanted(managed.as_ref(), *finished, drain_since, opts);
            if stop && !std::mem::take(&mut woken) {
                return Ok(false);
            }
            let e = match sys::accept_nonblocking(listener.as_fd()) {
                Ok(stream) => {
                    if let Some(m) = managed.as_mut() {
                        m.accepted();
                    }
                    *conn = Some(Conn::accepted(stream, opts, allowed));
                    return Ok(true);
                }
                Err(e) => e,
            };
            match after_accept_error(e.raw_os_error(), stop, draining) {
                AfterError::Stop => return Ok(false),
                AfterError::WaitIdle => woken = wait_idle(managed, idle.as_ref())?,
                AfterError::Again => {}
                AfterError::Pause => pause(*stop_fd)?,
                AfterError::Fail => return Err(Error::io("accept a connection", e)),
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

    pub(crate) fn begin(
        &mut self,
        view: &charon_protocol::RequestView<'_>,
        frame_len: usize,
        keep: bool,
    ) {
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
    pub(crate) fn refuse_peer(&mut self, received: usize) {
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
    pub(crate) fn leave(&mut self) {
        self.conn = None;
        if let Some(m) = &mut self.managed {
            m.flush();
            m.set_state(SlotState::Exiting);
        }
    }
}

/// A report record for a request that started at `started` and ends now.
pub(crate) fn record(
    started: Instant,
    request: usize,
    response: usize,
    outcome: Outcome,
    attempt: u8,
) -> Record {
    Record {
        elapsed_us: u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX),
        request_bytes: u32::try_from(request).unwrap_or(u32::MAX),
        response_bytes: u32::try_from(response).unwrap_or(u32::MAX),
        outcome,
        attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_an_accept_error_every_errno_class_by_stop_and_drain() {
        use AfterError::*;
        // Nothing queued: wait, unless this was to be the last connection
        // or the listener drains.
        for (stop, draining, want) in [
            (false, false, WaitIdle),
            (true, false, Stop),
            (false, true, Stop),
            (true, true, Stop),
        ] {
            let got = after_accept_error(Some(libc::EAGAIN), stop, draining);
            assert_eq!(got, want, "EAGAIN stop {stop} draining {draining}");
        }
        // The others do not depend on stopping or draining.
        let others = [
            (Some(libc::EINTR), Again),
            (Some(libc::ECONNABORTED), Again),
            (Some(libc::EPROTO), Again),
            (Some(libc::EMFILE), Pause),
            (Some(libc::ENFILE), Pause),
            (Some(libc::ENOBUFS), Pause),
            (Some(libc::ENOMEM), Pause),
            (Some(libc::EBADF), Fail),
            (Some(libc::EINVAL), Fail),
            (None, Fail),
        ];
        for (errno, want) in others {
            for (stop, draining) in [(false, false), (true, false), (false, true), (true, true)] {
                let got = after_accept_error(errno, stop, draining);
                assert_eq!(got, want, "{errno:?} stop {stop} draining {draining}");
            }
        }
    }
}
