//! Property tests of the wire codecs: round trips, canonical encoding, and
//! the promise that no byte sequence from a peer can make a decoder panic.
//!
//! Frames from a peer are untrusted input, so beside the round trips every
//! decoder (`decode_request`, `decode_response`, `FrameHeader::unpack`,
//! `FrameBuf::read_from`, `report::decode`, `ServiceKey::parse*`) is fed
//! arbitrary and mutated bytes. The codecs' unit tests cover fixed cases;
//! the fuzz targets in `fuzz/` push the same decoders much further than the
//! moderate case counts here, which keep the suite to a few seconds.

use std::io::{self, Read};

use charon_protocol::report::{self, Message, Outcome, Record};
use charon_protocol::{
    check_concrete, decode_request, decode_response, encode_ok_head, encode_request,
    encode_request_head, encode_response, ok_body_len, Attributes, DecodeError, EncodeError,
    ErrorCode, Fill, FrameBuf, FrameHeader, FrameKind, Limits, ReadError, RequestHead, RequestView,
    Response, Serialization, ServiceKey, HEADER_LEN, MAX_CLIENT_NAME, MAX_KEY_LEN, MAX_TEXT,
};
use proptest::prelude::*;
use proptest::sample::select;

fn config() -> ProptestConfig {
    // PROPTEST_CASES overrides the count: fewer under Miri, more for a
    // deeper search by hand.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs for proptest to anchor a
        // regressions file to; a failure prints its minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------- strategies

fn part() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,32}"
}

fn version() -> impl Strategy<Value = String> {
    prop_oneof![Just("0".to_string()), "[1-9][0-9]{0,5}"]
}

fn serialization() -> impl Strategy<Value = Serialization> {
    select(Serialization::ALL.to_vec())
}

/// A valid concrete key and its four parts.
fn key() -> impl Strategy<Value = (String, [String; 4])> {
    (part(), part(), version(), serialization()).prop_map(|(a, f, v, s)| {
        let parts = [a, f, v, s.as_str().to_string()];
        (parts.join("."), parts)
    })
}

/// Client names of up to 64 characters of any width: at most 256 bytes.
fn client() -> impl Strategy<Value = String> {
    "\\PC{0,64}"
}

fn context() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec(
        (
            "[a-z][a-z0-9.-]{0,24}",
            proptest::collection::vec(any::<u8>(), 0..64),
        ),
        0..8,
    )
}

fn body_upto(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn attributes() -> impl Strategy<Value = Attributes> {
    (0u8..16).prop_map(|b| Attributes::from_bits(b).expect("bits below 16 are all defined"))
}

#[derive(Clone, Debug)]
struct Req {
    key: String,
    client: String,
    attempt: u8,
    attributes: Attributes,
    context: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Req {
    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            key: &self.key,
            client: &self.client,
            attempt: self.attempt,
            attributes: self.attributes,
        }
    }

    fn encode(&self, limits: &Limits) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        encode_request(&self.head(), &self.context, &self.body, limits, &mut out)?;
        Ok(out)
    }
}

fn request() -> impl Strategy<Value = Req> {
    request_upto(4096)
}

fn request_upto(max_body: usize) -> impl Strategy<Value = Req> {
    (
        key(),
        client(),
        1u8..=2,
        attributes(),
        context(),
        body_upto(max_body),
    )
        .prop_map(
            |((key, _), client, attempt, attributes, context, body)| Req {
                key,
                client,
                attempt,
                attributes,
                context,
                body,
            },
        )
}

#[derive(Clone, Debug)]
enum Resp {
    Ok(Vec<u8>),
    Fault(u32, String),
    Unavailable(u32, String),
    Error(u16, String),
}

impl Resp {
    fn view(&self) -> Response<'_> {
        match self {
            Resp::Ok(b) => Response::Ok(b),
            Resp::Fault(code, text) => Response::Fault { code: *code, text },
            Resp::Unavailable(retry_after, reason) => Response::Unavailable {
                retry_after: *retry_after,
                reason,
            },
            Resp::Error(code, text) => Response::Error {
                code: ErrorCode(*code),
                text,
            },
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_response(&self.view(), &Limits::default(), &mut out).expect("within limits");
        out
    }
}

