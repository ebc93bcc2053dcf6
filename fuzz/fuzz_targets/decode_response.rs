//! Fuzzes the client side of a connection: response bytes from an
//! untrusted service (or anything listening at its socket path) read
//! through `FrameBuf` and decoded, plus the raw input decoded as a payload.
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
        FrameKind::Response,
        limits.max_response_payload(),
        wire,
        usize::from(*chunk),
    ) {
        common::check_response(&frame[HEADER_LEN..], &limits);
    }
    common::check_response(wire, &limits);
});
