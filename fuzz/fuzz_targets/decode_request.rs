//! Fuzzes the service side of a connection: request bytes from an untrusted
//! client read through `FrameBuf` (in chunks, with `WouldBlock` between
//! them) and decoded, plus the raw input decoded as a payload directly.
//! Input: byte 0 picks the chunk size, byte 1 the limits, the rest is the
//! stream.

#![no_main]

use charon_protocol::{FrameKind, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let [chunk, lim, wire @ ..] = data else {
        return;
    };
    let limits = common::limits(*lim);
    if let Some(frame) = common::read_frame(
        FrameKind::Request,
        limits.max_request_payload(),
        wire,
        usize::from(*chunk),
    ) {
        common::check_request(&frame[HEADER_LEN..], &limits);
    }
    common::check_request(wire, &limits);
});
