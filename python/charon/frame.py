"""Frames: the 8-byte header, request and response payloads, and the
limits every announced length is checked against (PROTOCOL.md sections 2-6).

Decoders take untrusted bytes and raise only ProtocolError; encoders check
a frame against the limits before producing any of it and raise
InvalidRequest.
"""

import functools
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import InvalidKey, InvalidRequest, ProtocolError
from .key import MAX_KEY_LEN, check_key

# Keys repeat: remember the valid ones (a refused key raises every time).
_check_key_cached = functools.lru_cache(maxsize=1024)(check_key)

MAGIC = b"CH"
VERSION = 1
KIND_REQUEST = 1
KIND_RESPONSE = 2
HEADER_LEN = 8

NO_RETRY = 0x01
NO_WAIT = 0x02
KEEP_AFFINITY = 0x04
NEED_AFFINITY = 0x08
_ATTRIBUTE_BITS = 0x0F

OK = 0
FAULT = 1
UNAVAILABLE = 2
ERROR = 3

# Framework error codes (section 4.2).
MALFORMED_REQUEST = 1
REQUEST_TOO_LARGE = 2
NO_ANSWER = 3
NOT_PERMITTED = 4
UNSUPPORTED_VERSION = 5
INTERNAL = 6
RESPONSE_TOO_LARGE = 7
WRONG_SERVICE = 8
READ_TIMEOUT = 9

# What decoders read: the bytes of a frame, or a view of them.
Buffer = Union[bytes, bytearray, memoryview]

MAX_CLIENT_NAME = 256
MAX_TEXT = 65_536

_HEADER = struct.Struct(">2sBBI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_STATUS_U32 = struct.Struct(">BI")
_ERROR_HEAD = struct.Struct(">BH")
_OK_HEAD = struct.Struct(">2sBBIBI")
_U16_AT = _U16.unpack_from
_U32_AT = _U32.unpack_from


@dataclass(frozen=True)
class Limits:
    """The limits of section 5; both ends should use the same."""

    max_request_body: int = 67_108_864
    max_response_body: int = 67_108_864
    max_context_entries: int = 64
    max_context_name: int = 128
    max_context_value: int = 65_536

    def max_request_payload(self) -> int:
        return (
            1 + 1 + (2 + MAX_KEY_LEN) + (2 + MAX_CLIENT_NAME) + 2
            + self.max_context_entries * (2 + self.max_context_name + 4 + self.max_context_value)
            + 4 + self.max_request_body
        )

    def max_response_payload(self) -> int:
        return 1 + 4 + max(self.max_response_body, 4 + MAX_TEXT)

    def max_payload(self, kind: int) -> int:
        if kind == KIND_REQUEST:
            return self.max_request_payload()
        return self.max_response_payload()

    def __post_init__(self) -> None:
        # Computed once: the payload limits are checked on every frame.
        req, resp = self.max_request_payload(), self.max_response_payload()
        object.__setattr__(self, "max_request_payload", lambda: req)
        object.__setattr__(self, "max_response_payload", lambda: resp)


DEFAULT_LIMITS = Limits()


@dataclass
class Request:
    """A decoded (or to be encoded) request frame."""

    key: str
    body: bytes = b""
    client: str = ""
    context: List[Tuple[str, bytes]] = field(default_factory=list)
    attempt: int = 1
    attributes: int = 0

    def context_value(self, name: str) -> Optional[bytes]:
        """The first context value named ``name``, or None."""
        for n, v in self.context:
            if n == name:
                return v
        return None


@dataclass
class Response:
    """A decoded (or to be encoded) response frame: ``status`` says which
    of ``body`` (OK), ``code``/``text`` (FAULT, ERROR) or
    ``retry_after``/``text`` (UNAVAILABLE) are meaningful."""

    status: int
    body: bytes = b""
    code: int = 0
    text: str = ""
    retry_after: int = 0


def header(kind: int, payload_len: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, kind, payload_len)


def check_header(head: bytes, expected_kind: int, limits: Limits = DEFAULT_LIMITS) -> int:
    """Checks an 8-byte header in the order of section 2 and returns the
    payload length."""
    magic, version, kind, length = _HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError(f"not a charon frame: expected magic \"CH\", got {magic!r}")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported (this side speaks {VERSION})",
            UNSUPPORTED_VERSION,
        )
    if kind not in (KIND_REQUEST, KIND_RESPONSE):
        raise ProtocolError(f"frame kind {kind} is neither request (1) nor response (2)")
    if kind != expected_kind:
        want = "request" if expected_kind == KIND_REQUEST else "response"
        raise ProtocolError(f"wrong frame kind {kind}: expected a {want}")
    limit = limits.max_payload(kind)
    if length > limit:
        raise ProtocolError(
            f"payload of {length} bytes exceeds the limit of {limit} bytes",
            REQUEST_TOO_LARGE,
        )
    return int(length)


