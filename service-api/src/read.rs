//! Reading one request frame from a connection (or standalone mode's fd
//! 3) under the read timeout, waiting on a connection kept for affinity,
//! and refusing bad input with a framework error before it reaches the
//! program.
//!
//! Accepting connections and answering requests are left to `core.rs`.

use std::os::fd::AsFd;
use std::time::Instant;

use charon_protocol::report::Outcome;
use charon_protocol::{
    encode_response, DecodeError, ErrorCode, Fill, FrameBuf, FrameKind, ReadError, Response,
};
use nix::poll::{PollFd, PollFlags};

use crate::core::{record, Core};
use crate::error::Error;
use crate::io::{ready, wait, READABLE};
use crate::managed::Managed;
use crate::mode::{Mode, Source};

/// What reading a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A whole frame is in the buffer.
    Frame,
    /// This connection is done with; accept the next.
    Next,
    /// Time to stop.
    Stop,
}

impl Core {
    /// Gets a whole frame into `buf`. False: time to stop.
    pub(crate) fn take_frame(&mut self, buf: &mut FrameBuf) -> Result<bool, Error> {
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

    /// Reads from the current connection until a frame is complete.
    pub(crate) fn read_conn(&mut self, buf: &mut FrameBuf) -> Step {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Step::Next;
            };
            match buf.read_from(&mut conn.stream) {
                Ok(Fill::Complete) => {
                    if conn.idle_since.take().is_some() {
                        conn.started = Instant::now();
                    }
                    return Step::Frame;
                }
                Ok(Fill::Pending) => {
                    if let Some(step) = self.await_bytes(buf.received()) {
                        return step;
                    }
                }
                Ok(Fill::Eof { received: 0 }) => {
                    // A clean close between requests.
                    self.conn = None;
                    return Step::Next;
                }
                Ok(Fill::Eof { received }) => {
                    let text =
                        format!("the connection closed after {received} bytes of a request frame");
                    self.refuse(ErrorCode::MALFORMED_REQUEST, &text, received);
                    return Step::Next;
                }
                Err(ReadError::Decode(e)) => {
                    self.refuse_decode_at(&e, buf.received());
                    return Step::Next;
                }
                Err(ReadError::Io(_)) => {
                    self.conn = None;
                    return Step::Next;
                }
            }
        }
    }

    /// The frame is not complete after `received` bytes: waits for more
    /// until the read deadline, or on a kept connection with none yet for
    /// the next request. `None`: read again.
    fn await_bytes(&mut self, received: usize) -> Option<Step> {
        let Some(conn) = self.conn.as_mut() else {
            return Some(Step::Next);
        };
        if conn.idle_since.is_some() && received == 0 {
            return self.wait_kept();
        }
        if conn.idle_since.take().is_some() {
            // The next request has begun: its clock starts.
            let now = Instant::now();
            conn.started = now;
            conn.deadline = now + self.opts.read_timeout;
        }
        let deadline = conn.deadline;
        let mut fds = [PollFd::new(conn.stream.as_fd(), PollFlags::POLLIN)];
        match wait(&mut fds, Some(deadline)) {
            Ok(true) => None,
            Ok(false) => {
                let text = format!(
                    "no complete request within the read timeout of {} ms",
                    self.opts.read_timeout.as_millis()
                );
                self.refuse(ErrorCode::READ_TIMEOUT, &text, received);
                Some(Step::Next)
            }
            Err(_) => {
                self.conn = None;
                Some(Step::Next)
            }
        }
    }

    /// A kept connection has no bytes: wait for the client's next request,
    /// a stop signal, or the affinity timeout. `None`: data arrived.
    fn wait_kept(&mut self) -> Option<Step> {
        let conn = self.conn.as_ref()?;
        let expires = conn.idle_since? + self.opts.affinity_timeout;
        // A conversation's requests come back to back: sending the batch at
        // every gap would wake the manager per request, so it goes out only
        // when it is due.
        let due = self.managed.as_ref().and_then(Managed::flush_due);
        let until = due.map_or(expires, |d| d.min(expires));
        // A fixed array, so waiting allocates nothing; the report channel
        // (managed mode only) is the optional third entry.
        let report = self.managed.as_ref().map(Managed::report_fd);
        let mut all = [
            PollFd::new(conn.stream.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.stop_fd, PollFlags::POLLIN),
            PollFd::new(report.unwrap_or(self.stop_fd), PollFlags::POLLIN),
        ];
        let fds = &mut all[..if report.is_some() { 3 } else { 2 }];
        let woke = wait(fds, Some(until));
        let hup = fds.get(2).is_some_and(|f| ready(f, READABLE));
        if hup {
            if let Some(m) = &mut self.managed {
                m.check_channel();
            }
        }
        match woke {
            Ok(true) if self.stopping() => Some(Step::Stop),
            Ok(true) if self.draining() => {
                // Draining: a conversation's next request is not queued
                // work; the client retries it elsewhere.
                self.conn = None;
                Some(Step::Next)
            }
            // Data, or a spurious wake-up: let the read find out.
            Ok(true) => None,
            Ok(false) if Instant::now() < expires => {
                if let Some(m) = &mut self.managed {
                    m.flush();
                }
                None
            }
            Ok(false) | Err(_) => {
                // Affinity expired: the client's next request will find
                // the connection closed and start afresh.
                self.conn = None;
                Some(Step::Next)
            }
        }
    }

    pub(crate) fn standalone_frame(&mut self, buf: &mut FrameBuf) -> bool {
        if self.finished {
            return false;
        }
        let Source::Standalone { input, .. } = &mut self.source else {
            return false;
        };
        let refusal = match buf.read_from(input) {
            Ok(Fill::Complete) => {
                self.finished = true;
                return true;
            }
            Ok(Fill::Pending) => (
                ErrorCode::INTERNAL,
                "fd 3 is non-blocking and had no data".to_string(),
            ),
            Ok(Fill::Eof { received: 0 }) => (
                ErrorCode::MALFORMED_REQUEST,
                "fd 3 held no request (empty input)".to_string(),
            ),
            Ok(Fill::Eof { received }) => (
                ErrorCode::MALFORMED_REQUEST,
                format!("fd 3 ended after {received} bytes of a request frame"),
            ),
            Err(ReadError::Decode(e)) => (error_code_for(&e), e.to_string()),
            Err(ReadError::Io(e)) => (ErrorCode::INTERNAL, format!("cannot read fd 3: {e}")),
        };
        self.refuse(refusal.0, &refusal.1, buf.received());
        self.finished = true;
        false
    }

    /// Refuses a frame that failed to decode after `received` bytes.
    pub(crate) fn refuse_decode_at(&mut self, e: &DecodeError, received: usize) {
        self.refuse(error_code_for(e), &e.to_string(), received);
    }

    /// Answers the current connection (or standalone output) with a
    /// framework error and closes it; the instance carries on.
    pub(crate) fn refuse(&mut self, code: ErrorCode, text: &str, received: usize) {
        self.head.clear();
        let resp = Response::Error { code, text };
        if encode_response(&resp, &self.opts.limits, &mut self.head).is_err() {
            return;
        }
        let started = self.conn.as_ref().map_or_else(Instant::now, |c| c.started);
        let sent = self.write_out(&[]).is_ok();
        self.conn = None;
        if self.mode == Mode::Standalone {
            self.finished = true;
        }
        if let Some(m) = &mut self.managed {
            m.note(record(
                started,
                received,
                if sent { self.head.len() } else { 0 },
                Outcome::Error,
                1,
            ));
        }
    }
}

