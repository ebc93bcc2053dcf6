"""Python against the Rust protocol crate: a few thousand random frames,
valid and broken, encoded or mangled by Python, are decoded by the crate's
`frame_check` example and by this package; both must agree on every one
(the same error code, or the same frame), and what Rust encodes back
decodes in Python to the same request or response."""

import random
import subprocess

from charon import frame
from charon.errors import ProtocolError
from conftest import PATIENCE, bin_path

SERIALS = ["raw", "JSON", "XML", "NETSTRING", "HTML", "PHP", "SOAP", "COBOL", "JMS",
           "MSGPACK", "PROTOBUF", "CBOR"]
ALNUM = "abcXYZ019_-"


def rand_text(r: random.Random, n: int) -> str:
    return "".join(r.choice("ab c\u00e9\u4e2d\U0001f600-") for _ in range(r.randint(0, n)))


def rand_request(r: random.Random) -> frame.Request:
    part = lambda: "".join(r.choice(ALNUM) for _ in range(r.randint(1, 32)))  # noqa: E731
    key = f"{part()}.{part()}.{r.randint(0, 999999)}.{r.choice(SERIALS)}"
    ctx = [(rand_text(r, 10) or "n", r.randbytes(r.randint(0, 40)))
           for _ in range(r.randint(0, 4))]
    return frame.Request(key, r.randbytes(r.randint(0, 200)), rand_text(r, 30), ctx,
                         r.choice([1, 2]), r.randint(0, 15))


def rand_response(r: random.Random) -> frame.Response:
    s = r.randint(0, 3)
    if s == frame.OK:
        return frame.Response(s, body=r.randbytes(r.randint(0, 200)))
    if s == frame.UNAVAILABLE:
        return frame.Response(s, retry_after=r.randint(0, 2**32 - 1), text=rand_text(r, 40))
    code = r.randint(0, 2**32 - 1 if s == frame.FAULT else 2**16 - 1)
    return frame.Response(s, code=code, text=rand_text(r, 40))


def mangle(r: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(r.randint(1, 3)):
        how = r.randint(0, 4)
        if how == 0 and b:
            b[r.randrange(len(b))] = r.randint(0, 255)
        elif how == 1:
            b = b[:r.randint(0, len(b))]
        elif how == 2:
            b += r.randbytes(r.randint(1, 5))
        elif how == 3 and len(b) >= 8:
            # A payload length that matches what follows, so that the
            # payload's own fields get checked.
            b[4:8] = (len(b) - 8).to_bytes(4, "big")
        else:
            i = r.randint(8, max(8, len(b)))
            b[i:i] = r.randbytes(r.randint(1, 4))
    return bytes(b)


def python_view(data: bytes, kind: int):  # type: ignore[no-untyped-def]
    try:
        decoded = frame.decode_frame(data, kind)
    except ProtocolError as e:
        return ("err", e.error_code)
    enc = frame.encode_request if kind == frame.KIND_REQUEST else frame.encode_response
    return ("ok", enc(decoded))


def test_python_and_rust_agree_on_random_frames():
    r = random.Random(14)
    cases = []
    for i in range(4000):
        kind = frame.KIND_REQUEST if i % 2 == 0 else frame.KIND_RESPONSE
        data = (frame.encode_request(rand_request(r)) if kind == frame.KIND_REQUEST
                else frame.encode_response(rand_response(r)))
        if i % 4 >= 2:
            data = mangle(r, data)
        cases.append((kind, data))
    stdin = "".join(f"{'req' if k == frame.KIND_REQUEST else 'resp'} {d.hex()}\n"
                    for k, d in cases)
    out = subprocess.run([str(bin_path("examples/frame_check"))], input=stdin.encode(),
                         capture_output=True, timeout=PATIENCE, check=True).stdout.decode()
    lines = out.splitlines()
    assert len(lines) == len(cases)
    valid = rejected = 0
    for (kind, data), line in zip(cases, lines):
        verdict, _, rest = line.partition(" ")
        rust = ("ok", bytes.fromhex(rest)) if verdict == "ok" else ("err", int(rest))
        assert python_view(data, kind) == rust, (kind, data.hex(), line)
        if verdict == "ok":
            valid += 1
            # What Rust encoded decodes in Python to what Python encoded.
            assert frame.decode_frame(rust[1], kind) == frame.decode_frame(data, kind)
            assert rust[1] == data, "one encoding per frame"
        else:
            rejected += 1
    assert valid > 1500 and rejected > 500, (valid, rejected)