# ------------------------------------------------------------------ encoding

def _str16(s: str, what: str) -> bytes:
    b = s.encode()
    if len(b) > 0xFFFF:
        raise InvalidRequest(f"{what} of {len(b)} bytes does not fit a str16")
    return _U16.pack(len(b)) + b


def encode_request_fields(key: str, client: str, context: Sequence[Tuple[str, bytes]],
                          limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The key, client name and context fields of a request, after checking
    each against its rule and limit."""
    try:
        _check_key_cached(key)
    except InvalidKey as e:
        raise InvalidRequest(str(e)) from None
    cb = client.encode()
    if len(cb) > MAX_CLIENT_NAME:
        raise InvalidRequest(
            f"client name of {len(cb)} bytes is over the limit of {MAX_CLIENT_NAME}"
        )
    if len(context) > limits.max_context_entries:
        raise InvalidRequest(
            f"{len(context)} context entries are over the limit of "
            f"{limits.max_context_entries}"
        )
    kb = key.encode()
    parts = [_U16.pack(len(kb)), kb, _U16.pack(len(cb)), cb, _U16.pack(len(context))]
    for name, value in context:
        nb = name.encode()
        if not nb or len(nb) > limits.max_context_name:
            raise InvalidRequest(
                f"context name {name!r} must be 1 to {limits.max_context_name} bytes"
            )
        if len(value) > limits.max_context_value:
            raise InvalidRequest(
                f"context value {name!r} of {len(value)} bytes is over the limit of "
                f"{limits.max_context_value}"
            )
        parts += (_U16.pack(len(nb)), nb, _U32.pack(len(value)), bytes(value))
    return b"".join(parts)


def request_frame(fields: bytes, attempt: int, attributes: int, body: bytes) -> bytes:
    """A whole request frame from fields made by encode_request_fields (the
    body's size already checked)."""
    return b"".join((
        _HEADER.pack(MAGIC, VERSION, KIND_REQUEST, 6 + len(fields) + len(body)),
        bytes((attempt, attributes)), fields, _U32.pack(len(body)), body,
    ))


def encode_request_head(req: Request, limits: Limits = DEFAULT_LIMITS,
                        body_len: Optional[int] = None) -> bytes:
    """Everything of a request frame before the body's bytes (the header,
    the fields and the body's length), after checking every limit.
    ``body_len`` stands for ``len(req.body)`` when the body is sent apart."""
    if req.attempt not in (1, 2):
        raise InvalidRequest(f"attempt {req.attempt} is not 1 or 2")
    if req.attributes & ~_ATTRIBUTE_BITS or req.attributes < 0:
        raise InvalidRequest(f"attributes {req.attributes:#x} has undefined bits")
    if body_len is None:
        body_len = len(req.body)
    if body_len > limits.max_request_body:
        raise InvalidRequest(
            f"request body of {body_len} bytes is over the limit of {limits.max_request_body}"
        )
    fields = encode_request_fields(req.key, req.client, req.context, limits)
    return b"".join((
        _HEADER.pack(MAGIC, VERSION, KIND_REQUEST, 6 + len(fields) + body_len),
        bytes((req.attempt, req.attributes)), fields, _U32.pack(body_len),
    ))


def encode_request(req: Request, limits: Limits = DEFAULT_LIMITS) -> bytes:
    return encode_request_head(req, limits) + bytes(req.body)


def encode_ok_head(body_len: int, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The header, status and body length of an OK response."""
    if body_len > limits.max_response_body:
        raise InvalidRequest(
            f"response body of {body_len} bytes is over the limit of {limits.max_response_body}"
        )
    return _OK_HEAD.pack(MAGIC, VERSION, KIND_RESPONSE, 5 + body_len, OK, body_len)


def _text32(text: str, what: str) -> bytes:
    b = text.encode()
    if len(b) > MAX_TEXT:
        raise InvalidRequest(f"{what} of {len(b)} bytes is over the limit of {MAX_TEXT}")
    return _U32.pack(len(b)) + b


def encode_response(resp: Response, limits: Limits = DEFAULT_LIMITS) -> bytes:
    if resp.status == OK:
        return encode_ok_head(len(resp.body), limits) + bytes(resp.body)
    if resp.status == FAULT:
        if not 0 <= resp.code <= 0xFFFFFFFF:
            raise InvalidRequest(f"fault code {resp.code} does not fit a u32")
        payload = _STATUS_U32.pack(FAULT, resp.code) + _text32(resp.text, "fault text")
    elif resp.status == UNAVAILABLE:
        if not 0 <= resp.retry_after <= 0xFFFFFFFF:
            raise InvalidRequest(f"retry_after {resp.retry_after} does not fit a u32")
        payload = _STATUS_U32.pack(UNAVAILABLE, resp.retry_after) + _text32(resp.text, "reason")
    elif resp.status == ERROR:
        if not 0 <= resp.code <= 0xFFFF:
            raise InvalidRequest(f"error code {resp.code} does not fit a u16")
        payload = _ERROR_HEAD.pack(ERROR, resp.code) + _text32(resp.text, "error text")
    else:
        raise InvalidRequest(f"status {resp.status} is not 0-3")
    return header(KIND_RESPONSE, len(payload)) + payload


# ------------------------------------------------------------------ decoding

class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: Buffer) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise ProtocolError(f"the payload ends inside the {what}")
        s = self.buf[self.pos:end]
        self.pos = end
        return bytes(s)

    def u8(self, what: str) -> int:
        if self.pos >= len(self.buf):
            raise ProtocolError(f"the payload ends inside the {what}")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u16(self, what: str) -> int:
        return int(_U16.unpack(self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])

    def utf8(self, b: bytes, what: str) -> str:
        try:
            return b.decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"the {what} is not UTF-8") from None

    def str16(self, what: str) -> str:
        return self.utf8(self.take(self.u16(what), what), what)

    def bytes32(self, what: str) -> bytes:
        return self.take(self.u32(what), what)

    def text32(self, what: str) -> str:
        b = self.bytes32(what)
        _check_len(what, len(b), MAX_TEXT)
        return self.utf8(b, what)

    def finish(self) -> None:
        left = len(self.buf) - self.pos
        if left:
            raise ProtocolError(f"{left} bytes after the last field")


def _check_len(what: str, n: int, limit: int) -> None:
    if n > limit:
        raise ProtocolError(
            f"the {what} of {n} is over the limit of {limit}", REQUEST_TOO_LARGE
        )


def _trunc(what: str) -> ProtocolError:
    return ProtocolError(f"the payload ends inside the {what}")


def _str16_at(buf: Buffer, pos: int, what: str) -> Tuple[str, int]:
    if pos + 2 > len(buf):
        raise _trunc(what)
    end = pos + 2 + _U16_AT(buf, pos)[0]
    if end > len(buf):
        raise _trunc(what)
    try:
        return str(buf[pos + 2:end], "utf-8"), end
    except UnicodeDecodeError:
        raise ProtocolError(f"the {what} is not UTF-8") from None


def _bytes32_at(buf: Buffer, pos: int, what: str) -> Tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise _trunc(what)
    end = pos + 4 + _U32_AT(buf, pos)[0]
    if end > len(buf):
        raise _trunc(what)
    return bytes(buf[pos + 4:end]), end


# Requests from one client to one service start with the same bytes (the
# attempt, the attributes, the key, the client name and a context count of
# 0): such a prefix, once validated, is remembered with what it decodes to,
# (attempt, attributes, key, client, no context).
_PREFIXES: Dict[bytes, Tuple[int, int, str, str, Tuple[()]]] = {}
_MAX_PREFIXES = 256
# The last prefix found there and what it decodes to: a request like the
# last one is checked with one comparison, before any slice or hash. (A
# prefix starts with the attempt, 1 or 2, so the empty entry never matches.)
_LAST: List[Any] = [b"\xff", None]
# The last request in full but for its body: its length, the bytes from the
# payload's start through the body's length field, where the body starts,
# the limits it was checked against, and what it decodes to. A request
# that repeats all of it (a client calling one service with bodies of one
# size) is checked with one length comparison and one byte comparison.
_SAME: Tuple[int, bytes, int, Optional[Limits], Tuple[Any, ...]] = (-1, b"", 0, None, ())

# A request's fields as decode_request_frame gives them: (attempt,
# attributes, key, client, context, body).
RequestFields = Tuple[int, int, str, str, Sequence[Tuple[str, bytes]], bytes]


def decode_request(payload: Buffer, limits: Limits = DEFAULT_LIMITS) -> Request:
    """Decodes a request payload (the bytes after the header), checking
    the fields in order, each against its limit."""
    attempt, attributes, key, client, context, body = decode_request_frame(
        bytes(HEADER_LEN) + bytes(payload), limits)
    return Request(key, body, client, list(context), attempt, attributes)


def decode_request_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> RequestFields:
    """The fields of a whole request frame (header and payload) whose
    header the caller has checked; as decode_request, without making a
    Request: a request like an earlier one costs a dictionary lookup and
    two slices."""
    global _SAME
    n = len(data)
    same = _SAME
    if n == same[0] and data.startswith(same[1], HEADER_LEN) and limits is same[3]:
        return same[4] + (data[same[2]:],)
    prefix, known = _LAST
    if data.startswith(prefix, HEADER_LEN):
        end = HEADER_LEN + len(prefix)
        if end + 4 <= n:
            size = _U32_AT(data, end)[0]
            if end + 4 + size == n and size <= limits.max_request_body:
                _SAME = (n, data[HEADER_LEN:end + 4], end + 4, limits, known)
                return known + (data[end + 4:],)  # type: ignore[no-any-return]
    if n >= 16:
        end = 12 + ((data[10] << 8) | data[11])
        if end + 2 <= n:
            end += 4 + ((data[end] << 8) | data[end + 1])
            if end + 4 <= n:
                prefix = data[8:end]
                known = _PREFIXES.get(prefix)
                if known is not None:
                    size = _U32_AT(data, end)[0]
                    if end + 4 + size == n and size <= limits.max_request_body:
                        _LAST[0], _LAST[1] = prefix, known
                        _SAME = (n, data[HEADER_LEN:end + 4], end + 4, limits, known)
                        return known + (data[end + 4:],)
    r = _decode_and_remember(memoryview(data)[HEADER_LEN:], limits)
    return r.attempt, r.attributes, r.key, r.client, tuple(r.context), r.body


def _decode_and_remember(payload: Buffer, limits: Limits) -> Request:
    req, end = _decode_request(payload, limits)
    if end:
        if len(_PREFIXES) >= _MAX_PREFIXES:
            _PREFIXES.clear()
        _PREFIXES[bytes(payload[:end])] = (req.attempt, req.attributes, req.key, req.client, ())
    return req


def _decode_request(payload: Buffer, limits: Limits) -> Tuple[Request, int]:
    """decode_request's field by field path; also where the prefix
    (attempt to context count) ends, 0 when it holds context entries."""
    n = len(payload)
    if n < 1:
        raise _trunc("attempt")
    attempt = payload[0]
    if attempt != 1 and attempt != 2:
        raise ProtocolError(f"attempt {attempt} is not 1 or 2")
    if n < 2:
        raise _trunc("attributes")
    attributes = payload[1]
    if attributes & ~_ATTRIBUTE_BITS:
        raise ProtocolError(f"attributes {attributes:#04x} has undefined bits set")
    key, pos = _str16_at(payload, 2, "key")
    try:
        _check_key_cached(key)
    except InvalidKey as e:
        raise ProtocolError(str(e)) from None
    client, pos = _str16_at(payload, pos, "client name")
    if len(client) > MAX_CLIENT_NAME // 4:
        _check_len("client name", len(client.encode()), MAX_CLIENT_NAME)
    if pos + 2 > n:
        raise _trunc("context count")
    count = _U16_AT(payload, pos)[0]
    pos += 2
    _check_len("context count", count, limits.max_context_entries)
    context = []
    for _ in range(count):
        name, pos = _str16_at(payload, pos, "context name")
        if not name:
            raise ProtocolError("a context entry has an empty name")
        _check_len("context name", len(name.encode()), limits.max_context_name)
        value, pos = _bytes32_at(payload, pos, "context value")
        _check_len("context value", len(value), limits.max_context_value)
        context.append((name, value))
    prefix = pos if not count else 0
    body, pos = _bytes32_at(payload, pos, "body")
    _check_len("body", len(body), limits.max_request_body)
    if pos != n:
        raise ProtocolError(f"{n - pos} bytes after the last field")
    return Request(key, body, client, context, attempt, attributes), prefix


def decode_response(payload: Buffer, limits: Limits = DEFAULT_LIMITS) -> Response:
    """Decodes a response payload (the bytes after the header)."""
    body = _ok_body(payload, 0, limits)
    if body is not None:
        return Response(OK, body=bytes(body))
    r = _Reader(payload)
    status = r.u8("status")
    if status == OK:
        body = r.bytes32("body")
        _check_len("body", len(body), limits.max_response_body)
        resp = Response(OK, body=body)
    elif status == FAULT:
        code = r.u32("fault code")
        resp = Response(FAULT, code=code, text=r.text32("fault text"))
    elif status == UNAVAILABLE:
        after = r.u32("retry_after")
        resp = Response(UNAVAILABLE, retry_after=after, text=r.text32("reason"))
    elif status == ERROR:
        code = r.u16("error code")
        resp = Response(ERROR, code=code, text=r.text32("error text"))
    else:
        raise ProtocolError(f"response status {status} is not 0-3")
    r.finish()
    return resp


def ok_body(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Optional[bytes]:
    """The body of a whole response frame (header and payload) whose header
    the caller has checked, if it is a valid OK response; else None (and
    decode_response says what it is)."""
    body = _ok_body(data, HEADER_LEN, limits)
    return None if body is None else bytes(body)


def _ok_body(buf: Buffer, at: int, limits: Limits) -> Optional[Buffer]:
    """The body of the OK response payload at ``buf[at:]``, if it is one
    and its body fills the rest exactly."""
    if len(buf) >= at + 5 and buf[at] == OK:
        n = _U32_AT(buf, at + 1)[0]
        if at + 5 + n == len(buf) and n <= limits.max_response_body:
            return buf[at + 5:]
    return None


def decode_frame(data: bytes, kind: int, limits: Limits = DEFAULT_LIMITS):  # type: ignore[no-untyped-def]
    """Decodes one whole frame of ``kind``; the bytes must hold exactly it."""
    if len(data) < HEADER_LEN:
        raise ProtocolError(f"a frame of {len(data)} bytes is shorter than its header")
    length = check_header(data[:HEADER_LEN], kind, limits)
    if len(data) != HEADER_LEN + length:
        raise ProtocolError(
            f"the header announces {length} payload bytes, {len(data) - HEADER_LEN} follow"
        )
    if kind == KIND_REQUEST:
        return decode_request(data[HEADER_LEN:], limits)
    return decode_response(data[HEADER_LEN:], limits)
