//! One request/response exchange on one non-blocking connection, as a small
//! state machine: send the head and body, then read one response frame.
//!
//! [`Exchange::advance`] does as much as the socket allows without blocking
//! and says what it waits for. Waiting (poll(2) for one call, mio for a
//! batch), deadlines, retries and affinity are left to the callers.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use charon_protocol::{decode_response, FrameBuf, FrameKind, Limits, ReadError, Response};
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, MsgFlags, UnixAddr};

use crate::error::{Error, ErrorKind};

/// What an exchange needs next, or how it ended.
#[derive(Debug)]
pub(crate) enum Step {
    /// Blocked sending: wait until the socket is writable.
    WantWrite,
    /// Blocked reading: wait until the socket is readable.
    WantRead,
    /// A no-wait request is fully sent: it is done.
    Sent,
    /// A complete response arrived (or the connection failed in a way that
    /// is not a silent close).
    Response(Result<Vec<u8>, ErrorKind>),
    /// The connection closed before any byte of a response: the caller may
    /// resend once.
    SilentClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Sending,
    Receiving,
}

/// One exchange on one connection.
#[derive(Debug)]
pub(crate) struct Exchange {
    stream: UnixStream,
    sent: usize,
    phase: Phase,
    frame: FrameBuf,
    /// Whether to try a read right after the request is sent. Under a
    /// level-triggered wait (poll(2)) that read almost always fails with
    /// EAGAIN, one wasted syscall per request; with mio's edge-triggered
    /// readiness it must be tried, or an edge already seen could be lost.
    read_after_send: bool,
}

impl Exchange {
    pub(crate) fn new(stream: UnixStream, limits: &Limits) -> Exchange {
        Exchange::reusing(stream, new_frame(limits))
    }

    /// An exchange reading into `frame`, a buffer from an earlier exchange
    /// (see [`Exchange::into_parts`]), so a call allocates no new one.
    pub(crate) fn reusing(stream: UnixStream, mut frame: FrameBuf) -> Exchange {
        // The first reset keeps bytes a peer sent past its frame as the
        // start of the next; they came on another connection, so the second
        // reset (of an incomplete frame) drops them too.
        frame.reset();
        frame.reset();
        Exchange {
            stream,
            sent: 0,
            phase: Phase::Sending,
            frame,
            read_after_send: true,
        }
    }

    /// Waits for readiness before the first read, for a caller that waits
    /// with level-triggered poll(2): saves a read that would fail.
    pub(crate) fn wait_before_reading(mut self) -> Exchange {
        self.read_after_send = false;
        self
    }

