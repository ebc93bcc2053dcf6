"""The client: one blocking call, or a batch of many requests driven in
parallel from one thread by a selector (PROTOCOL.md section 8.1, 8.3, 8.4).

A request costs one connect, one write, one read, one close. A silent
close (end of stream before any byte of a response) is retried once on a
new connection as attempt 2, unless the request says no-retry or
need-affinity. Everything runs under one timeout clock per call or batch.
"""

import _socket
import errno
import os
import select
import selectors
import socket
import struct
import sys
import threading
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import frame
from .errors import (
    CharonError,
    Disconnected,
    FrameworkError,
    InvalidRequest,
    NoAffinity,
    NotFound,
    Overloaded,
    ProtocolError,
    ServiceFault,
    Timeout,
    Unavailable,
)
from .key import check_key, default_run_dir, socket_path, wildcard

__all__ = ["Client", "Batch", "call", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 4.0
RESERVED_PREFIX = "charon."
_READ_CHUNK = 65_536
_SILENT_ERRNOS = (errno.ECONNRESET,)
_WRITE_CLOSED = (errno.EPIPE, errno.ECONNRESET)
# The longest single wait (s): poll takes at most 2**31-1 ms, and a
# timeout may be longer (even infinite); the loop checks the deadline.
_MAX_WAIT = 86_400.0

Body = Union[bytes, bytearray, memoryview, str]
Context = Union[Mapping[str, Union[bytes, str]], Sequence[Tuple[str, Union[bytes, str]]], None]


def _program_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    b = name.encode()[: frame.MAX_CLIENT_NAME]
    return b.decode(errors="ignore")


def _as_bytes(value: object, what: str) -> bytes:
    """A body or context value as bytes: bytes-like as they are, a str as
    UTF-8; TypeError for anything else (bytes(5) would be five zero bytes,
    and bytes(None) a less clear TypeError)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, bytearray, memoryview or str, "
                    f"not {type(value).__name__}")


def _context_list(context: Context) -> List[Tuple[str, bytes]]:
    if not context:
        return []
    items = context.items() if isinstance(context, Mapping) else context
    out = []
    for name, value in items:
        if name.startswith(RESERVED_PREFIX):
            raise InvalidRequest(
                f"context name {name!r} starts with the reserved prefix {RESERVED_PREFIX!r}"
            )
        out.append((name, _as_bytes(value, f"context value {name!r}")))
    return out


def _with_key(e: CharonError, key: str) -> CharonError:
    e.key = key
    return e


_HEADER_UNPACK = struct.Struct(">2sBBI").unpack_from
_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_AF_UNIX = socket.AF_UNIX
_MSG_NOSIGNAL = socket.MSG_NOSIGNAL
_POLLIN = select.POLLIN


def _connect(run_dir: str, key: str, path: Optional[str] = None) -> _socket.socket:
    """A non-blocking connection to the exact key's socket (``path``, if
    known), else its wildcard's (ENOENT and ECONNREFUSED fall through;
    EAGAIN is overloaded). The C socket type: socket.socket's
    Python-level __init__ and close would add their calls to every
    request. Out of fds (EMFILE), the socket cannot be made: a CharonError,
    as the Rust client's Io error, never a bare OSError."""
    try:
        s = _socket.socket(_AF_UNIX, _SOCK_TYPE)
    except OSError as e:
        raise CharonError(f"{key}: create a socket: {e}") from None
    stale = None
    try:
        for k in (key, None):
            if k is None:
                path = socket_path(run_dir, wildcard(key))
            elif path is None:
                path = socket_path(run_dir, key)
            try:
                err = s.connect_ex(path)
            except OSError as e:  # a path too long for sun_path
                raise InvalidRequest(f"socket path {path!r}: {e}") from None
            if err == 0:
                return s
            if err == errno.ENOENT:
                continue
            if err == errno.ECONNREFUSED:
                stale = stale or path
                continue
            if err == errno.EAGAIN:
                raise Overloaded(f"{key}: the service's listen backlog is full")
            raise CharonError(f"{key}: connect to {path}: {os.strerror(err)}")
    except BaseException:
        s.close()
        raise
    s.close()
    msg = f"no service {key} (nor its wildcard) in {run_dir}"
    if stale:
        msg += f"; {stale} exists but nobody listens on it"
    raise NotFound(msg, run_dir, stale)


