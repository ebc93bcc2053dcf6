//! Reading one frame from a byte stream, blocking or not.
//!
//! [`FrameBuf`] accumulates bytes until it holds a whole frame. It checks the
//! header as soon as its 8 bytes are in, so an oversized frame is refused
//! before its payload is read, and it grows its buffer only as bytes actually
//! arrive: a header claiming 4 GiB costs nothing until 4 GiB are sent, and
//! the limit stops that first. Decoding the completed frame is left to
//! [`crate::decode_request`] / [`crate::decode_response`].

use std::fmt;
use std::io::{self, Read};

use crate::frame::{DecodeError, FrameHeader, FrameKind, HEADER_LEN};

/// Initial read window: large enough that a small frame arrives in one read.
const INITIAL_WINDOW: usize = 4096;

/// Once a header has passed the limit check, the buffer grows by at least
/// this much at a time (still only when full, so a claim without bytes
/// costs nothing): doubling from 4 KiB made a 1 MiB body cost 8
/// reallocations.
const MIN_GROWTH: usize = 64 * 1024;

/// [`FrameBuf::reset`] keeps an allocation up to this size for the next
/// frame. The roundtrip benchmark measured a 1 MiB exchange regrowing its
/// buffers from 4 KiB on every request on both sides when this was 1 MiB.
const RETAIN: usize = 8 << 20;

/// What a call to [`FrameBuf::read_from`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// A whole frame is in the buffer: see [`FrameBuf::payload`].
    Complete,
    /// The reader would block; call again when it is readable.
    Pending,
    /// The peer closed the stream before a whole frame arrived.
    /// `received` bytes of the frame had arrived (0: a clean close).
    Eof {
        /// Bytes of the incomplete frame received before the close.
        received: usize,
    },
}

/// Why reading a frame failed.
#[derive(Debug)]
pub enum ReadError {
    /// The stream failed.
    Io(io::Error),
    /// The bytes are not a frame of the expected kind, or it is too large.
    Decode(DecodeError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Decode(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            ReadError::Decode(e) => Some(e),
        }
    }
}

/// A buffer that accumulates exactly one frame.
///
/// ```
/// use charon_protocol::{FrameBuf, FrameKind, Fill, Limits, Response, encode_response};
/// let mut wire = Vec::new();
/// encode_response(&Response::Ok(b"hi"), &Limits::default(), &mut wire).unwrap();
/// let mut buf = FrameBuf::new(FrameKind::Response, 1 << 20);
/// assert_eq!(buf.read_from(&mut &wire[..]).unwrap(), Fill::Complete);
/// let resp = charon_protocol::decode_response(buf.payload(), &Limits::default()).unwrap();
/// assert_eq!(resp, Response::Ok(b"hi"));
/// ```
pub struct FrameBuf {
    buf: Vec<u8>,
    // Bytes of the current frame in buf[..filled]; bytes that arrived after
    // it (a pipelining peer) sit in buf[filled..filled + extra].
    filled: usize,
    extra: usize,
    header: Option<FrameHeader>,
    kind: FrameKind,
    max_payload: u64,
}

impl FrameBuf {
    /// A buffer for one frame of `kind` whose payload is at most
    /// `max_payload` bytes.
    #[must_use]
    pub fn new(kind: FrameKind, max_payload: u64) -> FrameBuf {
        FrameBuf {
            buf: Vec::new(),
            filled: 0,
            extra: 0,
            header: None,
            kind,
            max_payload,
        }
    }

    /// Forgets the frame, keeping the allocation (up to 8 MiB) for the next.
    /// Bytes that arrived after the frame are kept as the start of the next.
    pub fn reset(&mut self) {
        let end = if self.is_complete() { self.filled } else { 0 };
        let extra = if end > 0 { self.extra } else { 0 };
        self.buf.copy_within(end..end + extra, 0);
        self.filled = 0;
        self.extra = extra;
        self.header = None;
        if self.buf.len() > RETAIN && extra <= INITIAL_WINDOW {
            self.buf.truncate(INITIAL_WINDOW);
            self.buf.shrink_to_fit();
        }
    }

