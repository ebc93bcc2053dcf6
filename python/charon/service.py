"""The service: ``for request in service: request.respond(...)``, in any
of the three modes of PROTOCOL.md section 10, chosen from the environment
(managed if ``CHARON_SLOT`` is set, accept mode if
``CHARON_ACCEPT_SOCKET`` is, standalone if fds 3 and 4 are open).

One request at a time: accept a connection, read one request frame within
the read timeout, hand it to the program, write its one response, close
(or keep the connection for an affinity conversation). SIGTERM and SIGINT
finish the request in hand and end the loop; SIGUSR1 (drain) also serves
the connections already queued. A request the program leaves unanswered
is answered ERROR NO_ANSWER when the loop moves on.
"""

import _socket
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
import weakref
from typing import Iterator, List, Optional, Tuple, Union

from . import frame, managed
from .errors import CharonError, InvalidRequest, ProtocolError
from .managed import Managed, Scoreboard, ScoreboardError

__all__ = ["Service", "Request", "ServiceError", "MANAGED", "ACCEPT", "STANDALONE"]

MANAGED, ACCEPT, STANDALONE = "managed", "accept", "standalone"
LISTEN_FD, SCOREBOARD_FD, REPORT_FD = 3, 4, 5
REQUEST_FD, RESPONSE_FD = 3, 4
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_AFFINITY_TIMEOUT = 60.0
DEFAULT_WRITE_TIMEOUT = 10.0
DEFAULT_DRAIN_TIMEOUT = 10.0
_MAX_ENV_MS = 86_400_000
_TIMEVAL = struct.Struct("@ll")
_PEERCRED = struct.Struct("3i")
# An OK frame's head after its first four bytes: the payload's size, the
# status byte (0) and the body's length.
_OK_START = b"CH\x01\x02"
_OK_PACK = struct.Struct(">4sIxI").pack
_HEADER_UNPACK = struct.Struct(">2sBBI").unpack_from
# A request frame's first four bytes, and its header read as those and the
# payload's size.
_REQUEST_START = b"CH\x01\x01"
_REQUEST_HEAD = struct.Struct(">4sI").unpack_from
_KEEP_AFFINITY = frame.KEEP_AFFINITY
_OUTCOME_OK = managed.OUTCOME_OK
_monotonic_ns = time.monotonic_ns
_READ_CHUNK = 65_536
_LISTEN_EVENTS = select.EPOLLIN | getattr(select, "EPOLLEXCLUSIVE", 0)
_MSG_DONTWAIT, _MSG_NOSIGNAL = socket.MSG_DONTWAIT, socket.MSG_NOSIGNAL
_AF_UNIX, _SOCK_STREAM = socket.AF_UNIX, socket.SOCK_STREAM


class ServiceError(CharonError):
    """The service cannot start: a bad environment or unusable fds."""


def _env_ms(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        ms = int(value.strip())
    except ValueError:
        ms = 0
    if not 1 <= ms <= _MAX_ENV_MS:
        raise ServiceError(
            f"{name} must be a whole number of milliseconds from 1 to {_MAX_ENV_MS}, "
            f"not {value!r}"
        )
    return ms / 1000.0


def _id_set(name: str) -> Optional[set]:  # type: ignore[type-arg]
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return {int(v) for v in value.split(",") if v.strip()}
    except ValueError:
        raise ServiceError(f"{name} must be comma-separated decimal ids, not {value!r}") from None


def _timeval(seconds: float) -> bytes:
    sec = int(seconds)
    return _TIMEVAL.pack(sec, max(int((seconds - sec) * 1e6), 1 if sec == 0 else 0))


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


# The longest path a Unix socket address holds (sun_path, 108 bytes with
# the NUL).
_MAX_SOCKET_PATH = 107


def _take_turn(path: str) -> Optional[int]:
    """An exclusive flock on ``path``'s directory (closing the fd releases
    it), or None if the directory cannot be opened, or locked within a
    second (another service holds it well under a millisecond; something
    else may hold it longer): the rename is still atomic for clients then."""
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.001)
                continue
        except OSError:
            pass
        os.close(fd)
        return None


def _above_stdio(fd: int) -> int:
    """A connection accepted onto fd 0, 1 or 2 (the program closed its own
    stdin, stdout or stderr) moved above them, the hole filled with
    /dev/null: the program's prints never reach a client, and later
    connections land above 2 again. OSError (the connection closed) if
    it cannot be moved."""
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        os.close(fd)
        raise
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        os.close(fd)
        return high
    os.dup2(null, fd)
    if null > 2:  # one at 0-2 fills another hole
        os.close(null)
    return high


