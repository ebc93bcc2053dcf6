"""Managed mode's side channels (PROTOCOL.md section 10.1): the instance's
scoreboard slot and the report channel to the manager.

The scoreboard is a memfd the manager shares with every instance; each
field is an aligned native integer. Python has no atomic instructions, so
every field is written with one aligned store of its own width (through a
typed memoryview), which is what the manager's atomic loads need; the
saturation hint's compare-and-swap is a load, a compare and a store, which
at worst lets two instances send one hint each.

Per-request records are batched and sent without blocking when 64 are
batched or the oldest is a second old; a batch that cannot be sent at once
is dropped rather than delay a client. The batch is one preallocated
message buffer that each record is packed into in place: a request costs
no allocation here, and one clock read (the caller's).
"""

import atexit
import errno
import mmap
import os
import socket
import struct
import time
from typing import Optional

SCOREBOARD_MAGIC = 0x4348524E53423031
HEADER_SIZE = 64
SLOT_SIZE = 128
MAX_SLOTS = 20_000

STARTING, IDLE, BUSY, EXITING = 1, 2, 3, 4

REPORT_VERSION = 1
KIND_RECORDS, KIND_SATURATED, KIND_RETIRING = 1, 2, 3
MAX_RECORDS = 64
_LAST_RECORD = MAX_RECORDS - 1
OUTCOME_OK, OUTCOME_FAULT, OUTCOME_ERROR, OUTCOME_NO_ANSWER = 0, 1, 2, 3

FLUSH_AGE = 1.0
_FLUSH_AGE_NS = 1_000_000_000
HINT_GAP_NS = 2_000_000

_RECORD = struct.Struct(">IIIBBxx")
_MSG_HEAD = struct.Struct(">BBH")
_CLIENT_WORDS = struct.Struct("@4Q")
_U32_MAX = 0xFFFFFFFF
_monotonic_ns = time.monotonic_ns

# Word indexes (u32 and u64 views) of the header and slot fields.
_H_VERSION, _H_SLOT_COUNT, _H_SLOT_SIZE, _H_WANT_HINTS = 2, 3, 4, 5   # u32
_H_MAGIC, _H_LAST_HINT = 0, 3                                          # u64
_H_SLOTS_IN_USE = 8                                                    # u32
_S_STATE, _S_PID, _S_ATTEMPT = 0, 1, 2                                 # u32
_S_REQUESTS, _S_LIMIT, _S_SINCE, _S_TOTAL, _S_BYTES, _S_CLIENT = 2, 3, 4, 5, 6, 7  # u64
_S_NOTICE = 11                                                         # u64


class ScoreboardError(Exception):
    """The fd is not a scoreboard this library can map."""


def encode_signal(kind: int) -> bytes:
    return _MSG_HEAD.pack(REPORT_VERSION, kind, 0)


class Records:
    """A records message (kind 1) being filled: up to 64 records packed in
    place into one buffer, sent as a view of it."""

    __slots__ = ("_buf", "_pack", "count", "oldest_ns")

    def __init__(self) -> None:
        self._buf = bytearray(_MSG_HEAD.size + MAX_RECORDS * _RECORD.size)
        self._pack = _RECORD.pack_into
        self.count = 0
        self.oldest_ns = 0

    def add(self, elapsed_us: int, request_bytes: int, response_bytes: int, outcome: int,
            attempt: int, now_ns: int) -> bool:
        """Adds one record (sizes and times saturate at u32's maximum);
        True when the batch is due: full, or its oldest record a second
        old."""
        n = self.count
        if not n:
            self.oldest_ns = now_ns
        try:
            self._pack(self._buf, 4 + 16 * n, elapsed_us, request_bytes, response_bytes, outcome,
                       attempt)
        except struct.error:  # a time or size over u32's maximum
            self._pack(self._buf, 4 + 16 * n, min(elapsed_us, _U32_MAX),
                       min(request_bytes, _U32_MAX), min(response_bytes, _U32_MAX), outcome,
                       attempt)
        self.count = n + 1
        return n >= _LAST_RECORD or now_ns - self.oldest_ns >= _FLUSH_AGE_NS

    def take(self) -> bytes:
        """The message holding the batched records; the batch is then empty."""
        n = self.count
        _MSG_HEAD.pack_into(self._buf, 0, REPORT_VERSION, KIND_RECORDS, n)
        self.count = 0
        self.oldest_ns = 0
        return bytes(memoryview(self._buf)[:4 + 16 * n])