def _result(resp: frame.Response) -> bytes:
    """A response's body, or the exception its status stands for."""
    if resp.status == frame.OK:
        return resp.body
    if resp.status == frame.FAULT:
        raise ServiceFault(resp.code, resp.text)
    if resp.status == frame.UNAVAILABLE:
        raise Unavailable(resp.retry_after, resp.text)
    raise FrameworkError(resp.code, resp.text)


class _Silent(Exception):
    """A close before any byte of a response: retried once if allowed."""


class _Response:
    """Accumulates one response frame from the bytes read so far."""

    __slots__ = ("buf", "need", "limits")

    def __init__(self, limits: frame.Limits) -> None:
        self.buf = bytearray()
        self.need = 0
        self.limits = limits

    def feed(self, data: bytes) -> Optional[frame.Response]:
        """Adds bytes; the decoded response once whole."""
        self.buf += data
        if not self.need and len(self.buf) >= frame.HEADER_LEN:
            n = frame.check_header(bytes(self.buf[:8]), frame.KIND_RESPONSE, self.limits)
            self.need = frame.HEADER_LEN + n
        if self.need and len(self.buf) >= self.need:
            if len(self.buf) > self.need:
                raise ProtocolError(f"{len(self.buf) - self.need} bytes after the response frame")
            return frame.decode_response(bytes(memoryview(self.buf)[8:]), self.limits)
        return None

    def want(self) -> int:
        return max(self.need - len(self.buf), frame.HEADER_LEN - len(self.buf), 1)

    def eof(self) -> None:
        if not self.buf:
            raise _Silent()
        raise Disconnected(
            f"the connection closed after {len(self.buf)} bytes of a response", len(self.buf)
        )


def _may_retry(attrs: int, attempt: int) -> bool:
    return attempt == 1 and not attrs & (frame.NO_RETRY | frame.NEED_AFFINITY)