    /// True once the whole request has left (or the peer stopped reading).
    pub(crate) fn is_sent(&self) -> bool {
        self.phase == Phase::Receiving
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Gives the connection back, for a keep-affinity request.
    pub(crate) fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Gives back the connection and the read buffer, for reuse.
    pub(crate) fn into_parts(self) -> (UnixStream, FrameBuf) {
        (self.stream, self.frame)
    }

    /// Sends and reads as far as the socket allows. `head` and `body` must
    /// be the same on every call of one exchange.
    pub(crate) fn advance(
        &mut self,
        head: &[u8],
        body: &[u8],
        no_wait: bool,
        limits: &Limits,
    ) -> Step {
        if self.phase == Phase::Sending {
            match self.send(head, body) {
                Ok(true) => {
                    self.phase = Phase::Receiving;
                    if no_wait {
                        return Step::Sent;
                    }
                    if !self.read_after_send {
                        return Step::WantRead;
                    }
                }
                Ok(false) => return Step::WantWrite,
                // The peer may answer before reading (a fast-failed
                // connection) and close: whatever it wrote is still queued
                // on our side, so read before calling it a silent close.
                Err(Errno::EPIPE | Errno::ECONNRESET) => self.phase = Phase::Receiving,
                Err(e) => {
                    return Step::Response(Err(Error::io("send the request", e.into())));
                }
            }
        }
        self.receive(limits)
    }

    /// Writes until done (`Ok(true)`) or the socket is full (`Ok(false)`).
    fn send(&mut self, head: &[u8], body: &[u8]) -> Result<bool, Errno> {
        let total = head.len() + body.len();
        while self.sent < total {
            let iov_both;
            let iov_body;
            let iov: &[IoSlice<'_>] = if self.sent < head.len() {
                iov_both = [IoSlice::new(&head[self.sent..]), IoSlice::new(body)];
                &iov_both
            } else {
                iov_body = [IoSlice::new(&body[self.sent - head.len()..])];
                &iov_body
            };
            // MSG_NOSIGNAL: a closed peer must give EPIPE, never SIGPIPE the
            // caller, and the crate may not touch signal dispositions.
            match sendmsg::<UnixAddr>(
                self.stream.as_raw_fd(),
                iov,
                &[],
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(n) => self.sent += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn receive(&mut self, limits: &Limits) -> Step {
        match self.frame.read_from(&mut self.stream) {
            Ok(charon_protocol::Fill::Complete) => {
                Step::Response(decode(self.frame.payload(), limits))
            }
            Ok(charon_protocol::Fill::Pending) => Step::WantRead,
            Ok(charon_protocol::Fill::Eof { received: 0 }) => Step::SilentClose,
            Ok(charon_protocol::Fill::Eof { received }) => {
                Step::Response(Err(ErrorKind::Disconnected { received }))
            }
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                match self.frame.received() {
                    0 => Step::SilentClose,
                    received => Step::Response(Err(ErrorKind::Disconnected { received })),
                }
            }
            Err(ReadError::Io(e)) => Step::Response(Err(Error::io("read the response", e))),
            Err(ReadError::Decode(e)) => Step::Response(Err(ErrorKind::Protocol(e))),
        }
    }
}

/// A response buffer sized by `limits`.
pub(crate) fn new_frame(limits: &Limits) -> FrameBuf {
    FrameBuf::new(FrameKind::Response, limits.max_response_payload())
}

fn decode(payload: &[u8], limits: &Limits) -> Result<Vec<u8>, ErrorKind> {
    match decode_response(payload, limits) {
        Ok(Response::Ok(body)) => Ok(body.to_vec()),
        Ok(Response::Fault { code, text }) => Err(ErrorKind::ServiceFault {
            code,
            text: text.to_string(),
        }),
        Ok(Response::Unavailable {
            retry_after,
            reason,
        }) => Err(ErrorKind::Unavailable {
            retry_after,
            reason: reason.to_string(),
        }),
        Ok(Response::Error { code, text }) => Err(ErrorKind::Framework {
            code,
            text: text.to_string(),
        }),
        Err(e) => Err(ErrorKind::Protocol(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use charon_protocol::encode_response;
    use std::io::{Read, Write};

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn sends_then_reads_a_response() {
        let (a, mut b) = pair();
        let limits = Limits::default();
        let mut ex = Exchange::new(a, &limits);
        assert!(matches!(
            ex.advance(b"HEAD", b"body", false, &limits),
            Step::WantRead
        ));
        assert!(ex.is_sent());
        let mut got = [0u8; 8];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"HEADbody");
        let mut resp = Vec::new();
        encode_response(&Response::Ok(b"pong"), &limits, &mut resp).unwrap();
        b.write_all(&resp).unwrap();
        match ex.advance(b"HEAD", b"body", false, &limits) {
            Step::Response(Ok(body)) => assert_eq!(body, b"pong"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn close_before_any_byte_is_silent() {
        let (a, b) = pair();
        let limits = Limits::default();
        let mut ex = Exchange::new(a, &limits);
        drop(b);
        assert!(matches!(
            ex.advance(b"H", b"", false, &limits),
            Step::SilentClose
        ));
    }

    #[test]
    fn close_after_partial_response_is_disconnected() {
        let (a, mut b) = pair();
        let limits = Limits::default();
        let mut ex = Exchange::new(a, &limits);
        assert!(matches!(
            ex.advance(b"H", b"", false, &limits),
            Step::WantRead
        ));
        b.write_all(b"CH\x01").unwrap();
        drop(b);
        assert!(matches!(
            ex.advance(b"H", b"", false, &limits),
            Step::Response(Err(ErrorKind::Disconnected { received: 3 }))
        ));
    }

    #[test]
    fn waiting_before_reading_skips_the_read_after_sending() {
        let (a, mut b) = pair();
        let limits = Limits::default();
        let mut resp = Vec::new();
        encode_response(&Response::Ok(b"early"), &limits, &mut resp).unwrap();
        // The answer is already there, but the caller asked to wait first.
        b.write_all(&resp).unwrap();
        let mut ex = Exchange::new(a, &limits).wait_before_reading();
        assert!(matches!(
            ex.advance(b"H", b"", false, &limits),
            Step::WantRead
        ));
        match ex.advance(b"H", b"", false, &limits) {
            Step::Response(Ok(body)) => assert_eq!(body, b"early"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reused_buffer_drops_bytes_from_the_last_connection() {
        let limits = Limits::default();
        let (a, mut b) = pair();
        let mut ex = Exchange::new(a, &limits);
        let mut resp = Vec::new();
        encode_response(&Response::Ok(b"one"), &limits, &mut resp).unwrap();
        // A peer that sends a stray byte after its frame.
        resp.push(0xff);
        b.write_all(&resp).unwrap();
        assert!(matches!(
            ex.advance(b"H", b"", false, &limits),
            Step::Response(Ok(ref body)) if body == b"one"
        ));
        let (_, frame) = ex.into_parts();
        let (a2, mut b2) = pair();
        let mut ex = Exchange::reusing(a2, frame);
        let mut resp = Vec::new();
        encode_response(&Response::Ok(b"two"), &limits, &mut resp).unwrap();
        b2.write_all(&resp).unwrap();
        match ex.advance(b"H", b"", false, &limits) {
            Step::Response(Ok(body)) => assert_eq!(body, b"two"),
            other => panic!("{other:?}"),
        }
    }
}
