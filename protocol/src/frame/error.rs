//! Why a frame could not be encoded ([`EncodeError`]: nothing was written)
//! or decoded ([`DecodeError`]: the first field that is wrong, named).

use std::fmt;

use crate::key::KeyError;
use crate::limits::{MAX_CLIENT_NAME, MAX_TEXT};

use super::{FrameKind, VERSION};

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
    /// The first two bytes are not [`MAGIC`](super::MAGIC).
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