class Client:
    """Options (run dir, timeout, limits, client name) and the connections
    kept by keep-affinity requests.

    Threads may share a client for calls without affinity (each call has
    its own connection and poll). A keep-affinity conversation is the
    client's, per key: two threads conversing with one key on one client
    would take each other's connection, so give each such thread its own
    client. A batch belongs to the thread that drives it."""

    def __init__(
        self,
        *,
        run_dir: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: Optional[str] = None,
        limits: frame.Limits = frame.DEFAULT_LIMITS,
    ) -> None:
        _check_timeout(timeout)
        self.run_dir = run_dir if run_dir is not None else default_run_dir()
        self.timeout = timeout
        self.name = _program_name() if name is None else name
        if len(self.name.encode()) > frame.MAX_CLIENT_NAME:
            raise InvalidRequest(f"client name is over {frame.MAX_CLIENT_NAME} bytes")
        self.limits = limits
        self._kept: Dict[str, _socket.socket] = {}
        self._fields_cache: Dict[str, bytes] = {}
        self._paths: Dict[str, str] = {}

    def close(self) -> None:
        """Closes every kept connection."""
        for s in self._kept.values():
            s.close()
        self._kept.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has_affinity(self, key: str) -> bool:
        return key in self._kept

    def drop_affinity(self, key: str) -> None:
        s = self._kept.pop(key, None)
        if s is not None:
            s.close()

    def batch(self, timeout: Optional[float] = None) -> "Batch":
        return Batch(self, timeout)

    # -- shared by call and batch

    def _fields(self, key: str, context: List[Tuple[str, bytes]]) -> bytes:
        """The key, client and context fields, cached for requests without
        context (the common case)."""
        if context:
            return frame.encode_request_fields(key, self.name, context, self.limits)
        f = self._fields_cache.get(key)
        if f is None:
            if len(self._fields_cache) >= 1024:
                self._fields_cache.clear()
                self._paths.clear()
            f = frame.encode_request_fields(key, self.name, (), self.limits)
            self._fields_cache[key] = f
            self._paths[key] = socket_path(self.run_dir, key)
        return f

    def _encode(self, key: str, body: bytes, context: List[Tuple[str, bytes]],
                attrs: int, attempt: int) -> bytes:
        """The whole request frame."""
        if len(body) > self.limits.max_request_body:
            raise InvalidRequest(
                f"request body of {len(body)} bytes is over the limit of "
                f"{self.limits.max_request_body}"
            )
        fields = None if context else self._fields_cache.get(key)
        if fields is None:
            fields = self._fields(key, context)
        return frame.request_frame(fields, attempt, attrs, body)

    def _open(self, key: str, attrs: int, attempt: int) -> _socket.socket:
        if attempt == 1 and attrs & (frame.NEED_AFFINITY | frame.KEEP_AFFINITY):
            s = self._kept.pop(key, None)
            if s is not None:
                return s
        if attrs & frame.NEED_AFFINITY:
            raise NoAffinity(f"{key}: no connection kept by an earlier keep-affinity request")
        return self._connect(key, attempt)

    def _connect(self, key: str, attempt: int) -> _socket.socket:
        try:
            return _connect(self.run_dir, key, self._paths.get(key))
        except NotFound:
            if attempt == 1:
                raise
        # A retry that finds nobody listening (the service's instances and
        # its manager gone): the request was written to a service that
        # existed and its connection closed before any response. That, not
        # "no such service", is what happened to it.
        raise Disconnected(f"{key}: the connection closed before any byte of a response")

    def _keep(self, key: str, attrs: int, resp: frame.Response, s: _socket.socket) -> bool:
        if attrs & frame.KEEP_AFFINITY and resp.status in (frame.OK, frame.FAULT):
            old = self._kept.pop(key, None)
            if old is not None:
                old.close()
            self._kept[key] = s
            return True
        return False

    # -- one blocking call

    def call(
        self,
        key: str,
        body: Body,
        *,
        context: Context = None,
        timeout: Optional[float] = None,
        retry: bool = True,
        no_wait: bool = False,
        keep_affinity: bool = False,
        need_affinity: bool = False,
    ) -> bytes:
        """Sends ``body`` to service ``key`` and returns the response body.

        Raises ServiceFault, Unavailable, Overloaded, NotFound, Timeout,
        Disconnected, ProtocolError, FrameworkError, NoAffinity,
        InvalidKey or InvalidRequest. A no-wait request returns b"" once
        sent.
        """
        if timeout is None:
            timeout = self.timeout
        else:
            _check_timeout(timeout)
        deadline = time.monotonic() + timeout
        attrs = (0 if retry and not (no_wait or keep_affinity or need_affinity)
                 else _attributes(retry, no_wait, keep_affinity, need_affinity))
        ctx = _context_list(context) if context else []
        if not isinstance(body, bytes):
            body = _as_bytes(body, "a request body")
        attempt = 1
        while True:
            try:
                data = self._encode(key, body, ctx, attrs, attempt)
                if attrs & (frame.NEED_AFFINITY | frame.KEEP_AFFINITY):
                    s = self._open(key, attrs, attempt)
                else:
                    s = self._connect(key, attempt)
            except InvalidRequest as e:
                if key not in self._fields_cache:
                    check_key(key)  # an InvalidKey says which rule
                raise _with_key(e, key)
            except CharonError as e:
                raise _with_key(e, key)
            try:
                return self._exchange(key, s, data, attrs, deadline)
            except _Silent:
                if not _may_retry(attrs, attempt):
                    raise _with_key(Disconnected(
                        f"{key}: the connection closed before any byte of a response"), key)
                attempt = 2
            except CharonError as e:
                raise _with_key(e, key)

    def _exchange(self, key: str, s: _socket.socket, data: bytes, attrs: int,
                  deadline: float) -> bytes:
        """One request on the non-blocking socket ``s``: write it whole,
        then (unless no-wait) read one response, under ``deadline``."""
        keep = False
        try:
            _send(s, data, deadline)
            if attrs & frame.NO_WAIT:
                return b""
            # A poll of its own (a few tens of ns): a poll object shared
            # by threads raises RuntimeError on concurrent use.
            raw = _receive(s, deadline, self.limits, select.poll())
            # The common case, an OK answer, needs no Response.
            body = frame.ok_body(raw, self.limits)
            if body is not None and not attrs & frame.KEEP_AFFINITY:
                return body
            resp = frame.decode_response(memoryview(raw)[8:], self.limits)
            keep = self._keep(key, attrs, resp, s)
            return _result(resp)
        finally:
            if not keep:
                s.close()


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise InvalidRequest("timeout must be greater than zero")


