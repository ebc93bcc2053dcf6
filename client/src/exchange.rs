//! One request/response exchange on one connection, as a small state
//! machine: send the head and body, then read one response frame.
//!
//! [`Exchange::advance`] does as much as the socket allows (never blocking
//! to send; blocking to read only if the socket is in blocking mode, as
//! `Client::call` sets it) and says what it waits for. Waiting (a blocking
//! read, or poll(2) to send, for one call; mio for a batch), deadlines,
//! retries and affinity are left to the callers.
//!
//! A response's first read takes at most [`FIRST_WINDOW`] bytes into the
//! exchange's reusable `FrameBuf`: a small response arrives whole in it and
//! its body is copied out. When the frame is longer and is an OK response,
//! the rest of its body is read straight into the `Vec` the caller gets,
//! so a large body is copied once, by the kernel. The roundtrip benchmark
//! measured the copy out of the frame as the largest user-space cost of a
//! 64 KiB exchange (a quarter of all CPU time at concurrency 4). That read
//! into the `Vec`'s spare capacity is `sys::recv_into_spare`, this crate's
//! only `unsafe` code.

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use charon_protocol::{
    decode_response, ok_body_len, Fill, FrameBuf, FrameKind, Limits, ReadError, Response,
    HEADER_LEN, OK_BODY_OFFSET,
};
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, MsgFlags, UnixAddr};

use crate::error::{Error, ErrorKind};
use crate::sys::recv_into_spare;

/// The most a response's first read takes into the frame buffer. A body
/// that does not fit goes into its own `Vec` (see the module doc).
pub(crate) const FIRST_WINDOW: usize = 4096;

/// Where an OK body starts in a response frame.
const OK_BODY_AT: usize = HEADER_LEN + OK_BODY_OFFSET;

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
    /// The first read of the response was capped at [`FIRST_WINDOW`] and the
    /// frame did not fit: it is no OK body to read directly (a fault, an
    /// error, or malformed), so the rest goes into `frame` too.
    uncapped: bool,
    /// An OK body being read straight into the caller's `Vec`, and its
    /// length.
    direct: Option<(Vec<u8>, usize)>,
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
            uncapped: false,
            direct: None,
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

    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
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
        if self.direct.is_some() {
            return self.receive_direct();
        }
        let left = if self.uncapped {
            usize::MAX
        } else {
            FIRST_WINDOW.saturating_sub(self.frame.received())
        };
        let mut capped = Capped {
            stream: &self.stream,
            left,
            hit: false,
        };
        match self.frame.read_from(&mut capped) {
            Ok(Fill::Complete) => Step::Response(decode(self.frame.payload(), limits)),
            Ok(Fill::Pending) if capped.hit => {
                // The window is full and the frame goes on (a header is
                // in: the window is longer than one).
                self.uncapped = true;
                let payload_len = self.frame.header().map_or(0, |h| h.payload_len);
                let prefix = self.frame.received_bytes().get(HEADER_LEN..).unwrap_or(&[]);
                if let Some(len) = ok_body_len(prefix, payload_len, limits) {
                    let mut body = Vec::with_capacity(len);
                    body.extend_from_slice(&self.frame.received_bytes()[OK_BODY_AT..]);
                    self.frame.reset();
                    self.direct = Some((body, len));
                }
                self.receive(limits)
            }
            Ok(Fill::Pending) => Step::WantRead,
            Ok(Fill::Eof { received: 0 }) => Step::SilentClose,
            Ok(Fill::Eof { received }) => Step::Response(Err(ErrorKind::Disconnected { received })),
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

    /// Reads the rest of an OK body into its own `Vec`.
    fn receive_direct(&mut self) -> Step {
        let Some((body, len)) = self.direct.as_mut() else {
            return Step::WantRead;
        };
        while body.len() < *len {
            match recv_into_spare(&self.stream, body, *len) {
                Ok(0) | Err(Errno::ECONNRESET) => {
                    let received = OK_BODY_AT + body.len();
                    return Step::Response(Err(ErrorKind::Disconnected { received }));
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Step::WantRead,
                Err(e) => return Step::Response(Err(Error::io("read the response", e.into()))),
            }
        }
        let body = std::mem::take(body);
        self.direct = None;
        Step::Response(Ok(body))
    }
}

/// The socket as a reader that gives at most `left` bytes, then reports
/// `WouldBlock` with `hit` set: how the first read of a response is capped
/// without a second kind of frame buffer.
struct Capped<'a> {
    stream: &'a UnixStream,
    left: usize,
    hit: bool,
}

