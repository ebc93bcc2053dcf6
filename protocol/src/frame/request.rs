//! Request frames: the head (key, client name, attempt, [`Attributes`]),
//! the context and the body; encoded into a caller's buffer, decoded in
//! place as a [`RequestView`]. The context entries are `context.rs`'s.

use std::fmt;

use crate::key;
use crate::limits::{Limits, MAX_CLIENT_NAME};

use super::context::{check_context, read_context, Context};
use super::wire::{check_len, put_bytes32, put_str16, Reader};
use super::{DecodeError, EncodeError, FrameHeader, FrameKind, HEADER_LEN};

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