def _poll_ms(left: float) -> int:
    """A poll timeout in ms for ``left`` seconds (at most a day)."""
    return int(min(left, _MAX_WAIT) * 1000) + 1


def _wait(p: "select.poll", deadline: float, what: str) -> None:
    """Polls until ready; Timeout once the deadline passes."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout(f"{what} in time")
        if p.poll(_poll_ms(left)):
            return


def _send(s: _socket.socket, data: bytes, deadline: float) -> None:
    """Writes the whole frame. A peer that closed (EPIPE, ECONNRESET) may
    have answered first (a fast fail, PROTOCOL.md 8.2): the caller reads."""
    try:
        n = s.send(data, _MSG_NOSIGNAL)
    except BlockingIOError:
        n = 0
    except OSError as e:
        if e.errno in _WRITE_CLOSED:
            return
        raise CharonError(f"write the request: {e}") from None
    if n == len(data):
        return
    view = memoryview(data)[n:]
    p = select.poll()
    p.register(s, select.POLLOUT)
    while view:
        _wait(p, deadline, "the request could not be written")
        try:
            view = view[s.send(view, socket.MSG_NOSIGNAL):]
        except BlockingIOError:
            continue
        except OSError as e:
            if e.errno in _WRITE_CLOSED:
                return
            raise CharonError(f"write the request: {e}") from None


def _receive(s: _socket.socket, deadline: float, limits: frame.Limits,
             p: "select.poll") -> bytes:
    """Reads one response frame, its header checked; _Silent on a close
    before any byte. ``p`` is a poll object to wait with (``s`` is
    registered in it for the call)."""
    fd = s.fileno()
    p.register(fd, _POLLIN)
    data: Union[bytes, bytearray] = b""
    need = 0
    monotonic = time.monotonic
    try:
        while True:
            left = deadline - monotonic()
            if left <= 0:
                raise Timeout("no response in time")
            if not p.poll(_poll_ms(left)):
                continue
            try:
                chunk = s.recv(_READ_CHUNK if not need else max(need - len(data), 1))
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno not in _SILENT_ERRNOS:
                    raise CharonError(f"read the response: {e}") from None
                chunk = b""
            if not chunk:
                if not data:
                    raise _Silent()
                raise Disconnected(
                    f"the connection closed after {len(data)} bytes of a response", len(data))
            if not data:
                data = chunk
            else:
                if isinstance(data, bytes):
                    data = bytearray(data)
                data += chunk
            if not need and len(data) >= 8:
                magic, version, kind, n = _HEADER_UNPACK(data)
                if (magic != b"CH" or version != 1 or kind != 2
                        or n > limits.max_response_payload()):
                    frame.check_header(bytes(data[:8]), frame.KIND_RESPONSE, limits)
                need = 8 + n
            if need and len(data) >= need:
                if len(data) > need:
                    raise ProtocolError(f"{len(data) - need} bytes after the response frame")
                return bytes(data)
    finally:
        p.unregister(fd)


def _attributes(retry: bool, no_wait: bool, keep: bool, need: bool) -> int:
    a = 0
    if not retry:
        a |= frame.NO_RETRY
    if no_wait:
        a |= frame.NO_WAIT
    if keep:
        a |= frame.KEEP_AFFINITY
    if need:
        a |= frame.NEED_AFFINITY
    return a


_local = threading.local()


def _forget_clients_in_child() -> None:
    """After fork(), the child must not share the parent's per-thread
    clients: a connection kept for affinity would then carry both
    processes' requests in one conversation. The child starts afresh."""
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_clients_in_child)