/// The framework error code that answers a frame that failed to decode.
fn error_code_for(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::TooLarge { .. } | DecodeError::FieldTooLarge { .. } => {
            ErrorCode::REQUEST_TOO_LARGE
        }
        DecodeError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
        _ => ErrorCode::MALFORMED_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use charon_protocol::{FrameKind, KeyError};

    #[test]
    fn decode_errors_map_to_framework_codes() {
        let too_large = DecodeError::TooLarge {
            len: 1 << 32,
            limit: 1 << 26,
        };
        assert_eq!(error_code_for(&too_large), ErrorCode::REQUEST_TOO_LARGE);
        let field = DecodeError::FieldTooLarge {
            field: "context count",
            len: 65,
            limit: 64,
        };
        assert_eq!(error_code_for(&field), ErrorCode::REQUEST_TOO_LARGE);
        assert_eq!(
            error_code_for(&DecodeError::UnsupportedVersion(9)),
            ErrorCode::UNSUPPORTED_VERSION
        );
        for e in [
            DecodeError::BadMagic(*b"GE"),
            DecodeError::Truncated("body"),
            DecodeError::WrongKind {
                expected: FrameKind::Request,
            },
            DecodeError::Key(KeyError::EmptyApplication),
        ] {
            assert_eq!(error_code_for(&e), ErrorCode::MALFORMED_REQUEST, "{e}");
        }
    }
}
