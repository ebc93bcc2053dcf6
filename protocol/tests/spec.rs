//! Keeps PROTOCOL.md honest: its example frames and its layout tables are
//! checked against what this crate actually encodes and lays out.
//!
//! The document marks each example with an HTML comment
//! (`<!-- example: NAME -->`) followed by a fenced hex dump, and each layout
//! table with `<!-- layout: NAME -->`. This test rebuilds every example with
//! the real encoders and every offset with `offset_of!`, and fails with the
//! expected text if the document differs, so the document cannot drift from
//! the code. The codecs themselves are tested elsewhere; this file only
//! checks the document.
//!
//! To print the current dumps (after a deliberate format change), run
//! `CHARON_PRINT_EXAMPLES=1 cargo test -p charon-protocol --test spec -- --nocapture`.

use std::collections::BTreeMap;
use std::mem::offset_of;

use charon_protocol::report::{self, Outcome, Record};
use charon_protocol::scoreboard::{self, Header, Slot};
use charon_protocol::{
    encode_request, encode_response, fault, Attributes, ErrorCode, Limits, RequestHead, Response,
};

/// The examples the document must show, built with the real encoders.
fn examples() -> BTreeMap<&'static str, Vec<u8>> {
    let limits = Limits::default();
    let mut m = BTreeMap::new();

    let mut req = Vec::new();
    encode_request(
        &RequestHead {
            key: "system.echo.0.raw",
            client: "cli",
            attempt: 1,
            attributes: Attributes::NO_RETRY,
        },
        &[("lang", b"en")],
        b"hi",
        &limits,
        &mut req,
    )
    .expect("example request is within limits");
    m.insert("request", req);

    let mut retry = Vec::new();
    encode_request(
        &RequestHead {
            key: "mail.send.1.JSON",
            client: "",
            attempt: 2,
            attributes: Attributes::KEEP_AFFINITY,
        },
        &[] as &[(&str, &[u8])],
        b"{}",
        &limits,
        &mut retry,
    )
    .expect("example request is within limits");
    m.insert("request-retry", retry);

    let responses: [(&str, Response<'_>); 4] = [
        ("response-ok", Response::Ok(b"hi")),
        (
            "response-fault",
            Response::Fault {
                code: fault::UNKNOWN_FUNCTION,
                text: "no such function",
            },
        ),
        (
            "response-unavailable",
            Response::Unavailable {
                retry_after: 5,
                reason: "exit 1",
            },
        ),
        (
            "response-error",
            Response::Error {
                code: ErrorCode::REQUEST_TOO_LARGE,
                text: "too big",
            },
        ),
    ];
    for (name, resp) in responses {
        let mut out = Vec::new();
        encode_response(&resp, &limits, &mut out).expect("example response is within limits");
        m.insert(name, out);
    }

    m.insert(
        "report",
        report::encode_records(&[Record {
            elapsed_us: 250,
            request_bytes: 54,
            response_bytes: 15,
            outcome: Outcome::Ok,
            attempt: 1,
        }]),
    );
    m
}

/// The layout tables the document must show: (field, offset, size).
fn layouts() -> BTreeMap<&'static str, Vec<(&'static str, usize, usize)>> {
    let mut m = BTreeMap::new();
    m.insert(
        "scoreboard-header",
        vec![
            ("magic", offset_of!(Header, magic), 8),
            ("version", offset_of!(Header, version), 4),
            ("slot_count", offset_of!(Header, slot_count), 4),
            ("slot_size", offset_of!(Header, slot_size), 4),
            ("want_hints", offset_of!(Header, want_hints), 4),
            ("last_hint_ns", offset_of!(Header, last_hint_ns), 8),
            ("slots_in_use", offset_of!(Header, slots_in_use), 4),
        ],
    );
    m.insert(
        "scoreboard-slot",
        vec![
            ("state", offset_of!(Slot, state), 4),
            ("pid", offset_of!(Slot, pid), 4),
            ("attempt", offset_of!(Slot, attempt), 4),
            ("requests", offset_of!(Slot, requests), 8),
            ("request_limit", offset_of!(Slot, request_limit), 8),
            ("busy_since_ns", offset_of!(Slot, busy_since_ns), 8),
            ("busy_total_ns", offset_of!(Slot, busy_total_ns), 8),
            ("request_bytes", offset_of!(Slot, request_bytes), 8),
            (
                "client",
                offset_of!(Slot, client),
                scoreboard::CLIENT_PREFIX,
            ),
            ("retire_notice", offset_of!(Slot, retire_notice), 8),
        ],
    );
    m
}