def call(
    key: str,
    body: Body,
    *,
    context: Context = None,
    timeout: float = DEFAULT_TIMEOUT,
    retry: bool = True,
    run_dir: Optional[str] = None,
    no_wait: bool = False,
    keep_affinity: bool = False,
    need_affinity: bool = False,
) -> bytes:
    """Sends ``body`` to the service ``key`` and returns its response body.

    Uses one client per thread and run dir, so keep-affinity connections
    outlive the call. See Client.call for the exceptions.
    """
    clients = getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    rd = run_dir if run_dir is not None else default_run_dir()
    client = clients.get(rd)
    if client is None:
        client = clients[rd] = Client(run_dir=rd)
    return client.call(key, body, context=context, timeout=timeout, retry=retry,
                       no_wait=no_wait, keep_affinity=keep_affinity,
                       need_affinity=need_affinity)


# ---------------------------------------------------------------- the batch

class _Entry:
    __slots__ = ("idx", "key", "body", "context", "attrs", "attempt", "sock", "out", "sent",
                 "acc", "result", "done")

    def __init__(self, idx: int, key: str, body: bytes, context: List[Tuple[str, bytes]],
                 attrs: int):
        self.idx = idx
        self.key = key
        self.body = body
        self.context = context
        self.attrs = attrs
        self.attempt = 1
        self.sock: Optional[_socket.socket] = None
        self.out = memoryview(b"")
        self.sent = False
        self.acc: Optional[_Response] = None
        self.result: Union[bytes, CharonError, None] = None
        self.done = False


