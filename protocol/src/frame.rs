//! Frames: the request and response records exchanged on a connection.
//!
//! A frame is an 8-byte header followed by a payload; PROTOCOL.md beside this
//! crate is the normative description, and this module follows it field by
//! field. Encoding appends to a caller's `Vec<u8>` so a sender can reuse one
//! buffer; the `*_head` encoders write everything but the body so a large
//! body can go out with `writev` and never be copied. Decoding borrows from
//! the received bytes: a [`RequestView`] or [`Response`] points into the
//! buffer, nothing is copied.
//!
//! All integers are big-endian. Every length is checked against [`Limits`]
//! and against the bytes actually present before it is used.

use std::fmt;

use crate::key::{self, KeyError};
use crate::limits::{Limits, MAX_CLIENT_NAME, MAX_TEXT};

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"CH";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 8;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A request, client to service.
    Request,
    /// A response, service (or manager) to client.
    Response,
}

impl FrameKind {
    const fn code(self) -> u8 {
        match self {
            FrameKind::Request => 1,
            FrameKind::Response => 2,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Request or response.
    pub kind: FrameKind,
    /// Length of the payload that follows the header.
    pub payload_len: u32,
}

impl FrameHeader {
    /// Packs the header into its 8 bytes.
    #[must_use]
    pub fn pack(&self) -> [u8; HEADER_LEN] {
        let l = self.payload_len.to_be_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            VERSION,
            self.kind.code(),
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }

    /// Unpacks and checks a header: magic, version, kind.
    ///
    /// # Errors
    ///
    /// [`DecodeError::BadMagic`], [`DecodeError::UnsupportedVersion`] or
    /// [`DecodeError::BadKind`].
    pub fn unpack(b: &[u8; HEADER_LEN]) -> Result<FrameHeader, DecodeError> {
        if b[0..2] != MAGIC {
            return Err(DecodeError::BadMagic([b[0], b[1]]));
        }
        if b[2] != VERSION {
            return Err(DecodeError::UnsupportedVersion(b[2]));
        }
        let kind = match b[3] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            other => return Err(DecodeError::BadKind(other)),
        };
        Ok(FrameHeader {
            kind,
            payload_len: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// Request attributes: a bit set carried in every request.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Attributes(u8);

impl Attributes {
    /// No attribute.
    pub const NONE: Attributes = Attributes(0);
    /// Never retry this request, even after a silent close.
    pub const NO_RETRY: Attributes = Attributes(1);
    /// The client does not wait for the response (done once sent).
    pub const NO_WAIT: Attributes = Attributes(2);
    /// Keep the connection (and so the instance) for the next request.
    pub const KEEP_AFFINITY: Attributes = Attributes(4);
    /// This request must use a connection kept by a previous request.
    pub const NEED_AFFINITY: Attributes = Attributes(8);
    const ALL_BITS: u8 = 0x0f;

    /// The raw bits.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Builds from raw bits; `None` if an undefined bit is set.
    #[must_use]
    pub const fn from_bits(bits: u8) -> Option<Attributes> {
        if bits & !Self::ALL_BITS == 0 {
            Some(Attributes(bits))
        } else {
            None
        }
    }

    /// True if every bit of `other` is set here.
    #[must_use]
    pub const fn contains(self, other: Attributes) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets or clears the bits of `other`.
    pub fn set(&mut self, other: Attributes, on: bool) {
        if on {
            self.0 |= other.0;
        } else {
            self.0 &= !other.0;
        }
    }
}

impl std::ops::BitOr for Attributes {
    type Output = Attributes;
    fn bitor(self, rhs: Attributes) -> Attributes {
        Attributes(self.0 | rhs.0)
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Attributes::NO_RETRY, "NO_RETRY"),
            (Attributes::NO_WAIT, "NO_WAIT"),
            (Attributes::KEEP_AFFINITY, "KEEP_AFFINITY"),
            (Attributes::NEED_AFFINITY, "NEED_AFFINITY"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(a, _)| self.contains(*a))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "Attributes({})", set.join("|"))
    }
}

/// A framework error code, carried in an `ERROR` response. Codes not listed
/// here may appear from newer peers; treat them as [`ErrorCode::INTERNAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The request frame could not be decoded.
    pub const MALFORMED_REQUEST: ErrorCode = ErrorCode(1);
    /// The request exceeds the receiver's limits.
    pub const REQUEST_TOO_LARGE: ErrorCode = ErrorCode(2);
    /// The service took the request and dropped it without an answer.
    pub const NO_ANSWER: ErrorCode = ErrorCode(3);
    /// The client is not allowed to call this service.
    pub const NOT_PERMITTED: ErrorCode = ErrorCode(4);
    /// The request's protocol version is not spoken here.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(5);
    /// Something went wrong inside the framework.
    pub const INTERNAL: ErrorCode = ErrorCode(6);
    /// The response the service produced exceeds the limits.
    pub const RESPONSE_TOO_LARGE: ErrorCode = ErrorCode(7);
    /// The service does not serve the key the request names.
    pub const WRONG_SERVICE: ErrorCode = ErrorCode(8);
    /// The request's first bytes did not arrive within the service's read
    /// timeout.
    pub const READ_TIMEOUT: ErrorCode = ErrorCode(9);

    /// A short lowercase name for logs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self.0 {
            1 => "malformed request",
            2 => "request too large",
            3 => "no answer",
            4 => "not permitted",
            5 => "unsupported version",
            6 => "internal error",
            7 => "response too large",
            8 => "wrong service",
            9 => "read timeout",
            _ => "unknown error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Everything in a request but its context and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// The service key the client asked for (never a wildcard).
    pub key: &'a str,
    /// A name the client gives itself, for logs and statistics.
    pub client: &'a str,
    /// 1 for a first attempt, 2 for the automatic retry.
    pub attempt: u8,
    /// Attribute bits.
    pub attributes: Attributes,
}

/// Why a frame could not be encoded. Nothing was written to the output.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The key is not a valid concrete service key.
    Key(KeyError),
    /// The body is larger than the limit.
    BodyTooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        limit: u32,
    },
    /// More context entries than the limit.
    TooManyContextEntries {
        /// Entries given.
        count: usize,
        /// The limit.
        limit: u16,
    },
    /// A context name is empty or longer than the limit.
    ContextName {
        /// The name.
        name: String,
        /// The limit.
        limit: u16,
    },
    /// A context value is longer than the limit.
    ContextValueTooLarge {
        /// The entry's name.
        name: String,
        /// Value length.
        len: usize,
        /// The limit.
        limit: u32,
    },
    /// The client name is longer than [`MAX_CLIENT_NAME`].
    ClientNameTooLong {
        /// Its length.
        len: usize,
    },
    /// A fault text, reason or error text is longer than [`MAX_TEXT`].
    TextTooLong {
        /// Its length.
        len: usize,
    },
    /// The attempt number is not 1 or 2.
    BadAttempt(u8),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Key(e) => write!(f, "invalid service key: {e}"),
            EncodeError::BodyTooLarge { len, limit } => {
                write!(f, "body of {len} bytes exceeds the limit of {limit} bytes")
            }
            EncodeError::TooManyContextEntries { count, limit } => write!(
                f,
                "{count} context entries exceed the limit of {limit} entries"
            ),
            EncodeError::ContextName { name, limit } => {
                write!(f, "context name {name:?} must be 1 to {limit} bytes long")
            }
            EncodeError::ContextValueTooLarge { name, len, limit } => write!(
                f,
                "context value {name:?} of {len} bytes exceeds the limit of {limit} bytes"
            ),
            EncodeError::ClientNameTooLong { len } => write!(
                f,
                "client name of {len} bytes exceeds the limit of {MAX_CLIENT_NAME} bytes"
            ),
            EncodeError::TextTooLong { len } => {
                write!(
                    f,
                    "text of {len} bytes exceeds the limit of {MAX_TEXT} bytes"
                )
            }
            EncodeError::BadAttempt(n) => write!(f, "attempt must be 1 or 2, not {n}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Why received bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first two bytes are not [`MAGIC`].
    BadMagic([u8; 2]),
    /// The version byte is not [`VERSION`].
    UnsupportedVersion(u8),
    /// The kind byte is not 1 (request) or 2 (response).
    BadKind(u8),
    /// A request arrived where a response was expected, or the reverse.
    WrongKind {
        /// What was expected.
        expected: FrameKind,
    },
    /// The payload announced by the header exceeds the limit.
    TooLarge {
        /// The announced payload length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The payload ended inside the named field.
    Truncated(&'static str),
    /// Bytes remain after the last field.
    TrailingBytes(usize),
    /// The named text field is not UTF-8.
    NotUtf8(&'static str),
    /// The request's key is not a valid concrete key.
    Key(KeyError),
    /// The attributes byte has an undefined bit set.
    BadAttributes(u8),
    /// The attempt byte is not 1 or 2.
    BadAttempt(u8),
    /// The response status byte is not 0-3.
    BadStatus(u8),
    /// A context entry has an empty name (names are 1 byte or longer).
    EmptyContextName {
        /// The longest name allowed.
        limit: u16,
    },
    /// A field exceeds its limit.
    FieldTooLarge {
        /// The field.
        field: &'static str,
        /// Its length (or count).
        len: u64,
        /// The limit.
        limit: u64,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic(m) => write!(
                f,
                "not a charon frame: expected magic \"CH\", got {:?}",
                String::from_utf8_lossy(m)
            ),
            DecodeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "protocol version {v} is not supported (this side speaks {VERSION})"
                )
            }
            DecodeError::BadKind(k) => write!(f, "frame kind must be 1 or 2, not {k}"),
            DecodeError::WrongKind { expected } => {
                write!(f, "expected a {expected:?} frame, got the other kind")
            }
            DecodeError::TooLarge { len, limit } => write!(
                f,
                "frame payload of {len} bytes exceeds the limit of {limit} bytes"
            ),
            DecodeError::Truncated(what) => write!(f, "frame ends inside field {what}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes follow the last field"),
            DecodeError::NotUtf8(what) => write!(f, "field {what} is not valid UTF-8"),
            DecodeError::Key(e) => write!(f, "invalid service key: {e}"),
            DecodeError::BadAttributes(b) => {
                write!(
                    f,
                    "attribute bits {b:#04x} set undefined bits (valid: 0x0f)"
                )
            }
            DecodeError::BadAttempt(a) => write!(f, "attempt must be 1 or 2, not {a}"),
            DecodeError::BadStatus(s) => write!(f, "response status must be 0 to 3, not {s}"),
            DecodeError::EmptyContextName { limit } => {
                write!(
                    f,
                    "a context name must be 1 to {limit} bytes long, not empty"
                )
            }
            DecodeError::FieldTooLarge { field, len, limit } => {
                write!(f, "field {field} of {len} exceeds the limit of {limit}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------- requests

/// Appends a whole request frame to `out`.
///
/// # Errors
///
/// An [`EncodeError`] if any field breaks [`Limits`]; `out` is unchanged.
pub fn encode_request<K: AsRef<str>, V: AsRef<[u8]>>(
    head: &RequestHead<'_>,
    context: &[(K, V)],
    body: &[u8],
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_request_head(head, context, body.len(), limits, out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Appends a request frame up to, not including, its body bytes; the caller
/// sends `body_len` body bytes right after (for example with `writev`).
///
/// # Errors
///
/// An [`EncodeError`] if any field breaks [`Limits`]; `out` is unchanged.
pub fn encode_request_head<K: AsRef<str>, V: AsRef<[u8]>>(
    head: &RequestHead<'_>,
    context: &[(K, V)],
    body_len: usize,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    check_request_head(head, body_len, limits)?;
    let ctx_len = check_context(context, limits)?;
    let payload = 1 + 1 + 2 + head.key.len() + 2 + head.client.len() + 2 + ctx_len + 4 + body_len;
    // The limits checked bound payload far below u32::MAX; refuse rather
    // than truncate if a caller configured absurd limits.
    let payload_len = u32::try_from(payload).map_err(|_| EncodeError::BodyTooLarge {
        len: body_len,
        limit: limits.max_request_body,
    })?;
    out.reserve(HEADER_LEN + payload - body_len);
    out.extend_from_slice(
        &FrameHeader {
            kind: FrameKind::Request,
            payload_len,
        }
        .pack(),
    );
    out.push(head.attempt);
    out.push(head.attributes.bits());
    put_str16(out, head.key);
    put_str16(out, head.client);
    // Fits: check_context checked it against a u16 limit.
    out.extend_from_slice(&(context.len() as u16).to_be_bytes());
    for (name, value) in context {
        put_str16(out, name.as_ref());
        put_bytes32(out, value.as_ref());
    }
    // Fits: check_request_head checked it against a u32 limit.
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    Ok(())
}

/// Checks a request's head and body length against [`Limits`].
fn check_request_head(
    head: &RequestHead<'_>,
    body_len: usize,
    limits: &Limits,
) -> Result<(), EncodeError> {
    key::check_concrete(head.key).map_err(EncodeError::Key)?;
    if !(1..=2).contains(&head.attempt) {
        return Err(EncodeError::BadAttempt(head.attempt));
    }
    if head.client.len() > usize::from(MAX_CLIENT_NAME) {
        return Err(EncodeError::ClientNameTooLong {
            len: head.client.len(),
        });
    }
    if body_len > limits.max_request_body as usize {
        return Err(EncodeError::BodyTooLarge {
            len: body_len,
            limit: limits.max_request_body,
        });
    }
    Ok(())
}

/// Checks context entries against [`Limits`]; their encoded length.
fn check_context<K: AsRef<str>, V: AsRef<[u8]>>(
    context: &[(K, V)],
    limits: &Limits,
) -> Result<usize, EncodeError> {
    if context.len() > usize::from(limits.max_context_entries) {
        return Err(EncodeError::TooManyContextEntries {
            count: context.len(),
            limit: limits.max_context_entries,
        });
    }
    let mut ctx_len = 0usize;
    for (name, value) in context {
        let (name, value) = (name.as_ref(), value.as_ref());
        if name.is_empty() || name.len() > usize::from(limits.max_context_name) {
            return Err(EncodeError::ContextName {
                name: name.to_string(),
                limit: limits.max_context_name,
            });
        }
        if value.len() > limits.max_context_value as usize {
            return Err(EncodeError::ContextValueTooLarge {
                name: name.to_string(),
                len: value.len(),
                limit: limits.max_context_value,
            });
        }
        ctx_len += 2 + name.len() + 4 + value.len();
    }
    Ok(ctx_len)
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Callers check every such field against a limit below u16::MAX.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    // Callers check every such field against a limit below u32::MAX.
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// A request decoded in place: every field borrows the received bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestView<'a> {
    /// Key, client name, attempt and attributes.
    pub head: RequestHead<'a>,
    /// The context entries.
    pub context: Context<'a>,
    /// The body.
    pub body: &'a [u8],
}

/// A request's context entries, validated at decode time and read lazily.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    raw: &'a [u8],
    count: u16,
}

impl<'a> Context<'a> {
    /// An empty context.
    pub const EMPTY: Context<'static> = Context { raw: &[], count: 0 };

    /// Number of entries.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.count as usize
    }

    /// True if there is no entry.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The value of the first entry named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The entries in the order the client gave them.
    #[must_use]
    pub fn iter(&self) -> ContextIter<'a> {
        ContextIter {
            rest: self.raw,
            left: self.count,
        }
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

impl<'a> IntoIterator for Context<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = ContextIter<'a>;
    fn into_iter(self) -> ContextIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Context`]'s entries.
#[derive(Clone, Debug)]
pub struct ContextIter<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for ContextIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<(&'a str, &'a [u8])> {
        if self.left == 0 {
            return None;
        }
        // The bytes were validated by decode_request; a failure here would be
        // a bug, and ends iteration rather than panicking.
        let mut r = Reader::new(self.rest);
        let name = r.str16("context name").ok()?;
        let value = r.bytes32("context value").ok()?;
        self.rest = r.rest();
        self.left -= 1;
        Some((name, value))
    }
}

/// Decodes a request payload (the bytes after the header).
///
/// # Errors
///
/// A [`DecodeError`] naming the first field that is truncated, too large,
/// not UTF-8 or otherwise invalid.
pub fn decode_request<'a>(
    payload: &'a [u8],
    limits: &Limits,
) -> Result<RequestView<'a>, DecodeError> {
    let mut r = Reader::new(payload);
    let attempt = r.u8("attempt")?;
    if !(1..=2).contains(&attempt) {
        return Err(DecodeError::BadAttempt(attempt));
    }
    let bits = r.u8("attributes")?;
    let attributes = Attributes::from_bits(bits).ok_or(DecodeError::BadAttributes(bits))?;
    let key = r.str16("key")?;
    key::check_concrete(key).map_err(DecodeError::Key)?;
    let client = r.str16("client name")?;
    check_len("client name", client.len(), u64::from(MAX_CLIENT_NAME))?;
    let context = read_context(&mut r, limits)?;
    let body = r.bytes32("body")?;
    check_len("body", body.len(), u64::from(limits.max_request_body))?;
    r.finish()?;
    Ok(RequestView {
        head: RequestHead {
            key,
            client,
            attempt,
            attributes,
        },
        context,
        body,
    })
}

/// Reads and checks the context entries, leaving them encoded: a
/// [`Context`] reads them again when asked.
fn read_context<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<Context<'a>, DecodeError> {
    let count = r.u16("context count")?;
    check_len(
        "context count",
        usize::from(count),
        u64::from(limits.max_context_entries),
    )?;
    let ctx_start = r.pos;
    for _ in 0..count {
        let name = r.str16("context name")?;
        if name.is_empty() {
            return Err(DecodeError::EmptyContextName {
                limit: limits.max_context_name,
            });
        }
        check_len(
            "context name",
            name.len(),
            u64::from(limits.max_context_name),
        )?;
        let value = r.bytes32("context value")?;
        check_len(
            "context value",
            value.len(),
            u64::from(limits.max_context_value),
        )?;
    }
    Ok(Context {
        raw: &r.buf[ctx_start..r.pos],
        count,
    })
}

fn check_len(field: &'static str, len: usize, limit: u64) -> Result<(), DecodeError> {
    if len as u64 > limit {
        Err(DecodeError::FieldTooLarge {
            field,
            len: len as u64,
            limit,
        })
    } else {
        Ok(())
    }
}

// --------------------------------------------------------------- responses

/// A response, borrowed from the received bytes (or from the sender's data
/// when encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// Status 0: the service answered with this body.
    Ok(&'a [u8]),
    /// Status 1: the service refused the request with a fault.
    Fault {
        /// Fault code (see [`crate::fault`] for the reserved ones).
        code: u32,
        /// Human-readable text.
        text: &'a str,
    },
    /// Status 2: the service is in backoff and cannot run now.
    Unavailable {
        /// Seconds until the manager will try again.
        retry_after: u32,
        /// Why: the last exit and its last stderr line.
        reason: &'a str,
    },
    /// Status 3: the framework could not process the request.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Details.
        text: &'a str,
    },
}

/// Appends a whole response frame to `out`.
///
/// # Errors
///
/// [`EncodeError::BodyTooLarge`] or [`EncodeError::TextTooLong`]; `out` is
/// unchanged.
pub fn encode_response(
    resp: &Response<'_>,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match *resp {
        Response::Ok(body) => {
            encode_ok_head(body.len(), limits, out)?;
            out.extend_from_slice(body);
        }
        Response::Fault { code, text } => {
            check_text(text)?;
            push_response_header(out, 1 + 4 + 4 + text.len());
            out.push(1);
            out.extend_from_slice(&code.to_be_bytes());
            put_bytes32(out, text.as_bytes());
        }
        Response::Unavailable {
            retry_after,
            reason,
        } => {
            check_text(reason)?;
            push_response_header(out, 1 + 4 + 4 + reason.len());
            out.push(2);
            out.extend_from_slice(&retry_after.to_be_bytes());
            put_bytes32(out, reason.as_bytes());
        }
        Response::Error { code, text } => {
            check_text(text)?;
            push_response_header(out, 1 + 2 + 4 + text.len());
            out.push(3);
            out.extend_from_slice(&code.0.to_be_bytes());
            put_bytes32(out, text.as_bytes());
        }
    }
    Ok(())
}

/// Appends the head of an `OK` response whose `body_len` body bytes the
/// caller sends right after.
///
/// # Errors
///
/// [`EncodeError::BodyTooLarge`] if the body exceeds
/// [`Limits::max_response_body`]; `out` is unchanged.
pub fn encode_ok_head(
    body_len: usize,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if body_len > limits.max_response_body as usize {
        return Err(EncodeError::BodyTooLarge {
            len: body_len,
            limit: limits.max_response_body,
        });
    }
    push_response_header(out, 1 + 4 + body_len);
    out.push(0);
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    Ok(())
}

fn check_text(text: &str) -> Result<(), EncodeError> {
    if text.len() > MAX_TEXT as usize {
        Err(EncodeError::TextTooLong { len: text.len() })
    } else {
        Ok(())
    }
}

fn push_response_header(out: &mut Vec<u8>, payload: usize) {
    // Callers bound payload by the u32 limits.
    out.extend_from_slice(
        &FrameHeader {
            kind: FrameKind::Response,
            payload_len: payload as u32,
        }
        .pack(),
    );
}

/// Where an OK response's body starts in its payload: after the status
/// byte and the body's 4-byte length.
pub const OK_BODY_OFFSET: usize = 1 + 4;

/// For a reader that wants a large OK body in a buffer of its own instead
/// of copying it out of the frame: given the first bytes of a response
/// payload (`prefix`, at least [`OK_BODY_OFFSET`] of them) and the payload
/// length from the header, the body's length if the payload is an OK
/// response that [`decode_response`] would accept: status 0, a body length
/// that fills the rest of the payload exactly, within
/// `limits.max_response_body`. `None` for anything else (a fault, an
/// error, a short prefix, a malformed or oversized response): read the
/// whole frame and let [`decode_response`] say which.
#[must_use]
pub fn ok_body_len(prefix: &[u8], payload_len: u32, limits: &Limits) -> Option<usize> {
    let [0, a, b, c, d, ..] = *prefix else {
        return None;
    };
    let len = u32::from_be_bytes([a, b, c, d]);
    let fills = u64::from(len) + OK_BODY_OFFSET as u64 == u64::from(payload_len);
    (fills && len <= limits.max_response_body).then_some(len as usize)
}

/// Decodes a response payload (the bytes after the header).
///
/// # Errors
///
/// A [`DecodeError`] naming the first invalid field.
pub fn decode_response<'a>(
    payload: &'a [u8],
    limits: &Limits,
) -> Result<Response<'a>, DecodeError> {
    let mut r = Reader::new(payload);
    let status = r.u8("status")?;
    let resp = match status {
        0 => {
            let body = r.bytes32("body")?;
            check_len("body", body.len(), u64::from(limits.max_response_body))?;
            Response::Ok(body)
        }
        1 => {
            let code = r.u32("fault code")?;
            let text = r.text32("fault text")?;
            Response::Fault { code, text }
        }
        2 => {
            let retry_after = r.u32("retry-after")?;
            let reason = r.text32("reason")?;
            Response::Unavailable {
                retry_after,
                reason,
            }
        }
        3 => {
            let code = ErrorCode(r.u16("error code")?);
            let text = r.text32("error text")?;
            Response::Error { code, text }
        }
        other => return Err(DecodeError::BadStatus(other)),
    };
    r.finish()?;
    Ok(resp)
}

// ------------------------------------------------------------------ reader

/// A bounds-checked cursor over untrusted bytes. Every read checks the
/// remaining length first, so no length in the input can cause a panic or
/// an allocation.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    const fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn str16(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let n = self.u16(what)?;
        let b = self.take(usize::from(n), what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8(what))
    }

    fn bytes32(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(what)?;
        self.take(n as usize, what)
    }

    fn text32(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.bytes32(what)?;
        check_len(what, b.len(), u64::from(MAX_TEXT))?;
        std::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8(what))
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}