/// Formats bytes as the document shows them: offset, 16 bytes in hex, and
/// the printable ASCII between bars.
fn hexdump(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        s.push_str(&format!(
            "{:04x}  {:<47}  |{ascii}|\n",
            i * 16,
            hex.join(" ")
        ));
    }
    s
}

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The fenced block that follows each `<!-- TAG: NAME -->` marker.
fn marked_blocks(doc: &str, tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let marker = format!("<!-- {tag}: ");
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(&marker) else {
            continue;
        };
        let name = rest.trim_end_matches("-->").trim().to_string();
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "marker {name:?} must be followed by a fenced block, not {fence:?}"
        );
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        assert!(
            out.insert(name.clone(), body).is_none(),
            "{tag} {name:?} appears twice"
        );
    }
    out
}

/// Parses a dump back to bytes, checking each line's offset.
fn parse_dump(name: &str, dump: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in dump.lines().filter(|l| !l.trim().is_empty()) {
        let hex = line.split("  |").next().unwrap_or_default();
        let mut words = hex.split_whitespace();
        let offset = words.next().unwrap_or_default();
        assert_eq!(
            usize::from_str_radix(offset, 16).ok(),
            Some(bytes.len()),
            "example {name}: line {line:?} has the wrong offset"
        );
        for w in words {
            let b = u8::from_str_radix(w, 16)
                .unwrap_or_else(|_| panic!("example {name}: {w:?} is not a hex byte"));
            bytes.push(b);
        }
    }
    bytes
}

#[test]
fn examples_in_the_document_match_the_encoder() {
    let want = examples();
    if std::env::var_os("CHARON_PRINT_EXAMPLES").is_some() {
        for (name, bytes) in &want {
            println!("<!-- example: {name} -->\n```text\n{}```\n", hexdump(bytes));
        }
    }
    let doc = document();
    let got = marked_blocks(&doc, "example");
    let names: Vec<&String> = got.keys().collect();
    let want_names: Vec<String> = want.keys().map(ToString::to_string).collect();
    assert_eq!(
        names.into_iter().cloned().collect::<Vec<_>>(),
        want_names,
        "PROTOCOL.md must show exactly these examples"
    );
    for (name, bytes) in &want {
        let shown = parse_dump(name, &got[*name]);
        assert!(
            shown == *bytes,
            "PROTOCOL.md example {name} differs from the encoder; it should read:\n{}",
            hexdump(bytes)
        );
        // The ASCII gutter is part of what a reader sees: keep it exact too.
        assert_eq!(
            got[*name],
            hexdump(bytes),
            "example {name}: layout of the dump"
        );
    }
}

#[test]
fn layouts_in_the_document_match_the_structs() {
    let doc = document();
    let got = marked_blocks(&doc, "layout");
    let want = layouts();
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        want.keys().map(ToString::to_string).collect::<Vec<_>>(),
        "PROTOCOL.md must show exactly these layouts"
    );
    for (name, fields) in &want {
        let rows: Vec<(String, usize, usize)> = got[*name]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                assert!(
                    w.len() >= 3,
                    "layout {name}: row {l:?} needs offset, size, field"
                );
                let num = |s: &str| {
                    s.parse::<usize>()
                        .unwrap_or_else(|_| panic!("layout {name}: {s:?} is not a number"))
                };
                (w[2].to_string(), num(w[0]), num(w[1]))
            })
            .collect();
        let want_rows: Vec<(String, usize, usize)> = fields
            .iter()
            .map(|&(f, o, s)| (f.to_string(), o, s))
            .collect();
        assert_eq!(rows, want_rows, "layout {name} in PROTOCOL.md");
    }
    // Sizes the document states in prose.
    assert_eq!(std::mem::size_of::<Header>(), scoreboard::HEADER_SIZE);
    assert_eq!(std::mem::size_of::<Slot>(), scoreboard::SLOT_SIZE);
    assert_eq!(scoreboard::HEADER_SIZE, 64);
    assert_eq!(scoreboard::SLOT_SIZE, 128);
    assert_eq!(scoreboard::MAGIC.to_be_bytes(), *b"CHRNSB01");
}