class Batch:
    """Many requests, to one or several services, progressing in parallel
    on non-blocking sockets under one timeout clock.

    ``add`` returns an id; ``wait_all``, ``wait_any``, ``wait_one`` and
    ``wait_sent`` drive the requests; ``result(id)`` returns the body or
    raises the request's exception.
    """

    def __init__(self, client: Client, timeout: Optional[float] = None) -> None:
        self._client = client
        self._timeout = client.timeout if timeout is None else timeout
        _check_timeout(self._timeout)
        self._deadline: Optional[float] = None
        self._entries: List[_Entry] = []
        try:
            self._sel = selectors.DefaultSelector()
        except OSError as e:
            raise CharonError(f"create a poll: {e}") from None
        self._completed: List[int] = []
        self._returned = set()  # type: ignore[var-annotated]
        self._live = 0

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Abandons unfinished requests and closes their connections."""
        for e in self._entries:
            if not e.done:
                self._finish(e, Timeout(f"{e.key}: the batch was closed"))
        self._sel.close()

    def set_timeout(self, timeout: float) -> None:
        """Sets the timeout and restarts the clock from now."""
        _check_timeout(timeout)
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending(self) -> int:
        return self._live

    def add(
        self,
        key: str,
        body: Body,
        *,
        context: Context = None,
        retry: bool = True,
        no_wait: bool = False,
        keep_affinity: bool = False,
        need_affinity: bool = False,
    ) -> int:
        """Adds a request and starts it (connects and writes what the
        socket takes). A failure to reach the service becomes its result;
        a request that breaks a rule raises here and is not added."""
        check_key(key)
        ctx = _context_list(context)
        attrs = _attributes(retry, no_wait, keep_affinity, need_affinity)
        body = _as_bytes(body, "a request body")
        self._client._encode(key, body, ctx, attrs, 1)
        if self._deadline is None:
            self._deadline = time.monotonic() + self._timeout
        e = _Entry(len(self._entries), key, body, ctx, attrs)
        self._entries.append(e)
        self._live += 1
        self._start(len(self._entries) - 1)
        return len(self._entries) - 1

    def wait_all(self) -> None:
        self._drive(lambda: self._live == 0)

    def wait_any(self) -> Optional[int]:
        """The next finished request's id (each returned once), or None
        when none is left."""
        while True:
            self._drive(lambda: bool(self._completed) or self._live == 0)
            if not self._completed:
                return None
            i = self._completed.pop(0)
            if i not in self._returned:
                self._returned.add(i)
                return i

    def wait_one(self, rid: int) -> bytes:
        """Waits for request ``rid`` and returns its body (or raises)."""
        e = self._entries[rid]
        self._drive(lambda: e.done)
        return self.result(rid)

    def wait_sent(self) -> None:
        """Waits until every request is fully written (or finished)."""
        self._drive(lambda: all(e.done or e.sent for e in self._entries))

    def done(self, rid: int) -> bool:
        return self._entries[rid].done

    def result(self, rid: int) -> bytes:
        """The body of finished request ``rid``, or its exception raised."""
        e = self._entries[rid]
        if not e.done:
            raise InvalidRequest(f"request {rid} has not finished")
        if isinstance(e.result, CharonError):
            raise e.result
        assert e.result is not None
        return e.result

    # -- mechanism

    def _start(self, i: int) -> None:
        e = self._entries[i]
        try:
            data = self._client._encode(e.key, e.body, e.context, e.attrs, e.attempt)
            s = self._client._open(e.key, e.attrs, e.attempt)
        except CharonError as err:
            self._finish(e, _with_key(err, e.key))
            return
        s.setblocking(False)
        e.sock = s
        e.out = memoryview(data)
        e.sent = False
        e.acc = _Response(self._client.limits)
        try:
            self._sel.register(s, selectors.EVENT_WRITE, i)
        except OSError as err:  # the kernel's limit on watched fds
            self._finish(e, _with_key(CharonError(f"poll the connection: {err}"), e.key))
            return
        self._write(i)

    def _finish(self, e: _Entry, result: Union[bytes, CharonError], keep: bool = False) -> None:
        if e.sock is not None:
            try:
                self._sel.unregister(e.sock)
            except (KeyError, ValueError):
                pass
            if not keep:
                e.sock.close()
            e.sock = None
        if not e.done:
            e.done = True
            e.result = result
            self._live -= 1
            self._completed.append(e.idx)

    def _write(self, i: int) -> None:
        e = self._entries[i]
        assert e.sock is not None
        try:
            while e.out:
                n = e.sock.send(e.out, socket.MSG_NOSIGNAL)
                e.out = e.out[n:]
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno not in _WRITE_CLOSED:
                self._finish(e, _with_key(CharonError(f"write the request: {err}"), e.key))
                return
            e.out = memoryview(b"")
        e.sent = True
        if e.attrs & frame.NO_WAIT:
            self._finish(e, b"")
            return
        self._sel.modify(e.sock, selectors.EVENT_READ, i)

    def _read(self, i: int) -> None:
        e = self._entries[i]
        assert e.sock is not None and e.acc is not None
        try:
            while True:
                try:
                    chunk = e.sock.recv(_READ_CHUNK if not e.acc.need else e.acc.want())
                except BlockingIOError:
                    return
                except OSError as err:
                    if err.errno not in _SILENT_ERRNOS:
                        raise CharonError(f"read the response: {err}") from None
                    chunk = b""
                if not chunk:
                    e.acc.eof()
                resp = e.acc.feed(chunk)
                if resp is not None:
                    keep = self._client._keep(e.key, e.attrs, resp, e.sock)
                    try:
                        result: Union[bytes, CharonError] = _result(resp)
                    except CharonError as err:
                        result = _with_key(err, e.key)
                    self._finish(e, result, keep)
                    return
        except _Silent:
            if _may_retry(e.attrs, e.attempt):
                self._sel.unregister(e.sock)
                e.sock.close()
                e.sock = None
                e.attempt = 2
                self._start(i)
            else:
                self._finish(e, _with_key(Disconnected(
                    f"{e.key}: the connection closed before any byte of a response"), e.key))
        except CharonError as err:
            self._finish(e, _with_key(err, e.key))

    def _drive(self, done) -> None:  # type: ignore[no-untyped-def]
        while not done() and self._live:
            assert self._deadline is not None
            left = self._deadline - time.monotonic()
            if left <= 0:
                for e in self._entries:
                    if not e.done:
                        self._finish(e, _with_key(Timeout(
                            f"{e.key}: no response within {self._timeout} s"), e.key))
                return
            for skey, events in self._sel.select(min(left, _MAX_WAIT)):
                i = skey.data
                if self._entries[i].done:
                    continue
                if events & selectors.EVENT_WRITE:
                    self._write(i)
                elif events & selectors.EVENT_READ:
                    self._read(i)
