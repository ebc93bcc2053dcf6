//! Helpers shared by the fuzz targets: a reader that hands a frame over in
//! chunks with `WouldBlock` between them (as a non-blocking socket does),
//! limits derived from input bytes, and the canonical-encoding check. The
//! targets themselves decide what to feed where.

#![allow(dead_code)]

use std::io::{self, Read};

use charon_protocol::{
    decode_request, decode_response, encode_request, encode_response, Fill, FrameBuf, FrameKind,
    Limits, HEADER_LEN,
};

/// Hands out `size` bytes per read, with `WouldBlock` every other call.
pub struct Chunks<'a> {
    pub data: &'a [u8],
    pub size: usize,
    pub block: bool,
}

impl Read for Chunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.block = !self.block;
        if self.block {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.size.max(1).min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Limits from tiny to default, chosen by one input byte, so that every
/// limit check in the decoders is reachable.
pub fn limits(b: u8) -> Limits {
    if b & 0x80 == 0 {
        return Limits::default();
    }
    let b = u32::from(b & 0x7f);
    Limits {
        max_request_body: b * 8,
        max_response_body: b * 8,
        max_context_entries: (b % 5) as u16,
        max_context_name: (b % 17) as u16,
        max_context_value: b % 33,
    }
}

/// Reads one frame of `kind` from `wire` in chunks of `chunk` bytes and
/// checks what `FrameBuf` promises: a complete frame is exactly the first
/// bytes of the stream, an early EOF reports every byte received. Returns
/// the frame if one completed.
pub fn read_frame(kind: FrameKind, max_payload: u64, wire: &[u8], chunk: usize) -> Option<Vec<u8>> {
    let mut fb = FrameBuf::new(kind, max_payload);
    let mut r = Chunks {
        data: wire,
        size: chunk,
        block: false,
    };
    loop {
        match fb.read_from(&mut r) {
            Ok(Fill::Pending) => {}
            Ok(Fill::Complete) => {
                let frame = fb.frame();
                assert!(frame.len() >= HEADER_LEN);
                assert!((frame.len() - HEADER_LEN) as u64 <= max_payload);
                assert_eq!(frame, &wire[..frame.len()]);
                assert_eq!(fb.payload(), &frame[HEADER_LEN..]);
                return Some(frame.to_vec());
            }
            Ok(Fill::Eof { received }) => {
                assert_eq!(received, wire.len(), "early eof must count every byte");
                return None;
            }
            Err(_) => {
                assert!(wire.len() >= HEADER_LEN, "a header error needs a header");
                return None;
            }
        }
    }
}

/// Decodes a request payload; if it decodes, re-encoding must give back
/// exactly the same bytes (the encoding is canonical).
pub fn check_request(payload: &[u8], limits: &Limits) {
    let Ok(v) = decode_request(payload, limits) else {
        return;
    };
    assert!(v.body.len() <= limits.max_request_body as usize);
    assert!(v.context.len() <= usize::from(limits.max_context_entries));
    let ctx: Vec<(&str, &[u8])> = v.context.iter().collect();
    assert_eq!(ctx.len(), v.context.len());
    for (name, value) in &ctx {
        assert!(!name.is_empty() && name.len() <= usize::from(limits.max_context_name));
        assert!(value.len() <= limits.max_context_value as usize);
    }
    let mut out = Vec::new();
    encode_request(&v.head, &ctx, v.body, limits, &mut out).expect("a decoded request re-encodes");
    assert_eq!(&out[HEADER_LEN..], payload);
}

/// Decodes a response payload; if it decodes, it re-encodes to the same
/// bytes.
pub fn check_response(payload: &[u8], limits: &Limits) {
    let Ok(r) = decode_response(payload, limits) else {
        return;
    };
    let mut out = Vec::new();
    encode_response(&r, limits, &mut out).expect("a decoded response re-encodes");
    assert_eq!(&out[HEADER_LEN..], payload);
}