    /// Bytes that arrived after the completed frame (a peer that sent more
    /// than one frame at once).
    #[must_use]
    pub const fn surplus(&self) -> usize {
        if self.header.is_some() {
            self.extra
        } else {
            0
        }
    }

    /// Bytes of the current frame received so far (header included).
    #[must_use]
    pub const fn received(&self) -> usize {
        self.filled
    }

    /// The header, once its 8 bytes have arrived.
    #[must_use]
    pub const fn header(&self) -> Option<FrameHeader> {
        self.header
    }

    /// True once a whole frame is in.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.header
            .is_some_and(|h| self.filled == HEADER_LEN + h.payload_len as usize)
    }

    /// The payload of the completed frame (empty before completion).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        if self.is_complete() {
            &self.buf[HEADER_LEN..self.filled]
        } else {
            &[]
        }
    }

    /// The bytes of the current frame received so far, header included,
    /// complete or not: for a reader that takes over the rest of a frame
    /// itself (then [`FrameBuf::reset`] drops them).
    #[must_use]
    pub fn received_bytes(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// The whole frame, header included (empty before completion).
    #[must_use]
    pub fn frame(&self) -> &[u8] {
        if self.is_complete() {
            &self.buf[..self.filled]
        } else {
            &[]
        }
    }

    /// How many more bytes the current frame needs.
    fn wanted(&self) -> usize {
        match self.header {
            None => HEADER_LEN - self.filled,
            Some(h) => HEADER_LEN + h.payload_len as usize - self.filled,
        }
    }

    /// Reads until the frame is complete, the reader would block, or the
    /// peer closes. Never reads past the end of the frame. `EINTR` is
    /// retried.
    ///
    /// # Errors
    ///
    /// [`ReadError::Decode`] for a bad header (wrong magic, version or kind,
    /// or a payload over the limit); [`ReadError::Io`] for a failed read.
    pub fn read_from<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<Fill, ReadError> {
        loop {
            // Consume bytes already buffered (carried over, or just read).
            if self.extra > 0 {
                let take = self.extra.min(self.wanted());
                self.filled += take;
                self.extra -= take;
                if self.header.is_none() && self.filled >= HEADER_LEN {
                    self.parse_header()?;
                    continue;
                }
            }
            if self.is_complete() {
                return Ok(Fill::Complete);
            }
            // Grow only when full, and only with bytes that are arriving: at
            // most double what we hold, never past the announced (and
            // limit-checked) end. A header-only claim allocates nothing.
            let total = self.filled + self.wanted();
            if self.filled == self.buf.len() {
                let grow_to = match self.header {
                    None => INITIAL_WINDOW,
                    Some(_) => total.min(self.buf.len().saturating_mul(2).max(MIN_GROWTH)),
                };
                self.buf.resize(grow_to.max(self.filled + 1), 0);
            }
            // Before the header is known, read a whole window so a small frame
            // arrives in one call; surplus is kept for the next frame.
            let end = match self.header {
                None => self.buf.len(),
                Some(_) => self.buf.len().min(total),
            };
            match r.read(&mut self.buf[self.filled..end]) {
                Ok(0) => {
                    return Ok(Fill::Eof {
                        received: self.filled,
                    })
                }
                Ok(n) => self.extra = n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Pending),
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    fn parse_header(&mut self) -> Result<(), ReadError> {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = FrameHeader::unpack(&h).map_err(ReadError::Decode)?;
        if header.kind != self.kind {
            return Err(ReadError::Decode(DecodeError::WrongKind {
                expected: self.kind,
            }));
        }
        if u64::from(header.payload_len) > self.max_payload {
            return Err(ReadError::Decode(DecodeError::TooLarge {
                len: u64::from(header.payload_len),
                limit: self.max_payload,
            }));
        }
        self.header = Some(header);
        Ok(())
    }
}

impl fmt::Debug for FrameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameBuf")
            .field("kind", &self.kind)
            .field("header", &self.header)
            .field("filled", &self.filled)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_request, Attributes, RequestHead};
    use crate::Limits;

    /// A reader that hands out one byte per call, then WouldBlock every other
    /// call, to exercise every resumption point.
    struct Trickle<'a> {
        data: &'a [u8],
        block: bool,
    }
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.block = !self.block;
            if self.block {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.data.is_empty() || out.is_empty() {
                return Ok(0);
            }
            out[0] = self.data[0];
            self.data = &self.data[1..];
            Ok(1)
        }
    }

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        let head = RequestHead {
            key: "system.echo.0.raw",
            client: "t",
            attempt: 1,
            attributes: Attributes::NONE,
        };
        encode_request(&head, &[("a", b"b")], b"body", &Limits::default(), &mut v).unwrap();
        v
    }

    #[test]
    fn resumes_at_every_byte() {
        let wire = sample();
        let mut t = Trickle {
            data: &wire,
            block: false,
        };
        let mut fb = FrameBuf::new(FrameKind::Request, 1 << 20);
        let mut pendings = 0;
        loop {
            match fb.read_from(&mut t).unwrap() {
                Fill::Complete => break,
                Fill::Pending => pendings += 1,
                Fill::Eof { .. } => panic!("early eof"),
            }
        }
        assert!(pendings >= wire.len() - 1);
        assert_eq!(fb.frame(), &wire[..]);
    }

    #[test]
    fn surplus_becomes_the_next_frame() {
        let one = sample();
        let mut wire = one.clone();
        wire.extend_from_slice(&one);
        wire.extend_from_slice(&one[..5]);
        let mut r = &wire[..];
        let mut fb = FrameBuf::new(FrameKind::Request, 1 << 20);
        assert_eq!(fb.read_from(&mut r).unwrap(), Fill::Complete);
        assert_eq!(fb.frame(), &one[..]);
        assert_eq!(fb.surplus(), one.len() + 5);
        fb.reset();
        assert_eq!(fb.read_from(&mut r).unwrap(), Fill::Complete);
        assert_eq!(fb.frame(), &one[..]);
        fb.reset();
        assert_eq!(fb.read_from(&mut r).unwrap(), Fill::Eof { received: 5 });
    }

    #[test]
    fn huge_claim_is_refused_without_allocating() {
        let header = FrameHeader {
            kind: FrameKind::Request,
            payload_len: u32::MAX,
        }
        .pack();
        let mut fb = FrameBuf::new(FrameKind::Request, 64 << 20);
        let err = fb.read_from(&mut &header[..]).unwrap_err();
        assert!(matches!(
            err,
            ReadError::Decode(DecodeError::TooLarge { len, .. }) if len == u64::from(u32::MAX)
        ));
        assert!(fb.buf.capacity() <= INITIAL_WINDOW);
    }

    #[test]
    fn claimed_length_without_bytes_allocates_little() {
        // 60 MiB announced (under the limit), 10 bytes sent, then EOF.
        let mut wire = FrameHeader {
            kind: FrameKind::Request,
            payload_len: 60 << 20,
        }
        .pack()
        .to_vec();
        wire.extend_from_slice(&[0u8; 10]);
        let mut fb = FrameBuf::new(FrameKind::Request, 64 << 20);
        assert_eq!(
            fb.read_from(&mut &wire[..]).unwrap(),
            Fill::Eof { received: 18 }
        );
        assert!(fb.buf.capacity() <= 2 * INITIAL_WINDOW);
    }

    #[test]
    fn wrong_kind_and_garbage() {
        let mut fb = FrameBuf::new(FrameKind::Response, 1 << 20);
        assert!(matches!(
            fb.read_from(&mut &sample()[..]),
            Err(ReadError::Decode(DecodeError::WrongKind { .. }))
        ));
        let mut fb = FrameBuf::new(FrameKind::Request, 1 << 20);
        assert!(matches!(
            fb.read_from(&mut &b"GET / HTTP/1.0\r\n"[..]),
            Err(ReadError::Decode(DecodeError::BadMagic(_)))
        ));
    }
}