class _Flags:
    """Set from signal handlers; read by the loop."""

    stop = False
    drain = False
    # The manager's pid in managed mode (0 otherwise): SIGUSR1 is also the
    # signal the manager's death sends (PR_SET_PDEATHSIG).
    manager_pid = 0


def _on_stop(signum: int, _frame: object) -> None:
    _Flags.stop = True


def _on_drain(signum: int, _frame: object) -> None:
    _Flags.drain = True
    if _Flags.manager_pid and os.getppid() != _Flags.manager_pid:
        managed.quiet_stderr()


# The service whose request in hand an uncaught exception answers, and the
# hook that was there before ours.
_answering: "Optional[weakref.ReferenceType[Service]]" = None
_previous_hook = sys.excepthook


def _excepthook(kind: type, value: BaseException, tb: object) -> None:
    """An exception that ends the program mid-request first answers that
    request ERROR NO_ANSWER, as a Rust panic unwinding through a request
    does: the client gets a typed error at once and does not retry the
    request onto another instance, which it would most likely end too.
    Then the usual traceback (its last line is what the manager shows as
    the instance's last stderr line). An exit (SystemExit) never comes here:
    it stays a silent close, which the client retries. A child the program
    forked has a copy of the connection: its exceptions answer nothing."""
    svc = _answering() if _answering is not None else None
    if svc is not None and not svc._forked():
        try:
            svc._unanswered()
        except Exception:  # the traceback below matters more
            pass
    _previous_hook(kind, value, tb)  # type: ignore[arg-type]


def _install_excepthook(svc: "Service") -> None:
    global _answering, _previous_hook
    _answering = weakref.ref(svc)
    if sys.excepthook is not _excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = _excepthook


def _body_bytes(body: object) -> Union[bytes, bytearray, memoryview]:
    """A response body that is not bytes, as bytes (a str as UTF-8, a
    memoryview of wider items or with gaps as its bytes); TypeError for
    another type."""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, bytearray):
        return body
    if isinstance(body, memoryview):
        return body if body.itemsize == 1 and body.c_contiguous else body.tobytes()
    raise TypeError(f"a response body is bytes, bytearray, memoryview or str, "
                    f"not {type(body).__name__}")


class Request:
    """One request in hand: its key, client, attempt, context and body.
    Answer it once with ``respond`` or ``fault``."""

    __slots__ = ("_service", "_fields", "answered")

    def __init__(self, service: "Service", fields: frame.RequestFields) -> None:
        self._service = service
        # (attempt, attributes, key, client, context, body)
        self._fields = fields
        self.answered = False

    @property
    def key(self) -> str:
        return self._fields[2]

    @property
    def application(self) -> str:
        return self._fields[2].split(".")[0]

    @property
    def function(self) -> str:
        return self._fields[2].split(".")[1]

    @property
    def version(self) -> int:
        return int(self._fields[2].split(".")[2])

    @property
    def serialization(self) -> str:
        return self._fields[2].split(".")[3]

    @property
    def client(self) -> str:
        return self._fields[3]

    @property
    def attempt(self) -> int:
        return self._fields[0]

    @property
    def attributes(self) -> int:
        return self._fields[1]

    @property
    def body(self) -> bytes:
        return self._fields[5]

    @property
    def context(self) -> List[Tuple[str, bytes]]:
        return list(self._fields[4])

    def context_value(self, name: str) -> Optional[bytes]:
        """The first context value named ``name``, or None."""
        for n, v in self._fields[4]:
            if n == name:
                return v
        return None

    def respond(self, body: Union[bytes, bytearray, memoryview, str]) -> None:
        """Answers OK with ``body`` (a str is sent as UTF-8). A body over
        the response limit is answered ERROR RESPONSE_TOO_LARGE and raises
        InvalidRequest. A body of another type raises TypeError and leaves
        the request unanswered (NO_ANSWER when the loop moves on)."""
        if not isinstance(body, bytes):
            body = _body_bytes(body)
        service = self._service
        if self.answered or service._current is not self:
            self._claim()  # raises
        self.answered = True
        n = len(body)
        conn = service._conn
        if n > service._small_answer or conn is None:
            service._answer_ok(body)
            return
        # The common case, inline (one call less a request): a small answer
        # on a connection, in one write, then Service._complete's work.
        try:
            conn.sendall(_OK_PACK(_OK_START, 5 + n, n) + body, _MSG_NOSIGNAL)
        except OSError:
            service._complete(_OUTCOME_OK, 13 + n, False)
            return
        m = service._managed
        if m is not None:
            m.finish(service._started_ns, service._request_bytes, 13 + n, _OUTCOME_OK,
                     service._attempt)
            if m.at_limit:
                service._keep = False
        if not service._keep:
            conn.close()
            service._conn = None

    def fault(self, code: int, text: str) -> None:
        """Answers FAULT: the request cannot be served (never retried).
        Codes 1-99 are reserved (PROTOCOL.md 4.1); use 100 and up. A code
        that is not 1 to 2**32-1 is answered ERROR INTERNAL, as the Rust
        library answers code 0, and raises InvalidRequest; a text that is
        not a str raises TypeError and leaves the request unanswered."""
        if not isinstance(text, str):
            raise TypeError(f"a fault's text is a str, not {type(text).__name__}")
        self._claim()
        if not (isinstance(code, int) and 1 <= code <= 0xFFFFFFFF):
            self._service._answer(frame.Response(
                frame.ERROR, code=frame.INTERNAL,
                text=f"the service answered with fault code {code!r}, which is not a fault "
                     "code (1 to 4294967295)"[: frame.MAX_TEXT]), managed.OUTCOME_ERROR)
            raise InvalidRequest(f"fault code {code!r} is not 1 to 4294967295")
        text = text.encode()[: frame.MAX_TEXT].decode(errors="ignore")
        self._service._answer(frame.Response(frame.FAULT, code=code, text=text),
                              managed.OUTCOME_FAULT)

    def _claim(self) -> None:
        if self.answered:
            raise InvalidRequest("this request was already answered")
        if self._service._current is not self:
            raise InvalidRequest("this request is no longer the one in hand")
        self.answered = True

    def __repr__(self) -> str:
        return (f"Request(key={self.key!r}, client={self.client!r}, attempt={self.attempt}, "
                f"body={len(self.body)} bytes)")