fn response() -> impl Strategy<Value = Resp> {
    response_upto(4096)
}

fn response_upto(max_body: usize) -> impl Strategy<Value = Resp> {
    let text = "\\PC{0,200}";
    prop_oneof![
        body_upto(max_body).prop_map(Resp::Ok),
        (any::<u32>(), text).prop_map(|(c, t)| Resp::Fault(c, t)),
        (any::<u32>(), text).prop_map(|(r, t)| Resp::Unavailable(r, t)),
        (any::<u16>(), text).prop_map(|(c, t)| Resp::Error(c, t)),
    ]
}

/// Limits from tiny to default, so that every limit check is reached.
fn limits() -> impl Strategy<Value = Limits> {
    (0u32..5000, 0u32..5000, 0u16..10, 0u16..40, 0u32..100).prop_map(|(rq, rs, n, name, value)| {
        Limits {
            max_request_body: rq,
            max_response_body: rs,
            max_context_entries: n,
            max_context_name: name,
            max_context_value: value,
        }
    })
}

/// A valid frame of either kind, with the kind it is.
fn frame() -> impl Strategy<Value = (FrameKind, Vec<u8>)> {
    frame_upto(4096)
}

fn frame_upto(max_body: usize) -> impl Strategy<Value = (FrameKind, Vec<u8>)> {
    prop_oneof![
        request_upto(max_body)
            .prop_map(|r| (FrameKind::Request, r.encode(&Limits::default()).unwrap())),
        response_upto(max_body).prop_map(|r| (FrameKind::Response, r.encode())),
    ]
}

// ---------------------------------------------------------------- readers

/// A reader that returns the input in the chunk sizes of a script, with
/// `WouldBlock` (and `Interrupted`) interleaved, as a non-blocking socket
/// does; then EOF.
struct Chunked<'a> {
    data: &'a [u8],
    script: Vec<(usize, u8)>,
    step: usize,
    hiccuped: bool,
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let (size, hiccup) = self.script[self.step % self.script.len()];
        self.step += 1;
        // Never two hiccups in a row, so that every other call progresses.
        self.hiccuped = !self.hiccuped && hiccup % 4 < 2;
        if self.hiccuped {
            return Err(if hiccup % 4 == 0 {
                io::ErrorKind::WouldBlock.into()
            } else {
                io::ErrorKind::Interrupted.into()
            });
        }
        let n = size.max(1).min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn chunking() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((1usize..300, any::<u8>()), 1..16)
}

/// What reading one frame came to, comparable across chunkings.
#[derive(Debug, PartialEq, Eq)]
enum Outcome1 {
    Complete(Vec<u8>),
    Eof(usize),
    Decode(DecodeError),
}

/// Drives `read_from` until it stops returning `Pending`.
fn read_frame(fb: &mut FrameBuf, r: &mut dyn Read) -> Outcome1 {
    // Each call makes progress or reports Pending; the readers above block
    // at most every other call, so this bound is never reached by a
    // correct FrameBuf.
    for _ in 0..100_000 {
        match fb.read_from(r) {
            Ok(Fill::Complete) => return Outcome1::Complete(fb.frame().to_vec()),
            Ok(Fill::Eof { received }) => return Outcome1::Eof(received),
            Ok(Fill::Pending) => {}
            Err(ReadError::Decode(e)) => return Outcome1::Decode(e),
            Err(ReadError::Io(e)) => panic!("unexpected io error {e}"),
        }
    }
    panic!("FrameBuf made no progress");
}

fn read_whole(kind: FrameKind, max_payload: u64, data: &[u8]) -> Outcome1 {
    let mut fb = FrameBuf::new(kind, max_payload);
    read_frame(&mut fb, &mut &data[..])
}

fn read_chunked(
    kind: FrameKind,
    max_payload: u64,
    data: &[u8],
    script: Vec<(usize, u8)>,
) -> Outcome1 {
    let mut fb = FrameBuf::new(kind, max_payload);
    let mut r = Chunked {
        data,
        script,
        step: 0,
        hiccuped: false,
    };
    read_frame(&mut fb, &mut r)
}