impl Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            self.hit = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let take = buf.len().min(self.left);
        let n = (&mut &*self.stream).read(&mut buf[..take])?;
        self.left -= n;
        Ok(n)
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
    fn ok_frame(body: &[u8]) -> Vec<u8> {
        let mut resp = Vec::new();
        encode_response(&Response::Ok(body), &Limits::default(), &mut resp).unwrap();
        resp
    }

    fn body_of(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Drives `ex` until it has a response, feeding `wire` in `chunk`-byte
    /// writes whenever it wants to read.
    fn feed(ex: &mut Exchange, peer: &mut UnixStream, wire: &[u8], chunk: usize) -> Step {
        let limits = Limits::default();
        peer.set_nonblocking(true).unwrap();
        let mut at = 0;
        loop {
            match ex.advance(b"H", b"", false, &limits) {
                Step::WantRead if at < wire.len() => {
                    // Non-blocking: a chunk larger than the socket buffer
                    // goes in parts, between the exchange's reads.
                    let end = (at + chunk).min(wire.len());
                    match peer.write(&wire[at..end]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                other => return other,
            }
        }
    }

    #[test]
    fn bodies_around_the_first_window_arrive_whole() {
        let fits = FIRST_WINDOW - OK_BODY_AT;
        for n in [0, 1, fits - 1, fits, fits + 1, 64 * 1024, 300_001] {
            for chunk in [1000, 4096, 1 << 20] {
                let (a, mut b) = pair();
                let mut ex = Exchange::new(a, &Limits::default()).wait_before_reading();
                let want = body_of(n);
                match feed(&mut ex, &mut b, &ok_frame(&want), chunk) {
                    Step::Response(Ok(got)) => {
                        assert_eq!(got.len(), n, "body of {n} in chunks of {chunk}");
                        assert!(got == want, "body of {n} in chunks of {chunk} differs");
                    }
                    other => panic!("body of {n} in chunks of {chunk}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_large_body_cut_short_counts_what_arrived() {
        let (a, mut b) = pair();
        let mut ex = Exchange::new(a, &Limits::default()).wait_before_reading();
        let wire = ok_frame(&body_of(100_000));
        let sent = 50_000;
        assert!(matches!(
            feed(&mut ex, &mut b, &wire[..sent], 8192),
            Step::WantRead
        ));
        drop(b);
        match ex.advance(b"H", b"", false, &Limits::default()) {
            Step::Response(Err(ErrorKind::Disconnected { received })) => assert_eq!(received, sent),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_large_frame_that_is_no_ok_body_is_decoded_whole() {
        let limits = Limits::default();
        // Status 0 with a body length one short of the payload: not an OK
        // body to read directly, and the whole frame must say why.
        let mut wire = ok_frame(&body_of(10_000));
        let n = u32::from_be_bytes(wire[9..13].try_into().unwrap()) - 1;
        wire[9..13].copy_from_slice(&n.to_be_bytes());
        let (a, mut b) = pair();
        let mut ex = Exchange::new(a, &limits).wait_before_reading();
        assert!(matches!(
            feed(&mut ex, &mut b, &wire, 3000),
            Step::Response(Err(ErrorKind::Protocol(_)))
        ));
        // A body over the caller's limit is refused, not read directly.
        let small = Limits {
            max_response_body: 5000,
            ..Limits::default()
        };
        let (a, mut b) = pair();
        let mut ex = Exchange::new(a, &small).wait_before_reading();
        let wire = ok_frame(&body_of(6000));
        b.write_all(&wire).unwrap();
        assert!(matches!(
            ex.advance(b"H", b"", false, &small),
            Step::WantRead
        ));
        assert!(matches!(
            ex.advance(b"H", b"", false, &small),
            Step::Response(Err(ErrorKind::Protocol(_)))
        ));
    }

    #[test]
    fn a_direct_body_reads_no_byte_of_the_next_frame() {
        // A kept connection: two large answers back to back, each read by
        // its own exchange on the same stream.
        let limits = Limits::default();
        let (a, mut b) = pair();
        let (one, two) = (body_of(70_000), body_of(9_000));
        let mut wire = ok_frame(&one);
        wire.extend_from_slice(&ok_frame(&two));
        b.write_all(&wire).unwrap();
        let mut ex = Exchange::new(a, &limits);
        assert!(
            matches!(ex.advance(b"H", b"", false, &limits), Step::Response(Ok(ref g)) if *g == one)
        );
        let (a, frame) = ex.into_parts();
        let mut ex = Exchange::reusing(a, frame);
        assert!(
            matches!(ex.advance(b"H", b"", false, &limits), Step::Response(Ok(ref g)) if *g == two)
        );
    }
}