class Scoreboard:
    """A mapped scoreboard, checked as section 10.1 says."""

    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE + SLOT_SIZE or size % 8:
            raise ScoreboardError(f"a scoreboard of {size} bytes is too small")
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._u32 = memoryview(self._map).cast("I")
        self._u64 = memoryview(self._map).cast("Q")
        if self._u64[_H_MAGIC] != SCOREBOARD_MAGIC:
            raise ScoreboardError("bad magic")
        if self._u32[_H_VERSION] != 1:
            raise ScoreboardError(f"layout version {self._u32[_H_VERSION]} is not 1")
        if self._u32[_H_SLOT_SIZE] != SLOT_SIZE:
            raise ScoreboardError(f"slot size {self._u32[_H_SLOT_SIZE]} is not {SLOT_SIZE}")
        count = self._u32[_H_SLOT_COUNT]
        if not 1 <= count <= MAX_SLOTS or HEADER_SIZE + SLOT_SIZE * count > size:
            raise ScoreboardError(f"slot count {count} does not fit {size} bytes")
        self.slot_count = count

    def u32(self, slot: int, index: int) -> int:
        return int(self._u32[(HEADER_SIZE + SLOT_SIZE * slot) // 4 + index])

    def set_u32(self, slot: int, index: int, value: int) -> None:
        self._u32[(HEADER_SIZE + SLOT_SIZE * slot) // 4 + index] = value

    def u64(self, slot: int, index: int) -> int:
        return int(self._u64[(HEADER_SIZE + SLOT_SIZE * slot) // 8 + index])

    def set_u64(self, slot: int, index: int, value: int) -> None:
        self._u64[(HEADER_SIZE + SLOT_SIZE * slot) // 8 + index] = value

    def any_idle(self) -> bool:
        upto = min(self._u32[_H_SLOTS_IN_USE], self.slot_count)
        return any(self.u32(i, _S_STATE) == IDLE for i in range(upto))

    def want_hints(self) -> bool:
        return self._u32[_H_WANT_HINTS] != 0

    def claim_hint(self, now_ns: int) -> bool:
        last = int(self._u64[_H_LAST_HINT])
        if now_ns - last < HINT_GAP_NS:
            return False
        self._u64[_H_LAST_HINT] = now_ns
        return True


_stderr_quiet = False


def quiet_stderr() -> None:
    """The manager is gone: points fd 2 at /dev/null, once. The manager read
    the instance's stderr pipe, and with it gone a write there fails (EPIPE:
    `print(..., file=sys.stderr)` raises BrokenPipeError), which would cost
    the request in hand; its lines had nobody to read them anyway."""
    global _stderr_quiet
    if _stderr_quiet:
        return
    _stderr_quiet = True
    try:
        fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.dup2(fd, 2)
    except OSError:
        pass
    finally:
        os.close(fd)


class Managed:
    """The slot and the report channel of this managed instance."""

    def __init__(self, scoreboard: Scoreboard, slot: int, report: socket.socket) -> None:
        self._sb = scoreboard
        self._slot = slot
        # The slot's fields as indexes into the scoreboard's u32 and u64
        # views, for the per-request stores.
        base = HEADER_SIZE + SLOT_SIZE * slot
        self._u32 = scoreboard._u32
        self._u64 = scoreboard._u64
        self._state = base // 4 + _S_STATE
        self._attempt = base // 4 + _S_ATTEMPT
        self._requests = base // 8 + _S_REQUESTS
        self._limit = base // 8 + _S_LIMIT
        self._since = base // 8 + _S_SINCE
        self._total = base // 8 + _S_TOTAL
        self._bytes = base // 8 + _S_BYTES
        self._client = base // 8 + _S_CLIENT
        self._notice = base // 8 + _S_NOTICE
        # What this instance last stored (it is the slot's only writer
        # once started; the manager wrote the limit before the fork).
        self._state_now = -1
        self._last_client: Optional[str] = None
        self._last_attempt = -1
        self._since_now = 0
        self._busy_total = 0
        self._served = 0
        self._request_limit = self._u64[self._limit]
        self._report = report
        self._records = Records()
        self._retiring_sent = False
        self.at_limit = False
        self.manager_gone = False
        self._pid = os.getpid()
        atexit.register(self._at_exit)

    def report_fd(self) -> int:
        return self._report.fileno()

    def set_state(self, state: int) -> None:
        if state != self._state_now:
            self._state_now = state
            self._u32[self._state] = state

    def idle(self) -> float:
        """The instance waits for a connection: its state says idle. How
        long it may wait, in seconds, before the unsent batch is due (-1:
        no batch; one already due is sent now)."""
        if self._state_now != IDLE:
            self._state_now = IDLE
            self._u32[self._state] = IDLE
        oldest = self._records.oldest_ns
        if not oldest:
            return -1
        left = oldest + _FLUSH_AGE_NS - _monotonic_ns()
        if left > 0:
            return left / 1e9
        self.flush()
        return -1

    def accepted(self) -> None:
        """A connection has been accepted: the instance is busy until it is
        answered or gone (a silent client occupies it too). If the manager
        wants hints and nobody is idle, say the service is saturated."""
        if self._state_now != BUSY:
            self._state_now = BUSY
            self._u32[self._state] = BUSY
        if self._u32[_H_WANT_HINTS]:
            sb = self._sb
            if not sb.any_idle() and sb.claim_hint(time.monotonic_ns()):
                self._send(encode_signal(KIND_SATURATED))

    def begin(self, attempt: int, request_bytes: int, client: str) -> None:
        """A request has been read: the slot says what it is. Fields that
        hold the same value as for the last request are not stored again
        (this instance is their only writer)."""
        u64 = self._u64
        if client != self._last_client:
            self._last_client = client
            name = client.encode()[:32].ljust(32, b"\0")
            c = self._client
            u64[c], u64[c + 1], u64[c + 2], u64[c + 3] = _CLIENT_WORDS.unpack(name)
        if attempt != self._last_attempt:
            self._last_attempt = attempt
            self._u32[self._attempt] = attempt
        u64[self._bytes] = request_bytes
        now = self._since_now = _monotonic_ns()
        u64[self._since] = now or 1

    def finish(self, accepted_ns: int, request_bytes: int, response_bytes: int, outcome: int,
               attempt: int) -> None:
        """The request in hand (its connection accepted at ``accepted_ns``)
        is done: count it, batch its record, say "retiring" once the notice
        point is reached, and stop accepting at the request limit (a hard
        bound)."""
        now = _monotonic_ns()
        u64 = self._u64
        since = self._since_now
        if since:
            self._since_now = 0
            u64[self._since] = 0
            total = self._busy_total = self._busy_total + now - since
            u64[self._total] = total
        served = self._served = self._served + 1
        u64[self._requests] = served
        if self._records.add((now - accepted_ns) // 1000, request_bytes, response_bytes,
                             outcome, attempt, now):
            self.flush()
        limit = self._request_limit
        if not limit:
            return
        self.at_limit = served >= limit
        notice = u64[self._notice]
        notice = limit if notice == 0 else min(notice, limit)
        if served >= notice and not self._retiring_sent:
            self._retiring_sent = True
            self.flush()
            self._send(encode_signal(KIND_RETIRING))

    def note(self, accepted_ns: int, request_bytes: int, response_bytes: int, outcome: int,
             attempt: int) -> None:
        """Batches the record of a connection that was not a request
        (not counted in the slot); sends the batch when full or old."""
        now = time.monotonic_ns()
        if self._records.add((now - accepted_ns) // 1000, request_bytes, response_bytes,
                             outcome, attempt, now):
            self.flush()

    def flush_due(self) -> Optional[float]:
        """When (time.monotonic) the unsent batch is due, if any."""
        oldest = self._records.oldest_ns
        return oldest / 1e9 + FLUSH_AGE if oldest else None

    def flush(self) -> None:
        if self._records.count:
            self._send(self._records.take())

    def _send(self, msg: bytes) -> None:
        if self.manager_gone:
            return
        try:
            self._report.send(msg, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                self._gone()
            # Full (EAGAIN) or other trouble: the batch is lost; a client
            # never waits on the manager.

    def check_channel(self) -> None:
        """The report channel polled readable: the manager sends nothing,
        so this is its end closing."""
        try:
            if self._report.recv(16, socket.MSG_DONTWAIT) == b"":
                self._gone()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._gone()

    def _gone(self) -> None:
        self.manager_gone = True
        quiet_stderr()

    def leave(self) -> None:
        self.flush()
        self.set_state(EXITING)

    def _at_exit(self) -> None:
        if os.getpid() == self._pid:
            self.flush()