/// Re-encodes a decoded request: the encoding is canonical, so a frame that
/// decodes must re-encode to exactly its own bytes.
fn reencode_request(v: &RequestView<'_>) -> Vec<u8> {
    let ctx: Vec<(&str, &[u8])> = v.context.iter().collect();
    let mut out = Vec::new();
    let generous = Limits {
        max_request_body: u32::MAX / 2,
        max_context_entries: u16::MAX,
        max_context_name: u16::MAX,
        max_context_value: u32::MAX / 4,
        ..Limits::default()
    };
    encode_request(&v.head, &ctx, v.body, &generous, &mut out)
        .expect("a decoded request re-encodes");
    out
}

fn reencode_response(r: &Response<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let generous = Limits {
        max_response_body: u32::MAX / 2,
        ..Limits::default()
    };
    encode_response(r, &generous, &mut out).expect("a decoded response re-encodes");
    out
}

/// Decodes a frame whose header is intact, checking the canonical property.
fn decode_checked(kind: FrameKind, frame: &[u8], limits: &Limits) {
    let payload = &frame[HEADER_LEN..];
    match kind {
        FrameKind::Request => {
            if let Ok(v) = decode_request(payload, limits) {
                assert_eq!(reencode_request(&v), frame);
            }
        }
        FrameKind::Response => {
            if let Ok(r) = decode_response(payload, limits) {
                assert_eq!(reencode_response(&r), frame);
            }
        }
    }
}

// ------------------------------------------------------------ round trips

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_round_trip(req in request(), script in chunking()) {
        let limits = Limits::default();
        let wire = req.encode(&limits).unwrap();
        let header = FrameHeader::unpack(wire[..HEADER_LEN].try_into().unwrap()).unwrap();
        prop_assert_eq!(header.kind, FrameKind::Request);
        prop_assert_eq!(header.payload_len as usize, wire.len() - HEADER_LEN);
        prop_assert!(u64::from(header.payload_len) <= limits.max_request_payload());

        let got = read_chunked(FrameKind::Request, limits.max_request_payload(), &wire, script);
        prop_assert_eq!(got, Outcome1::Complete(wire.clone()));

        let v = decode_request(&wire[HEADER_LEN..], &limits).unwrap();
        prop_assert_eq!(v.head, req.head());
        prop_assert_eq!(v.body, &req.body[..]);
        prop_assert_eq!(v.context.len(), req.context.len());
        let ctx: Vec<(&str, &[u8])> = v.context.iter().collect();
        let want: Vec<(&str, &[u8])> =
            req.context.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        prop_assert_eq!(ctx, want);
        for (name, _) in &req.context {
            let first = req.context.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
            prop_assert_eq!(v.context.get(name), first);
        }

        // The head encoder plus the body bytes is the whole frame.
        let mut head = Vec::new();
        encode_request_head(&req.head(), &req.context, req.body.len(), &limits, &mut head).unwrap();
        head.extend_from_slice(&req.body);
        prop_assert_eq!(head, wire);
    }

    #[test]
    fn response_round_trip(resp in response(), script in chunking()) {
        let limits = Limits::default();
        let wire = resp.encode();
        let got = read_chunked(FrameKind::Response, limits.max_response_payload(), &wire, script);
        prop_assert_eq!(got, Outcome1::Complete(wire.clone()));
        let decoded = decode_response(&wire[HEADER_LEN..], &limits).unwrap();
        prop_assert_eq!(decoded, resp.view());
        if let Resp::Ok(body) = &resp {
            let mut head = Vec::new();
            encode_ok_head(body.len(), &limits, &mut head).unwrap();
            head.extend_from_slice(body);
            prop_assert_eq!(head, wire);
        }
    }

    /// `ok_body_len`, which sees only a payload's first bytes, says Some
    /// exactly when decoding the whole payload gives an OK body of that
    /// length: for every kind of response, mutated, under any limits.
    #[test]
    fn ok_body_len_agrees_with_decode(
        resp in response(),
        flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        cut in any::<prop::sample::Index>(),
        lim in limits(),
    ) {
        let wire = resp.encode();
        let mut payload = wire[HEADER_LEN..].to_vec();
        if let Some((at, x)) = flip {
            let i = at.index(payload.len());
            payload[i] ^= x;
        }
        let prefix = &payload[..5 + cut.index(payload.len() - 4)];
        for limits in [Limits::default(), lim] {
            let want = match decode_response(&payload, &limits) {
                Ok(Response::Ok(body)) => Some(body.len()),
                _ => None,
            };
            prop_assert_eq!(ok_body_len(prefix, payload.len() as u32, &limits), want);
        }
        // Fewer than five bytes never tell.
        prop_assert_eq!(ok_body_len(&payload[..4], payload.len() as u32, &Limits::default()), None);
    }

    #[test]
    fn key_parts_and_wildcard((text, parts) in key()) {
        let k = ServiceKey::parse(&text).unwrap();
        prop_assert_eq!(k.as_str(), text.as_str());
        prop_assert_eq!(k.application(), parts[0].as_str());
        prop_assert_eq!(k.function(), parts[1].as_str());
        prop_assert_eq!(k.version(), parts[2].parse::<u32>().unwrap());
        prop_assert_eq!(k.serialization().as_str(), parts[3].as_str());
        prop_assert!(check_concrete(&text).is_ok());
        prop_assert_eq!(k.socket_file_name(), format!("{text}.sock"));
        let wild = format!("{}..{}.{}", parts[0], parts[2], parts[3]);
        let order: Vec<String> = k.lookup_order().iter().map(ToString::to_string).collect();
        prop_assert_eq!(order, vec![text.clone(), wild.clone()]);
        let w = k.wildcard().unwrap();
        prop_assert_eq!(&w, &ServiceKey::parse_config(&wild).unwrap());
        prop_assert!(w.is_wildcard());
        prop_assert_eq!(w.version(), k.version());
        prop_assert_eq!(ServiceKey::parse(&wild).unwrap_err(), charon_protocol::KeyError::EmptyFunction);
    }

    #[test]
    fn report_round_trip(recs in proptest::collection::vec(
        (any::<u32>(), any::<u32>(), any::<u32>(), 0u8..4, 1u8..=2), 0..80)
    ) {
        let recs: Vec<Record> = recs.into_iter().map(|(e, q, s, o, a)| Record {
            elapsed_us: e,
            request_bytes: q,
            response_bytes: s,
            outcome: [Outcome::Ok, Outcome::Fault, Outcome::Error, Outcome::NoAnswer][usize::from(o)],
            attempt: a,
        }).collect();
        let wire = report::encode_records(&recs);
        let kept = recs.len().min(report::MAX_RECORDS);
        prop_assert_eq!(wire.len(), report::MESSAGE_HEADER_LEN + kept * report::RECORD_LEN);
        prop_assert_eq!(report::decode(&wire).unwrap(), Message::Records(recs[..kept].to_vec()));
    }
}

