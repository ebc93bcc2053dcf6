//! `frame_check`: decodes frames given on stdin with this crate and prints
//! what it made of each, so that another implementation of PROTOCOL.md can
//! be checked against this one (the Python package's tests do).
//!
//! Each input line is `req HEX` or `resp HEX`: one whole frame, as bytes
//! in hex. Each output line is `ok HEX`, the frame decoded and encoded
//! again, or `err CODE`, the framework error code a service answers such a
//! frame with (1 malformed, 2 too large, 5 unsupported version). Default
//! limits throughout.

use std::io::{self, BufRead, BufWriter, Write};

use charon_protocol::{
    decode_request, decode_response, encode_request, encode_response, DecodeError, FrameHeader,
    FrameKind, Limits, HEADER_LEN,
};

fn main() -> io::Result<()> {
    let limits = Limits::default();
    let mut out = BufWriter::new(io::stdout().lock());
    for line in io::stdin().lock().lines() {
        let line = line?;
        let Some((kind, hex)) = line.split_once(' ') else {
            writeln!(out, "bad line")?;
            continue;
        };
        let kind = match kind {
            "req" => FrameKind::Request,
            "resp" => FrameKind::Response,
            _ => {
                writeln!(out, "bad kind")?;
                continue;
            }
        };
        let Some(bytes) = unhex(hex) else {
            writeln!(out, "bad hex")?;
            continue;
        };
        match check(&bytes, kind, &limits) {
            Ok(again) => writeln!(out, "ok {}", to_hex(&again))?,
            Err(code) => writeln!(out, "err {code}")?,
        }
    }
    out.flush()
}

/// Decodes one whole frame of `kind` and encodes it again; the error code
/// a service would answer otherwise.
fn check(bytes: &[u8], kind: FrameKind, limits: &Limits) -> Result<Vec<u8>, u16> {
    let head: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(1u16)?;
    let header = FrameHeader::unpack(head).map_err(|e| code(&e))?;
    if header.kind != kind {
        return Err(1);
    }
    let max = match kind {
        FrameKind::Request => limits.max_request_payload(),
        FrameKind::Response => limits.max_response_payload(),
    };
    if u64::from(header.payload_len) > max {
        return Err(2);
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != header.payload_len as usize {
        return Err(1);
    }
    let mut again = Vec::new();
    match kind {
        FrameKind::Request => {
            let v = decode_request(payload, limits).map_err(|e| code(&e))?;
            let context: Vec<(&str, &[u8])> = v.context.iter().collect();
            encode_request(&v.head, &context, v.body, limits, &mut again).map_err(|_| 6u16)?;
        }
        FrameKind::Response => {
            let r = decode_response(payload, limits).map_err(|e| code(&e))?;
            encode_response(&r, limits, &mut again).map_err(|_| 6u16)?;
        }
    }
    Ok(again)
}

/// The framework error code for a decode error, as the service library
/// answers it.
fn code(e: &DecodeError) -> u16 {
    match e {
        DecodeError::TooLarge { .. } | DecodeError::FieldTooLarge { .. } => 2,
        DecodeError::UnsupportedVersion(_) => 5,
        _ => 1,
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}
