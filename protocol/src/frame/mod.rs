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
//! All integers are big-endian. Every length is checked against
//! [`Limits`](crate::Limits) and against the bytes actually present before
//! it is used.
//!
//! One concept a file: the header (`header.rs`), requests (`request.rs`)
//! and their context entries (`context.rs`), responses (`response.rs`),
//! the errors (`error.rs`), and the byte-level reading and writing both
//! directions share (`wire.rs`).

mod context;
mod error;
mod header;
mod request;
mod response;
mod wire;

pub use context::{Context, ContextIter};
pub use error::{DecodeError, EncodeError};
pub use header::{FrameHeader, FrameKind, HEADER_LEN, MAGIC, VERSION};
pub use request::{
    decode_request, encode_request, encode_request_head, Attributes, RequestHead, RequestView,
};
pub use response::{
    decode_response, encode_ok_head, encode_response, ok_body_len, ErrorCode, Response,
    OK_BODY_OFFSET,
};
