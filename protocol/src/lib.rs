//! The Charon wire protocol: service keys, frames, limits, and the records
//! the manager and its instances share.
//!
//! This crate has no policy. It is the contract the other three crates (the
//! service library, the client library and the manager) are written against:
//!
//! - [`ServiceKey`]: `Application.Function.Version.Serialization`, its rules
//!   and its wildcard (`key`);
//! - frames: [`encode_request`], [`decode_request`], [`encode_response`],
//!   [`decode_response`], and [`FrameBuf`] to read one frame from a stream
//!   (`frame`, `framebuf`); `PROTOCOL.md` beside this crate specifies them
//!   byte by byte;
//! - [`Limits`]: the sizes a receiver accepts;
//! - [`fault`]: reserved service fault codes;
//! - [`managed`]: the fds and environment a managed instance receives;
//! - [`scoreboard`]: the shared-memory slots instances update;
//! - [`report`]: the per-request records instances send the manager;
//! - [`template`]: the control messages between the manager and a
//!   service's template (a fork server).
//!
//! `unsafe` lives in `sys` alone (the scoreboard's shared memory mapping).
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod fault;
mod frame;
mod framebuf;
mod key;
mod limits;
pub mod managed;
pub mod report;
pub mod scoreboard;
mod sys;
pub mod template;

pub use frame::{
    decode_request, decode_response, encode_ok_head, encode_request, encode_request_head,
    encode_response, ok_body_len, Attributes, Context, ContextIter, DecodeError, EncodeError,
    ErrorCode, FrameHeader, FrameKind, RequestHead, RequestView, Response, HEADER_LEN, MAGIC,
    OK_BODY_OFFSET, VERSION,
};
pub use framebuf::{Fill, FrameBuf, ReadError};
pub use key::{
    check_concrete, KeyError, Part, Serialization, ServiceKey, MAX_KEY_LEN, MAX_PART_LEN,
    SOCKET_SUFFIX,
};
pub use limits::{
    Limits, DEFAULT_MAX_BODY, DEFAULT_MAX_CONTEXT_ENTRIES, DEFAULT_MAX_CONTEXT_NAME,
    DEFAULT_MAX_CONTEXT_VALUE, MAX_CLIENT_NAME, MAX_TEXT,
};
