//! One test per bug found in the protocol crate while specifying and
//! fuzzing it, each reproducing the bug's input. The property tests and
//! fuzz targets look for new ones; this file keeps the old ones fixed.

use charon_protocol::{decode_request, DecodeError, Limits, HEADER_LEN};

/// A request whose one context entry has an empty name.
fn empty_context_name_request() -> Vec<u8> {
    let key = b"system.echo.0.raw";
    let mut p = vec![1, 0];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(key);
    p.extend_from_slice(&[0, 0]); // client name: empty
    p.extend_from_slice(&[0, 1]); // one context entry
    p.extend_from_slice(&[0, 0]); // its name: empty
    p.extend_from_slice(&[0, 0, 0, 1, b'v']);
    p.extend_from_slice(&[0, 0, 0, 0]); // body: empty
    p
}

/// An empty context name was reported as a field *over* its limit
/// ("field context name (empty) of 0 exceeds the limit of 128"), which
/// told the sender the opposite of the problem and made services answer
/// REQUEST_TOO_LARGE for a malformed request. See PROTOCOL.md section 3.
#[test]
fn empty_context_name_is_not_reported_as_too_large() {
    let p = empty_context_name_request();
    let err = decode_request(&p, &Limits::default()).unwrap_err();
    assert_eq!(err, DecodeError::EmptyContextName { limit: 128 });
    let msg = err.to_string();
    assert_eq!(msg, "a context name must be 1 to 128 bytes long, not empty");
    assert!(!matches!(err, DecodeError::FieldTooLarge { .. }));
    // The same bytes with a one-byte name decode.
    let mut ok = p.clone();
    let at = HEADER_LEN - 8 + 2 + 2 + 17 + 2 + 2;
    ok.splice(at..at + 2, [0, 1, b'n']);
    let v = decode_request(&ok, &Limits::default()).unwrap();
    assert_eq!(v.context.get("n"), Some(&b"v"[..]));
}
