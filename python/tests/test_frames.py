"""Frames: PROTOCOL.md's example frames decode and re-encode byte for byte,
decoding arbitrary bytes raises only the library's own errors, and encoding
then decoding gives back what was encoded."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charon import frame
from charon.errors import CharonError, InvalidRequest, ProtocolError
from charon.managed import MAX_RECORDS, Records

from conftest import REPO

SPEC = (REPO / "protocol" / "PROTOCOL.md").read_text()


def example(name: str) -> bytes:
    """The bytes of a ``<!-- example: NAME -->`` hex dump."""
    m = re.search(r"<!-- example: " + re.escape(name) + r" -->\n```text\n(.*?)```", SPEC, re.S)
    assert m, f"example {name} in PROTOCOL.md"
    out = bytearray()
    for line in m.group(1).splitlines():
        hexpart = line[6:54]
        out += bytes.fromhex(hexpart)
    return bytes(out)


def test_request_example_decodes_and_reencodes():
    data = example("request")
    req = frame.decode_frame(data, frame.KIND_REQUEST)
    assert req == frame.Request("system.echo.0.raw", b"hi", "cli", [("lang", b"en")], 1,
                                frame.NO_RETRY)
    assert frame.encode_request(req) == data


def test_retry_example_decodes_and_reencodes():
    data = example("request-retry")
    req = frame.decode_frame(data, frame.KIND_REQUEST)
    assert (req.key, req.attempt, req.attributes, req.body) == (
        "mail.send.1.JSON", 2, frame.KEEP_AFFINITY, b"{}")
    assert frame.encode_request(req) == data


@pytest.mark.parametrize("name,expected", [
    ("response-ok", frame.Response(frame.OK, body=b"hi")),
    ("response-fault", frame.Response(frame.FAULT, code=2, text="no such function")),
    ("response-unavailable", frame.Response(frame.UNAVAILABLE, retry_after=5, text="exit 1")),
    ("response-error", frame.Response(frame.ERROR, code=2, text="too big")),
])
def test_response_examples_decode_and_reencode(name, expected):
    data = example(name)
    assert frame.decode_frame(data, frame.KIND_RESPONSE) == expected
    assert frame.encode_response(expected) == data


def test_report_example_encodes():
    r = Records()
    assert not r.add(250, 54, 15, 0, 1, now_ns=7)
    assert r.count == 1
    assert r.oldest_ns == 7
    assert r.take() == example("report")
    assert r.count == 0 and r.oldest_ns == 0


def test_a_full_records_message_reuses_its_buffer_and_saturates():
    r = Records()
    for i in range(MAX_RECORDS):
        # Due when full.
        assert r.add(i, 2**40, 3, 2, 2, now_ns=100 + i) == (i + 1 == MAX_RECORDS)
        assert r.count == i + 1
    assert r.oldest_ns == 100
    msg = r.take()
    assert len(msg) == 4 + 16 * MAX_RECORDS
    assert msg[:4] == bytes([1, 1, 0, MAX_RECORDS])
    # The request size saturates at u32's maximum.
    assert msg[4 + 16 * 5:4 + 16 * 6] == bytes.fromhex("00000005ffffffff0000000302020000")
    r.add(9, 9, 9, 0, 1, now_ns=5)
    assert r.take() == bytes.fromhex("01010001" "00000009000000090000000900010000")


def test_limits_match_the_spec_formula():
    assert frame.DEFAULT_LIMITS.max_request_payload() == 71_312_143
    assert frame.DEFAULT_LIMITS.max_response_payload() == 67_108_869


def test_header_checks_in_order_with_their_codes():
    ok = frame.header(frame.KIND_REQUEST, 10)
    frame.check_header(ok, frame.KIND_REQUEST)
    with pytest.raises(ProtocolError) as e:
        frame.check_header(b"XX" + ok[2:], frame.KIND_REQUEST)
    assert e.value.error_code == frame.MALFORMED_REQUEST
    with pytest.raises(ProtocolError) as e:
        frame.check_header(ok[:2] + b"\x02" + ok[3:], frame.KIND_REQUEST)
    assert e.value.error_code == frame.UNSUPPORTED_VERSION
    with pytest.raises(ProtocolError) as e:
        frame.check_header(ok, frame.KIND_RESPONSE)
    assert e.value.error_code == frame.MALFORMED_REQUEST
    with pytest.raises(ProtocolError) as e:
        frame.check_header(frame.header(frame.KIND_REQUEST, 0xFFFFFFFF), frame.KIND_REQUEST)
    assert e.value.error_code == frame.REQUEST_TOO_LARGE


def test_encoders_refuse_what_breaks_a_limit():
    tiny = frame.Limits(max_request_body=4, max_context_entries=1)
    with pytest.raises(InvalidRequest):
        frame.encode_request(frame.Request("a.b.0.raw", b"12345"), tiny)
    with pytest.raises(InvalidRequest):
        frame.encode_request(frame.Request("a.b.0.raw", b"", context=[("x", b""), ("y", b"")]),
                             tiny)
    with pytest.raises(InvalidRequest):
        frame.encode_request(frame.Request("a..0.raw", b""))
    with pytest.raises(InvalidRequest):
        frame.encode_response(frame.Response(frame.FAULT, code=1, text="x" * 70_000))


# ------------------------------------------------------------ properties

part = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
keys = st.builds(
    lambda a, f, v, s: f"{a}.{f}.{v}.{s}",
    part, part, st.integers(0, 999_999), st.sampled_from(frame_serials := [
        "raw", "JSON", "XML", "NETSTRING", "HTML", "PHP", "SOAP", "COBOL", "JMS", "MSGPACK",
        "PROTOBUF", "CBOR"]),
)
names = st.text(min_size=1, max_size=20).filter(lambda s: 1 <= len(s.encode()) <= 128)
requests = st.builds(
    frame.Request,
    key=keys,
    body=st.binary(max_size=300),
    client=st.text(max_size=40),
    context=st.lists(st.tuples(names, st.binary(max_size=50)), max_size=5),
    attempt=st.sampled_from([1, 2]),
    attributes=st.integers(0, 15),
)
texts = st.text(max_size=60)
responses = st.one_of(
    st.builds(lambda b: frame.Response(frame.OK, body=b), st.binary(max_size=300)),
    st.builds(lambda c, t: frame.Response(frame.FAULT, code=c, text=t),
              st.integers(0, 2**32 - 1), texts),
    st.builds(lambda r, t: frame.Response(frame.UNAVAILABLE, retry_after=r, text=t),
              st.integers(0, 2**32 - 1), texts),
    st.builds(lambda c, t: frame.Response(frame.ERROR, code=c, text=t),
              st.integers(0, 2**16 - 1), texts),
)


@given(requests)
def test_requests_round_trip(req):
    data = frame.encode_request(req)
    assert frame.decode_frame(data, frame.KIND_REQUEST) == req


@given(responses)
def test_responses_round_trip(resp):
    data = frame.encode_response(resp)
    assert frame.decode_frame(data, frame.KIND_RESPONSE) == resp


@settings(max_examples=500)
@given(st.binary(max_size=200), st.sampled_from([frame.KIND_REQUEST, frame.KIND_RESPONSE]))
def test_arbitrary_bytes_raise_only_protocol_errors(data, kind):
    try:
        decoded = frame.decode_frame(data, kind)
    except ProtocolError:
        return
    enc = frame.encode_request if kind == frame.KIND_REQUEST else frame.encode_response
    assert enc(decoded) == data, "whatever decodes re-encodes to the same bytes"


@settings(max_examples=300)
@given(requests, st.data())
def test_mutated_requests_raise_only_protocol_errors(req, data):
    raw = bytearray(frame.encode_request(req))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            frame.decode_frame(candidate, frame.KIND_REQUEST)
        except CharonError as e:
            assert isinstance(e, ProtocolError)


def test_remembered_prefixes_decode_like_the_field_by_field_path():
    """decode_request_frame remembers validated prefixes (the last one, and
    earlier ones by value); a frame that shares a prefix but not a valid
    body still fails, and alternating prefixes decode each to its own
    fields."""
    a = frame.encode_request(frame.Request("app.one.1.raw", b"first", "alpha"))
    b = frame.encode_request(frame.Request("app.two.2.JSON", b"{}", "beta", [], 2,
                                           frame.NO_RETRY))
    for _ in range(3):
        assert frame.decode_request_frame(a) == (1, 0, "app.one.1.raw", "alpha", (), b"first")
        assert frame.decode_request_frame(b) == (2, frame.NO_RETRY, "app.two.2.JSON", "beta",
                                                 (), b"{}")
    # A request like the last in all but its body's bytes (the last request
    # remembered whole but for its body) gets its own body.
    b2 = frame.encode_request(frame.Request("app.two.2.JSON", b"[]", "beta", [], 2,
                                            frame.NO_RETRY))
    assert frame.decode_request_frame(b2) == (2, frame.NO_RETRY, "app.two.2.JSON", "beta",
                                              (), b"[]")
    # The last prefix again, its body length a byte short or a byte long.
    head, rest = b[:8], b[8:]
    short = head + rest[:-6] + (len(b"{}") + 1).to_bytes(4, "big") + b"{}"
    with pytest.raises(ProtocolError):
        frame.decode_request_frame(short)
    with pytest.raises(ProtocolError):
        frame.decode_request_frame(b + b"!")
    # The same prefix with a body over the limit.
    small = frame.Limits(max_request_body=1)
    with pytest.raises(ProtocolError):
        frame.decode_request_frame(b, small)
    # A request with context is decoded field by field each time.
    c = frame.encode_request(frame.Request("app.one.1.raw", b"x", "alpha", [("k", b"v")]))
    for _ in range(2):
        assert frame.decode_request_frame(c) == (1, 0, "app.one.1.raw", "alpha",
                                                 (("k", b"v"),), b"x")