/// Numbers the document states in prose: if one changes, the document
/// must change with it.
#[test]
fn constants_the_document_states() {
    use charon_protocol::managed::*;
    use charon_protocol::*;
    let l = Limits::default();
    assert_eq!(MAGIC, *b"CH");
    assert_eq!(VERSION, 1);
    assert_eq!(HEADER_LEN, 8);
    assert_eq!(l.max_request_body, 64 << 20);
    assert_eq!(l.max_response_body, 64 << 20);
    assert_eq!(l.max_context_entries, 64);
    assert_eq!(l.max_context_name, 128);
    assert_eq!(l.max_context_value, 64 << 10);
    assert_eq!(MAX_CLIENT_NAME, 256);
    assert_eq!(MAX_TEXT, 64 << 10);
    assert_eq!(MAX_PART_LEN, 32);
    assert_eq!(MAX_KEY_LEN, 131);
    assert_eq!(SOCKET_SUFFIX, ".sock");
    assert_eq!(l.max_request_payload(), 71_312_143);
    assert_eq!(l.max_response_payload(), 67_108_869);
    let names: Vec<&str> = Serialization::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "raw",
            "JSON",
            "XML",
            "NETSTRING",
            "HTML",
            "PHP",
            "SOAP",
            "COBOL",
            "JMS",
            "MSGPACK",
            "PROTOBUF",
            "CBOR"
        ]
    );
    let attrs = [
        Attributes::NO_RETRY,
        Attributes::NO_WAIT,
        Attributes::KEEP_AFFINITY,
        Attributes::NEED_AFFINITY,
    ];
    assert_eq!(attrs.map(Attributes::bits), [1, 2, 4, 8]);
    assert_eq!(Attributes::from_bits(0x10), None);
    let codes: Vec<(u16, &str)> = (1..=9).map(|c| (c, ErrorCode(c).name())).collect();
    assert_eq!(
        codes,
        [
            (1, "malformed request"),
            (2, "request too large"),
            (3, "no answer"),
            (4, "not permitted"),
            (5, "unsupported version"),
            (6, "internal error"),
            (7, "response too large"),
            (8, "wrong service"),
            (9, "read timeout"),
        ]
    );
    let faults: Vec<(u32, Option<&str>)> = (1..=8).map(|c| (c, fault::reserved_name(c))).collect();
    assert_eq!(faults[..7].iter().filter(|f| f.1.is_some()).count(), 7);
    assert_eq!(faults[7].1, None);
    assert_eq!(fault::FIRST_APPLICATION_CODE, 100);
    assert_eq!((LISTEN_FD, SCOREBOARD_FD, REPORT_FD), (3, 4, 5));
    assert_eq!((STANDALONE_REQUEST_FD, STANDALONE_RESPONSE_FD), (3, 4));
    assert_eq!(
        [
            ENV_SLOT,
            ENV_SERVICE_KEY,
            ENV_RUN_DIR,
            ENV_ACCEPT_SOCKET,
            ENV_READ_TIMEOUT_MS,
            ENV_AFFINITY_TIMEOUT_MS,
            ENV_ALLOWED_UIDS,
            ENV_ALLOWED_GIDS,
        ],
        [
            "CHARON_SLOT",
            "CHARON_SERVICE_KEY",
            "CHARON_RUN_DIR",
            "CHARON_ACCEPT_SOCKET",
            "CHARON_READ_TIMEOUT_MS",
            "CHARON_AFFINITY_TIMEOUT_MS",
            "CHARON_ALLOWED_UIDS",
            "CHARON_ALLOWED_GIDS",
        ]
    );
    assert_eq!(STOP_SIGNAL, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(DRAIN_SIGNAL, nix::sys::signal::Signal::SIGUSR1);
    assert_eq!(report::MAX_RECORDS, 64);
    assert_eq!(report::MAX_MESSAGE_LEN, 1028);
}