class Service:
    """The request loop of a service program.

    ``Service()`` reads its mode and options from the environment;
    iterate it to get requests. ``limits`` and the timeouts may be given
    (the ``CHARON_READ_TIMEOUT_MS`` and ``CHARON_AFFINITY_TIMEOUT_MS``
    variables, when set, win).
    """

    def __init__(
        self,
        *,
        limits: frame.Limits = frame.DEFAULT_LIMITS,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        affinity_timeout: float = DEFAULT_AFFINITY_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        if threading.current_thread() is not threading.main_thread():
            # Checked before anything is bound or mapped.
            raise ServiceError(
                "a Service runs in the main thread: it handles SIGTERM, SIGINT and SIGUSR1, "
                "which Python runs handlers for in the main thread only")
        self.limits = limits
        for name, value in (("read_timeout", read_timeout), ("affinity_timeout", affinity_timeout),
                            ("write_timeout", write_timeout), ("drain_timeout", drain_timeout)):
            # The bounds of the CHARON_*_MS variables.
            if not 0.001 <= value <= _MAX_ENV_MS / 1000:
                raise ServiceError(f"{name} must be from 0.001 to {_MAX_ENV_MS // 1000} "
                                   f"seconds, not {value!r}")
        self.read_timeout = _env_ms("CHARON_READ_TIMEOUT_MS", read_timeout)
        self.affinity_timeout = _env_ms("CHARON_AFFINITY_TIMEOUT_MS", affinity_timeout)
        self.write_timeout = write_timeout
        # For poll(), rounded up.
        self._read_timeout_ms = int(self.read_timeout * 1000) + 1
        # A drain that new clients keep feeding (a dead manager leaves its
        # socket in place) ends after this long.
        self.drain_timeout = _env_ms("CHARON_DRAIN_TIMEOUT_MS", drain_timeout)
        self._drain_since: Optional[float] = None
        self._allowed_uids = _id_set("CHARON_ALLOWED_UIDS")
        self._allowed_gids = _id_set("CHARON_ALLOWED_GIDS")
        self._check_peer = self._allowed_uids is not None or self._allowed_gids is not None
        self._max_payload = limits.max_request_payload()
        # A smaller answer goes out in one write with no further check.
        self._small_answer = min(_READ_CHUNK - 1, limits.max_response_body)
        self._listener: Optional[socket.socket] = None
        self._bound: Optional[Tuple[str, int, int]] = None
        self._managed: Optional[Managed] = None
        self._conn: Optional[_socket.socket] = None
        self._started_ns = 0
        self._attempt = 1
        self._keep = False
        # Bytes a client sent after a keep-affinity request on the same
        # connection (pipelined): the start of its next request.
        self._pending = b""
        self._current: Optional[Request] = None
        self._request_bytes = 0
        self._finished = False
        self._ep: Optional["select.epoll"] = None
        self._listen_fd = -1
        self._report_fd = -1
        self._wake_r = -1
        # Set when a connection woke the instance from its wait: its
        # request is usually still on its way.
        self._fresh = False
        # Waits for a connection's request (the fd registered in it).
        self._conn_poll = select.poll()
        self._conn_poll_fd = -1
        slot = os.environ.get("CHARON_SLOT")
        accept_path = os.environ.get("CHARON_ACCEPT_SOCKET")
        if slot is None and os.environ.get("CHARON_TEMPLATE") is not None:
            # A template forks instances without exec (PROTOCOL.md 10.4),
            # which a Python process cannot do soundly; charond falls back
            # to exec'ing each instance when the template exits unready.
            raise ServiceError(
                "this service is configured with template = true, which the Python "
                "library does not support (templates need the Rust charon-service "
                "library): remove the key; charond starts every instance by exec meanwhile"
            )
        if slot is not None:
            self.mode = MANAGED
            self._setup_managed(slot)
        elif accept_path is not None:
            self.mode = ACCEPT
            self._setup_accept(accept_path)
        elif _fd_open(REQUEST_FD) and _fd_open(RESPONSE_FD):
            self.mode = STANDALONE
        else:
            raise ServiceError(
                "no way to receive requests: run me under charond, or set "
                "CHARON_ACCEPT_SOCKET=PATH, or give a request on fd 3 and a response file "
                "on fd 4 (service 3<request 4>response)"
            )
        self._pid = os.getpid()
        self._install_signals()
        _install_excepthook(self)

    # -- setup

    def _setup_managed(self, slot_text: str) -> None:
        try:
            slot = int(slot_text.strip())
        except ValueError:
            raise ServiceError(f"CHARON_SLOT must be a scoreboard slot index, not {slot_text!r}")
        try:
            listener = socket.socket(fileno=LISTEN_FD)
        except OSError as e:
            raise ServiceError(f"fd 3 must be the listening rendezvous socket: {e}") from None
        if (listener.family != socket.AF_UNIX or listener.type != socket.SOCK_STREAM
                or not listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            raise ServiceError("fd 3 must be a listening AF_UNIX stream socket")
        try:
            sb = Scoreboard(SCOREBOARD_FD)
        except (OSError, ValueError, ScoreboardError) as e:
            raise ServiceError(f"fd 4 must be the scoreboard memfd: {e}") from None
        if not 0 <= slot < sb.slot_count:
            raise ServiceError(f"CHARON_SLOT {slot} is not below the slot count {sb.slot_count}")
        try:
            report = socket.socket(fileno=REPORT_FD)
        except OSError as e:
            raise ServiceError(f"fd 5 must be the report channel: {e}") from None
        if report.type != socket.SOCK_SEQPACKET:
            raise ServiceError("fd 5 must be a SOCK_SEQPACKET socket (the report channel)")
        for fd in (LISTEN_FD, SCOREBOARD_FD, REPORT_FD):
            os.set_inheritable(fd, False)
        listener.setblocking(False)
        self._listener = listener
        self._managed = Managed(sb, slot, report)
        self._managed.set_state(managed.STARTING)

    def _setup_accept(self, path: str) -> None:
        if not path:
            raise ServiceError("CHARON_ACCEPT_SOCKET is empty; set it to a socket path")
        tmp = f"{path}.{os.getpid()}.tmp"
        if len(os.fsencode(tmp)) > _MAX_SOCKET_PATH:
            raise ServiceError(
                f"{path}: too long: its temporary name {tmp} must fit in a socket"
                f" address ({_MAX_SOCKET_PATH} bytes)")
        # Services starting on one path take turns (PROTOCOL.md 10.2): a
        # lock on the directory from the check to the rename.
        turn = _take_turn(path)
        try:
            self._check_replaceable(path)
            # Bound at a temporary name and renamed over the path once it
            # listens (a stale socket replaced in one step), so a client
            # finds the stale socket or the new one, never the path empty.
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                listener.bind(tmp)
                listener.listen(socket.SOMAXCONN)
                os.rename(tmp, path)
            except OSError as e:
                listener.close()
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise ServiceError(f"{path}: cannot listen there: {e}") from None
        finally:
            if turn is not None:
                os.close(turn)
        listener.setblocking(False)
        st = os.lstat(path)
        self._bound = (path, st.st_dev, st.st_ino)
        self._listener = listener

    @staticmethod
    def _check_replaceable(path: str) -> None:
        """Refuses a live socket or a file that is not a socket at ``path``;
        a free path or a stale socket (nobody listens) is fine."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ServiceError(f"{path}: a file that is not a socket is in the way")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise ServiceError(f"{path}: another process is listening there")
        except ConnectionRefusedError:
            pass
        finally:
            probe.close()

    def _install_signals(self) -> None:
        _Flags.stop = False
        _Flags.drain = False
        _Flags.manager_pid = os.getppid() if self._managed is not None else 0
        signal.signal(signal.SIGTERM, _on_stop)
        signal.signal(signal.SIGINT, _on_stop)
        signal.signal(signal.SIGUSR1, _on_drain)
        if self._listener is None:
            return
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._wake_r = r
        # An exclusive wait on the listener: one connection wakes one
        # waiting instance, not all of them. (A wait on a kept connection
        # takes it out of the set: see _wait_kept.)
        ep = select.epoll()
        self._listen_fd = self._listener.fileno()
        ep.register(self._listen_fd, _LISTEN_EVENTS)
        ep.register(r, select.EPOLLIN)
        if self._managed is not None:
            self._report_fd = self._managed.report_fd()
            ep.register(self._report_fd, select.EPOLLIN)
        self._ep = ep

    def _wait(self, timeout: Optional[float]) -> List[int]:
        """Waits for the listener, a signal, the report channel or a kept
        connection; the fds that woke. Signals are drained (their handlers
        set the flags); the report channel is checked."""
        assert self._ep is not None
        woke = []
        for fd, _ in self._ep.poll(-1 if timeout is None else timeout):
            self._woke(fd)
            woke.append(fd)
        return woke

    def _woke(self, fd: int) -> None:
        """``fd`` polled ready: a signal arrived (drained here; its handler
        set the flags) or the report channel changed (checked here)."""
        if fd == self._wake_r:
            try:
                os.read(fd, 512)
            except BlockingIOError:
                pass
        elif fd == self._report_fd and self._managed is not None:
            self._managed.check_channel()

    # -- the loop

    def __iter__(self) -> Iterator[Request]:
        return self

    def __next__(self) -> Request:
        cur = self._current
        if cur is not None:
            if not cur.answered:
                self._unanswered()
            self._current = None
        if self._conn is None and not self._fresh and self._listener is not None:
            got = self._take_queued()
            if got is not None:
                req = self._current = Request(self, got)
                return req
        while True:
            if self.mode == STANDALONE:
                if self._finished:
                    self.close()
                    raise StopIteration
                self._finished = True
                got = self._standalone_frame()
            else:
                if self._conn is None and not self._accept():
                    self.close()
                    raise StopIteration
                got = self._read_conn()
            if got is not None:
                req = self._current = Request(self, got)
                return req

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # An exit (SystemExit) mid-request must stay a silent close, which
        # the client retries; anything else answers NO_ANSWER.
        if exc_type is not SystemExit:
            self._unanswered()
        self.close()

    def _forked(self) -> bool:
        """This is a child the program forked, with copies of the
        service's connection, socket and slot, which are its parent's."""
        return os.getpid() != self._pid

    def stopping(self) -> bool:
        """SIGTERM or SIGINT arrived (or the one standalone request is done)."""
        return self._finished or _Flags.stop

    def draining(self) -> bool:
        """Serve what is queued, then stop: SIGUSR1 arrived, or the manager
        is gone (its death loses nothing a client already wrote)."""
        return _Flags.drain or (self._managed is not None and self._managed.manager_gone)

    def _drained(self) -> bool:
        """A drain has taken connections for ``drain_timeout``: stop
        taking more, even if clients still come."""
        if not self.draining():
            return False
        now = time.monotonic()
        if self._drain_since is None:
            self._drain_since = now
        return now - self._drain_since >= self.drain_timeout

    def next_request(self) -> Optional[Request]:
        """The next request, or None when the service should end."""
        try:
            return self.__next__()
        except StopIteration:
            return None

    def close(self) -> None:
        """Ends the service: answers an unanswered request, closes the
        connection, flushes the reports, removes an accept-mode socket.
        In a child the program forked, does nothing: all that is the
        parent's."""
        if self._forked():
            return
        self._unanswered()
        self._close_conn()
        if self._managed is not None:
            self._managed.leave()
        if self._bound is not None:
            path, dev, ino = self._bound
            self._bound = None
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
            except OSError:
                pass

    def _unanswered(self) -> None:
        cur = self._current
        if cur is not None and not cur.answered:
            cur.answered = True
            self._answer(frame.Response(
                frame.ERROR, code=frame.NO_ANSWER,
                text="the service dropped the request without answering it"),
                managed.OUTCOME_NO_ANSWER)
        self._current = None

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._keep = False
        self._pending = b""

    def _take_queued(self) -> Optional[frame.RequestFields]:
        """While connections keep coming (the last wait found one queued),
        accept() goes first: takes the next connection and, when its
        request comes whole in the first read (the usual case then), that
        request, with no other call. None when nothing was queued (the
        loop then waits, as after a wake-up) or a flag is up, and after a
        refusal."""
        m = self._managed
        if _Flags.stop or _Flags.drain or (m is not None and (m.at_limit or m.manager_gone)):
            return None
        try:
            # socket.accept() without its enum conversions.
            fd = self._listener._accept()[0]  # type: ignore[union-attr]
            if fd <= 2:
                fd = _above_stdio(fd)
        except OSError:
            # Nothing queued (or trouble the wait sees again): wait first.
            self._fresh = True
            return None
        self._started_ns = _monotonic_ns()
        conn = self._conn = _socket.socket(_AF_UNIX, _SOCK_STREAM, 0, fd)
        self._keep = False
        self._pending = b""
        if m is not None:
            m.accepted()
        return self._read_first(conn)

    def _accept(self) -> bool:
        """Takes the next connection, waiting for one (idle) first; False
        when the loop should end instead.

        The wait comes before the accept (first without blocking, so that
        the slot says idle only when the instance is): an instance that
        finds nothing queued, or is woken for a connection another one
        took, costs a wait, not a failed accept, whose exception (with
        its error text) costs several times a wait in Python."""
        assert self._listener is not None and self._ep is not None
        m = self._managed
        accept = self._listener._accept  # type: ignore[attr-defined]
        poll = self._ep.poll
        listen_fd = self._listen_fd
        woken = False
        while True:
            # The request limit is a hard bound: not one connection more.
            if m is not None and m.at_limit:
                return False
            # The flags are checked first: the usual case costs no call.
            stop = draining = False
            if (_Flags.stop or _Flags.drain or self._finished
                    or (m is not None and m.manager_gone)):
                stop = self.stopping() or self._drained()
                if stop and not woken:
                    return False
                draining = self.draining()
            if not (woken or draining):
                # What is ready now; only if nothing is, idle and wait.
                events = poll(0)
                self._fresh = not events
                if not events:
                    events = poll(m.idle() if m is not None else -1)
                for fd, _ in events:
                    if fd == listen_fd:
                        woken = True
                    else:
                        self._woke(fd)
                # The usual wake-up (a connection, no flag up) goes on to
                # accept() at once; anything else is looked at first.
                if not woken or _Flags.stop or _Flags.drain or (
                        m is not None and m.manager_gone):
                    continue
            # Woken by a connection, or draining what is queued.
            woken = False
            try:
                # socket.accept() without its enum conversions.
                fd = accept()[0]
                if fd <= 2:
                    fd = _above_stdio(fd)
            except BlockingIOError:
                if stop or draining:
                    return False
                # Another instance took the connection: back to the wait.
                continue
            except (InterruptedError, ConnectionAbortedError):
                continue
            except OSError as e:
                if e.errno in (errno.EPROTO,):
                    continue
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.05)
                    continue
                raise ServiceError(f"accept a connection: {e}") from None
            self._started_ns = _monotonic_ns()
            # The C socket type: socket.socket's Python-level __init__ and
            # close would add their calls to every request.
            self._conn = _socket.socket(_AF_UNIX, _SOCK_STREAM, 0, fd)
            self._keep = False
            self._pending = b""
            if m is not None:
                m.accepted()
            return True

    def _refused_peer(self) -> Optional[str]:
        if self._allowed_uids is None and self._allowed_gids is None:
            return None
        assert self._conn is not None
        _pid, uid, gid = _PEERCRED.unpack(
            self._conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid in (self._allowed_uids or ()) or gid in (self._allowed_gids or ()):
            return None
        return f"peer uid {uid} gid {gid} is not allowed to call this service"

    def _read_conn(self) -> Optional[frame.RequestFields]:
        """Reads one request on the connection; None after a refusal or
        a close (the loop then accepts the next connection)."""
        conn = self._conn
        assert conn is not None
        if self._keep:
            pending = self._pending
            if pending:
                # Already read, as the request in hand was: served even
                # if a stop came meanwhile.
                self._pending = b""
                self._started_ns = time.monotonic_ns()
                self._fresh = False
                return self._read_rest(pending)
            if not self._wait_kept():
                self._close_conn()
                return None
            self._started_ns = time.monotonic_ns()
            self._fresh = False
        # A connection that has just woken the instance usually has its
        # request still on the way: wait for it first. One that was queued
        # usually holds all of it: one non-blocking read, no poll.
        if self._fresh:
            fd = conn.fileno()
            if fd != self._conn_poll_fd:
                self._watch(fd)
            if not self._conn_poll.poll(self._read_timeout_ms):
                return self._read_rest(b"")
        return self._read_first(conn)

    def _read_first(self, conn: _socket.socket) -> Optional[frame.RequestFields]:
        """The first read on a connection: a request that it brings whole
        is decoded from its bytes at once; anything else is _read_rest's."""
        try:
            data = conn.recv(_READ_CHUNK, _MSG_DONTWAIT)
        except BlockingIOError:
            data = b""
        except OSError:
            self._close_conn()
            return None
        n = len(data)
        if n >= 8 and not self._check_peer:
            start, size = _REQUEST_HEAD(data)
            if start == _REQUEST_START and n == 8 + size and size <= self._max_payload:
                try:
                    got = frame.decode_request_frame(data, self.limits)
                except ProtocolError as e:
                    self._refuse(e.error_code, str(e), n)
                    return None
                return self._begin(got, n)
        return self._read_rest(data)

    def _read_rest(self, data: Union[bytes, bytearray]) -> Optional[frame.RequestFields]:
        """_read_conn's general case: the rest of a request that the first
        read did not bring whole (waiting up to the read timeout), a bad
        header, or a peer to check."""
        conn = self._conn
        assert conn is not None
        deadline = self._started_ns / 1e9 + self.read_timeout
        need = 0
        try:
            while True:
                if len(data) >= 8:
                    magic, version, kind, size = _HEADER_UNPACK(data)
                    if (magic != b"CH" or version != 1 or kind != 1
                            or size > self._max_payload):
                        frame.check_header(bytes(data[:8]), frame.KIND_REQUEST, self.limits)
                    need = 8 + size
                    if len(data) >= need:
                        break
                # Wait for more (a connection's fd number stays registered
                # until a connection with another number comes).
                fd = conn.fileno()
                if fd != self._conn_poll_fd:
                    self._watch(fd)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError()
                if not self._conn_poll.poll(int(left * 1000) + 1):
                    continue
                try:
                    chunk = conn.recv(_READ_CHUNK if not need else need - len(data),
                                      _MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                if not chunk:
                    if data:
                        self._refuse(frame.MALFORMED_REQUEST,
                                     f"the connection closed after {len(data)} bytes of a "
                                     "request frame", len(data))
                    else:
                        self._close_conn()
                    return None
                if not data:
                    data = chunk
                else:
                    if isinstance(data, bytes):
                        data = bytearray(data)
                    data += chunk
            rest = bytes(data[need:])
            got = frame.decode_request_frame(bytes(data[:need]), self.limits)
        except TimeoutError:
            self._refuse(frame.READ_TIMEOUT,
                         f"no complete request within the read timeout of "
                         f"{int(self.read_timeout * 1000)} ms", len(data))
            return None
        except ProtocolError as e:
            self._refuse(e.error_code, str(e), len(data))
            return None
        except OSError:
            self._close_conn()
            return None
        if self._allowed_uids is not None or self._allowed_gids is not None:
            refused = self._refused_peer()
            if refused is not None:
                self._refuse(frame.NOT_PERMITTED, refused, len(data))
                return None
        begun = self._begin(got, need)
        if rest and self._keep:
            self._pending = rest
        return begun

    def _watch(self, fd: int) -> None:
        """Makes ``fd`` (a connection) the one the request wait polls."""
        if self._conn_poll_fd >= 0:
            self._conn_poll.unregister(self._conn_poll_fd)
        self._conn_poll.register(fd, select.POLLIN)
        self._conn_poll_fd = fd

    def _begin(self, got: frame.RequestFields, size: int) -> frame.RequestFields:
        """A request of ``size`` bytes has been read: it is the one in hand."""
        self._request_bytes = size
        self._keep = (got[1] & _KEEP_AFFINITY) != 0
        attempt = self._attempt = got[0]
        m = self._managed
        if m is not None:
            m.begin(attempt, size, got[3])
        return got

    def _wait_kept(self) -> bool:
        """Waits on a kept affinity connection for the next request's first
        byte; False when the conversation is over."""
        assert self._conn is not None and self._ep is not None
        expires = time.monotonic() + self.affinity_timeout
        fd = self._conn.fileno()
        # A connection queued on the listener is for another instance: the
        # listener (level-triggered) leaves the set while this one waits on
        # its conversation, or it would wake the wait at once, over and
        # over, while the connection stays queued.
        self._ep.unregister(self._listen_fd)
        self._ep.register(fd, select.EPOLLIN)
        try:
            while True:
                if self.stopping() or self.draining():
                    return False
                now = time.monotonic()
                if now >= expires:
                    return False
                until = expires
                due = self._managed.flush_due() if self._managed else None
                if due is not None:
                    until = min(until, due)
                if fd in self._wait(max(until - now, 0)):
                    return True
                if self._managed is not None and due is not None and time.monotonic() >= due:
                    self._managed.flush()
        finally:
            self._ep.unregister(fd)
            self._ep.register(self._listen_fd, _LISTEN_EVENTS)

    def _standalone_frame(self) -> Optional[frame.RequestFields]:
        buf = bytearray()
        need = 0
        self._started_ns = time.monotonic_ns()
        try:
            while not need or len(buf) < need:
                chunk = os.read(REQUEST_FD, _READ_CHUNK if not need else need - len(buf))
                if not chunk:
                    text = ("fd 3 held no request (empty input)" if not buf
                            else f"fd 3 ended after {len(buf)} bytes of a request frame")
                    self._refuse(frame.MALFORMED_REQUEST, text, len(buf))
                    return None
                buf += chunk
                if not need and len(buf) >= frame.HEADER_LEN:
                    need = frame.HEADER_LEN + frame.check_header(
                        bytes(buf[:8]), frame.KIND_REQUEST, self.limits)
            got = frame.decode_request_frame(bytes(buf[:need]), self.limits)
        except ProtocolError as e:
            self._refuse(e.error_code, str(e), len(buf))
            return None
        except OSError as e:
            self._refuse(frame.INTERNAL, f"cannot read fd 3: {e}", len(buf))
            return None
        self._request_bytes = need
        self._keep = False
        self._attempt = got[0]
        return got

    # -- answers

    def _write(self, data: bytes) -> bool:
        try:
            if self.mode == STANDALONE:
                view = memoryview(data)
                while view:
                    view = view[os.write(RESPONSE_FD, view):]
            else:
                conn = self._conn
                assert conn is not None
                if len(data) > _READ_CHUNK:
                    # More than the socket buffer may hold: bound the wait
                    # on a client that does not read.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                    _timeval(self.write_timeout))
                conn.sendall(data, socket.MSG_NOSIGNAL)
            return True
        except OSError:
            return False

    def _answer_ok(self, body: Union[bytes, bytearray, memoryview]) -> None:
        """An OK answer that Request.respond's common case does not cover:
        a large body (or over the limit), or no connection (standalone)."""
        n = len(body)
        try:
            head = frame.encode_ok_head(n, self.limits)
        except InvalidRequest as e:
            self._answer(frame.Response(frame.ERROR, code=frame.RESPONSE_TOO_LARGE, text=(
                f"the service produced a response of {len(body)} bytes, over the limit of "
                f"{self.limits.max_response_body} bytes")), managed.OUTCOME_ERROR)
            raise e
        if len(body) < _READ_CHUNK:
            ok = self._write(head + body)
        else:
            ok = self._write(head) and self._write(bytes(body))
        self._complete(managed.OUTCOME_OK, len(head) + len(body), ok)

    def _answer(self, resp: frame.Response, outcome: int) -> None:
        data = frame.encode_response(resp, self.limits)
        self._complete(outcome, len(data), self._write(data))

    def _complete(self, outcome: int, response_bytes: int, written: bool) -> None:
        m = self._managed
        if m is not None:
            m.finish(self._started_ns, self._request_bytes,
                     response_bytes if written else 0,
                     outcome if written else managed.OUTCOME_NO_ANSWER, self._attempt)
            if m.at_limit:
                # The limit is a hard bound: no kept connection either.
                self._keep = False
        if not (written and self._keep):
            self._close_conn()

    def _refuse(self, code: int, text: str, received: int) -> None:
        """Answers a connection that did not bring a valid request, closes
        it, and records it (not counted as a request in the slot)."""
        data = frame.encode_response(frame.Response(frame.ERROR, code=code, text=text),
                                     self.limits)
        sent = self._write(data)
        self._close_conn()
        if self.mode == STANDALONE:
            self._finished = True
        if self._managed is not None:
            self._managed.note(self._started_ns, received, len(data) if sent else 0,
                               managed.OUTCOME_ERROR, 1)