// ------------------------------------------------------- untrusted input

/// A records message as its sender wrote it: receivers ignore each record's
/// reserved u16 (bytes 14-15), which a version-1 sender leaves zero.
fn zero_reserved(msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    for rec in m[report::MESSAGE_HEADER_LEN..].chunks_exact_mut(report::RECORD_LEN) {
        rec[14] = 0;
        rec[15] = 0;
    }
    m
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), lim in limits()) {
        for limits in [Limits::default(), lim] {
            if let Ok(v) = decode_request(&bytes, &limits) {
                // Whatever decodes respects the limits it was decoded under.
                prop_assert!(v.body.len() <= limits.max_request_body as usize);
                prop_assert!(v.context.len() <= usize::from(limits.max_context_entries));
                prop_assert!(v.head.client.len() <= usize::from(MAX_CLIENT_NAME));
                prop_assert_eq!(&reencode_request(&v)[HEADER_LEN..], &bytes[..]);
            }
            if let Ok(r) = decode_response(&bytes, &limits) {
                prop_assert_eq!(&reencode_response(&r)[HEADER_LEN..], &bytes[..]);
            }
        }
    }

    #[test]
    fn header_unpack_is_exact(b in any::<[u8; HEADER_LEN]>(), valid_prefix in any::<bool>(), kind in 1u8..=2) {
        let mut b = b;
        if valid_prefix {
            b[..4].copy_from_slice(&[b'C', b'H', 1, kind]);
        }
        match FrameHeader::unpack(&b) {
            Ok(h) => {
                prop_assert_eq!(&b[..3], b"CH\x01");
                prop_assert_eq!(h.pack(), b);
            }
            Err(DecodeError::BadMagic(m)) => prop_assert!(m != *b"CH"),
            Err(DecodeError::UnsupportedVersion(v)) => prop_assert!(v != 1),
            Err(DecodeError::BadKind(k)) => prop_assert!(k != 1 && k != 2),
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    /// Arbitrary bytes (half the time behind a valid header) read through
    /// FrameBuf give the same outcome however the stream is chunked.
    #[test]
    fn framebuf_arbitrary_streams(
        tail in proptest::collection::vec(any::<u8>(), 0..600),
        header_len in 0u32..700,
        with_header in any::<bool>(),
        request_kind in any::<bool>(),
        max_payload in 0u64..1000,
        script in chunking(),
    ) {
        let kind = if request_kind { FrameKind::Request } else { FrameKind::Response };
        let mut data = Vec::new();
        if with_header {
            data.extend_from_slice(&FrameHeader { kind, payload_len: header_len }.pack());
        }
        data.extend_from_slice(&tail);
        let whole = read_whole(kind, max_payload, &data);
        let chunked = read_chunked(kind, max_payload, &data, script);
        prop_assert_eq!(&whole, &chunked);
        match whole {
            Outcome1::Complete(frame) => {
                let h = FrameHeader::unpack(frame[..HEADER_LEN].try_into().unwrap()).unwrap();
                prop_assert_eq!(h.kind, kind);
                prop_assert!(u64::from(h.payload_len) <= max_payload);
                prop_assert_eq!(&frame[..], &data[..HEADER_LEN + h.payload_len as usize]);
            }
            Outcome1::Eof(received) => prop_assert_eq!(received, data.len()),
            Outcome1::Decode(_) => prop_assert!(data.len() >= HEADER_LEN),
        }
    }

    /// A valid frame with bytes flipped, inserted, removed or cut never
    /// panics a reader or a decoder, and what still decodes is canonical.
    #[test]
    fn mutated_frames_never_panic(
        (kind, wire) in frame(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..6),
        lim in limits(),
    ) {
        let mut m = wire;
        for (at, op, byte) in edits {
            let i = at.index(m.len().max(1));
            match op {
                0 if !m.is_empty() => m[i] = byte,
                1 => m.insert(i.min(m.len()), byte),
                2 if !m.is_empty() => { m.remove(i); }
                3 => m.truncate(i),
                _ => {}
            }
        }
        for limits in [Limits::default(), lim] {
            let max = match kind {
                FrameKind::Request => limits.max_request_payload(),
                FrameKind::Response => limits.max_response_payload(),
            };
            match read_whole(kind, max, &m) {
                Outcome1::Complete(frame) => decode_checked(kind, &frame, &limits),
                Outcome1::Eof(n) => prop_assert_eq!(n, m.len()),
                Outcome1::Decode(_) => {}
            }
            // The decoders also see payloads whose header was damaged.
            if m.len() >= HEADER_LEN {
                let _ = decode_request(&m[HEADER_LEN..], &limits);
                let _ = decode_response(&m[HEADER_LEN..], &limits);
            }
        }
    }

    #[test]
    fn report_decode_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        match report::decode(&bytes) {
            Ok(Message::Records(recs)) => {
                prop_assert_eq!(report::encode_records(&recs), zero_reserved(&bytes));
            }
            Ok(m) => prop_assert_eq!(&report::encode_signal(&m)[..], &bytes[..]),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Valid-looking report messages with random counts and outcomes.
    #[test]
    fn report_decode_near_valid(kind in 0u8..5, count in 0u16..70, body in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let mut bytes = vec![report::REPORT_VERSION, kind];
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&body[..body.len().min(usize::from(count) * report::RECORD_LEN)]);
        if let Ok(Message::Records(recs)) = report::decode(&bytes) {
            prop_assert_eq!(recs.len(), usize::from(count));
            prop_assert_eq!(report::encode_records(&recs), zero_reserved(&bytes));
        }
    }

    #[test]
    fn key_parse_arbitrary(s in "\\PC{0,80}|[A-Za-z0-9._-]{0,60}|[a-z]{1,5}\\.[a-z]{0,5}\\.[0-9]{0,7}\\.(raw|JSON|json|XML|CBOR)") {
        let concrete = ServiceKey::parse(&s);
        let config = ServiceKey::parse_config(&s);
        prop_assert_eq!(concrete.is_ok(), check_concrete(&s).is_ok());
        match (&concrete, &config) {
            (Ok(k), Ok(c)) => {
                prop_assert_eq!(k, c);
                prop_assert_eq!(k.as_str(), s.as_str());
                prop_assert!(!k.is_wildcard());
            }
            (Err(_), Ok(c)) => prop_assert!(c.is_wildcard()),
            (Err(a), Err(b)) => {
                prop_assert_eq!(a, b);
                prop_assert!(!a.to_string().is_empty());
            }
            (Ok(_), Err(_)) => prop_assert!(false, "a concrete key is also a config key"),
        }
    }
}

proptest! {
    // Each case reads every prefix of its frame through a fresh FrameBuf
    // (a thousand reads or so): a quarter of the cases keeps it quick.
    #![proptest_config(ProptestConfig { cases: config().cases.div_ceil(4), ..config() })]

    /// Every strict prefix of a valid frame, then EOF, is an incomplete
    /// frame of exactly that many bytes; the whole frame is complete.
    #[test]
    fn every_prefix_then_eof((kind, wire) in frame_upto(256), script in chunking()) {
        let max = Limits::default().max_request_payload();
        for cut in 0..wire.len() {
            prop_assert_eq!(read_whole(kind, max, &wire[..cut]), Outcome1::Eof(cut));
        }
        let cut = wire.len() - 1;
        prop_assert_eq!(read_chunked(kind, max, &wire[..cut], script), Outcome1::Eof(cut));
        prop_assert_eq!(read_whole(kind, max, &wire), Outcome1::Complete(wire.clone()));
    }
}

// ------------------------------------------------------- encoder refusals

/// One way to break a request's limits, applied to a valid request.
#[derive(Clone, Debug)]
enum Breakage {
    Key(String),
    Attempt(u8),
    ClientTooLong,
    BodyTooLarge,
    TooManyEntries,
    EmptyName,
    NameTooLong,
    ValueTooLarge,
}

fn breakage() -> impl Strategy<Value = Breakage> {
    prop_oneof![
        prop_oneof![
            Just("a.b.0".to_string()),
            Just("mail..1.JSON".to_string()),
            Just("a.b.01.raw".to_string()),
            Just("a.b.0.yaml".to_string()),
            "[a-z]{33}\\.b\\.0\\.raw",
        ]
        .prop_map(Breakage::Key),
        prop_oneof![Just(0u8), 3u8..=255].prop_map(Breakage::Attempt),
        Just(Breakage::ClientTooLong),
        Just(Breakage::BodyTooLarge),
        Just(Breakage::TooManyEntries),
        Just(Breakage::EmptyName),
        Just(Breakage::NameTooLong),
        Just(Breakage::ValueTooLarge),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_refusals_leave_output_unchanged(
        mut req in request(),
        broken in breakage(),
        prefix in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let limits = Limits {
            max_request_body: 4096,
            max_context_entries: 8,
            max_context_name: 25,
            max_context_value: 64,
            ..Limits::default()
        };
        // The strategies stay within these limits; check that first so a
        // refusal below is caused by the breakage alone.
        prop_assert!(req.encode(&limits).is_ok());
        match broken {
            Breakage::Key(k) => req.key = k,
            Breakage::Attempt(a) => req.attempt = a,
            Breakage::ClientTooLong => req.client = "x".repeat(usize::from(MAX_CLIENT_NAME) + 1),
            Breakage::BodyTooLarge => req.body = vec![7; 4097],
            Breakage::TooManyEntries => req.context = vec![("n".into(), vec![]); 9],
            Breakage::EmptyName => req.context.push((String::new(), vec![])),
            Breakage::NameTooLong => req.context.push(("n".repeat(26), vec![])),
            Breakage::ValueTooLarge => req.context.push(("n".into(), vec![0; 65])),
        }
        let mut out = prefix.clone();
        let r = encode_request(&req.head(), &req.context, &req.body, &limits, &mut out);
        prop_assert!(r.is_err());
        prop_assert_eq!(&out, &prefix);
        let r = encode_request_head(&req.head(), &req.context, req.body.len(), &limits, &mut out);
        prop_assert!(r.is_err());
        prop_assert_eq!(&out, &prefix);
    }

    #[test]
    fn response_refusals_leave_output_unchanged(
        which in 0u8..4,
        prefix in proptest::collection::vec(any::<u8>(), 0..64),
        body_limit in 0u32..2000,
        extra in 1usize..100,
    ) {
        let limits = Limits { max_response_body: body_limit, ..Limits::default() };
        let long = "é".repeat((MAX_TEXT as usize + extra).div_ceil(2));
        let body = vec![1u8; body_limit as usize + extra];
        let resp = match which {
            0 => Response::Ok(&body),
            1 => Response::Fault { code: 100, text: &long },
            2 => Response::Unavailable { retry_after: 1, reason: &long },
            _ => Response::Error { code: ErrorCode::INTERNAL, text: &long },
        };
        let mut out = prefix.clone();
        prop_assert!(encode_response(&resp, &limits, &mut out).is_err());
        prop_assert_eq!(&out, &prefix);
        prop_assert!(encode_ok_head(body.len(), &limits, &mut out).is_err());
        prop_assert_eq!(&out, &prefix);
    }
}

/// The largest request the limits allow is accepted by a reader bounded by
/// `max_request_payload`, one byte more of body is refused by the encoder.
#[test]
fn limits_bound_the_largest_request() {
    let limits = Limits {
        max_request_body: 1000,
        max_context_entries: 3,
        max_context_name: 10,
        max_context_value: 20,
        ..Limits::default()
    };
    let p = "p".repeat(32);
    let key = format!("{p}.{p}.999999.PROTOBUF");
    let client = "c".repeat(usize::from(MAX_CLIENT_NAME));
    let head = RequestHead {
        key: &key,
        client: &client,
        attempt: 2,
        attributes: Attributes::from_bits(0x0f).unwrap(),
    };
    let ctx = vec![("n".repeat(10), vec![9u8; 20]); 3];
    let mut wire = Vec::new();
    encode_request(&head, &ctx, &[5; 1000], &limits, &mut wire).unwrap();
    // The limit assumes a key of MAX_KEY_LEN; the longest key the rules
    // allow is shorter (version and serialization are short), so the bound
    // is exact but for that slack.
    assert_eq!(
        limits.max_request_payload() - (wire.len() - HEADER_LEN) as u64,
        (MAX_KEY_LEN - key.len()) as u64,
    );
    assert_eq!(
        read_whole(FrameKind::Request, limits.max_request_payload(), &wire),
        Outcome1::Complete(wire.clone())
    );
    assert!(decode_request(&wire[HEADER_LEN..], &limits).is_ok());
    let mut out = Vec::new();
    assert!(matches!(
        encode_request(&head, &ctx, &[5; 1001], &limits, &mut out),
        Err(EncodeError::BodyTooLarge {
            len: 1001,
            limit: 1000
        })
    ));
    assert!(out.is_empty());
}

/// The largest response of each kind fits `max_response_payload`.
#[test]
fn limits_bound_the_largest_response() {
    let limits = Limits {
        max_response_body: 10,
        ..Limits::default()
    };
    let text = "t".repeat(MAX_TEXT as usize);
    for resp in [
        Response::Ok(&[0; 10]),
        Response::Fault {
            code: 1,
            text: &text,
        },
        Response::Unavailable {
            retry_after: 1,
            reason: &text,
        },
        Response::Error {
            code: ErrorCode(1),
            text: &text,
        },
    ] {
        let mut wire = Vec::new();
        encode_response(&resp, &limits, &mut wire).unwrap();
        assert!((wire.len() - HEADER_LEN) as u64 <= limits.max_response_payload());
        assert_eq!(
            read_whole(FrameKind::Response, limits.max_response_payload(), &wire),
            Outcome1::Complete(wire.clone())
        );
        assert_eq!(decode_response(&wire[HEADER_LEN..], &limits).unwrap(), resp);
    }
}
