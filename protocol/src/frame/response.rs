//! Response frames: OK with a body, a service fault, unavailable (in
//! backoff) or a framework [`ErrorCode`]; encoded whole or, for a large OK
//! body, head first; decoded in place.

use std::fmt;

use crate::limits::{Limits, MAX_TEXT};

use super::wire::{check_len, put_bytes32, Reader};
use super::{DecodeError, EncodeError, FrameHeader, FrameKind};

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
