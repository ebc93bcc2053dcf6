"""Accept and standalone modes, run by hand: the stop and drain signals,
the read timeout and the limits, with the same framework errors as the
Rust library."""

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import charon
from charon import frame
from conftest import PATIENCE, SERVICES, bin_path, service_env, wait_for

KEY = "py.svc.0.raw"


def start_accept(procs, sock: Path, **env: str) -> subprocess.Popen:
    e = service_env()
    e["CHARON_ACCEPT_SOCKET"] = str(sock)
    e.update(env)
    p = procs.start([sys.executable, str(SERVICES / "svc.py")], env=e,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE)
    wait_for("the accept-mode socket", lambda: sock.exists() or p.poll() is not None)
    assert p.poll() is None, p.stderr.read()
    return p


def stderr_lines(p: subprocess.Popen):
    assert p.stderr is not None
    os.set_blocking(p.stderr.fileno(), False)
    return p.stderr


def raw_exchange(sock: Path, data: bytes, timeout: float = 20.0) -> frame.Response:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(str(sock))
        try:
            s.sendall(data)
        except OSError:
            pass  # a fast fail: the answer is waiting
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
        return frame.decode_frame(buf, frame.KIND_RESPONSE)
    finally:
        s.close()


def test_accept_mode_serves_and_sigterm_finishes_the_request_in_hand(procs, tmp_short):
    sock = tmp_short / "svc.sock"
    p = start_accept(procs, sock)
    c = charon.Client(run_dir=str(tmp_short), timeout=20)
    b = c.batch()
    # The client finds the socket by key in a run dir: link it there. A
    # small request is written whole by add(), so only reading is left.
    os.symlink(sock, tmp_short / f"{KEY}.sock")
    slow = b.add(KEY, b"in hand", context={"log": "started", "sleep": "700"})
    err = stderr_lines(p)
    seen = b""

    def started() -> bool:
        nonlocal seen
        seen += err.read() or b""
        return b"svc: started" in seen

    wait_for("the request in hand", started)
    p.send_signal(signal.SIGTERM)
    b.wait_all()
    assert b.result(slow) == b"in hand"
    assert p.wait(timeout=PATIENCE) == 0
    assert not sock.exists(), "the socket is removed on exit"


def test_drain_serves_the_queued_connections(procs, tmp_short):
    sock = tmp_short / "svc.sock"
    p = start_accept(procs, sock)
    os.symlink(sock, tmp_short / f"{KEY}.sock")
    c = charon.Client(run_dir=str(tmp_short), timeout=30)
    b = c.batch()
    ids = [b.add(KEY, b"q%d" % i, context={"log": "got %d" % i, "sleep": "200"})
           for i in range(4)]
    err = stderr_lines(p)
    seen = b""

    def first() -> bool:
        nonlocal seen
        seen += err.read() or b""
        return b"svc: got" in seen

    wait_for("the first request in hand", first)
    p.send_signal(signal.SIGUSR1)
    b.wait_all()
    assert [b.result(i) for i in ids] == [b"q%d" % i for i in range(4)]
    assert p.wait(timeout=PATIENCE) == 0


def test_a_drain_under_constant_load_ends_after_the_drain_timeout(procs, tmp_short):
    """A dead manager's socket stays in place, so clients keep coming: the
    drain stops taking connections after CHARON_DRAIN_TIMEOUT_MS."""
    sock = tmp_short / "svc.sock"
    # The knob under test, short so that the load need not last 10 s.
    p = start_accept(procs, sock, CHARON_DRAIN_TIMEOUT_MS="500")
    stop = threading.Event()
    answered = []
    # Eight clients on 20 ms requests: the queue is never empty.
    slow = frame.encode_request(frame.Request(KEY, b"x", context=[("sleep", b"20")]))

    def load() -> None:
        while not stop.is_set():
            try:
                answered.append(raw_exchange(sock, slow, timeout=5))
            except (OSError, charon.CharonError):
                time.sleep(0.01)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for("answers before the drain", lambda: len(answered) >= 5)
        began = time.monotonic()
        p.send_signal(signal.SIGUSR1)
        assert p.wait(timeout=PATIENCE) == 0
        took = time.monotonic() - began
    finally:
        stop.set()
        for t in threads:
            t.join()
    # It drained for the timeout (clients kept coming), then left.
    assert took >= 0.5, took


def test_read_timeout_and_limits_answer_framework_errors(procs, tmp_short):
    sock = tmp_short / "svc.sock"
    # The knob under test, short so the test does not wait 10 s.
    start_accept(procs, sock, CHARON_READ_TIMEOUT_MS="300")
    t = time.monotonic()
    r = raw_exchange(sock, frame.header(frame.KIND_REQUEST, 40)[:5])
    assert (r.status, r.code) == (frame.ERROR, frame.READ_TIMEOUT), r
    assert time.monotonic() - t >= 0.3
    r = raw_exchange(sock, frame.header(frame.KIND_REQUEST, 0xFFFFFFFF))
    assert (r.status, r.code) == (frame.ERROR, frame.REQUEST_TOO_LARGE), r
    r = raw_exchange(sock, b"GET / HTTP/1.0\r\n\r\n")
    assert (r.status, r.code) == (frame.ERROR, frame.MALFORMED_REQUEST), r
    r = raw_exchange(sock, b"CH\x07\x01\x00\x00\x00\x00")
    assert (r.status, r.code) == (frame.ERROR, frame.UNSUPPORTED_VERSION), r
    good = frame.encode_request(frame.Request(KEY, b"ok"))
    bad_attr = bytearray(good)
    bad_attr[9] = 0x10
    r = raw_exchange(sock, bytes(bad_attr))
    assert (r.status, r.code) == (frame.ERROR, frame.MALFORMED_REQUEST), r
    r = raw_exchange(sock, frame.encode_request(frame.Request(KEY, b"", context=[
        ("noanswer", b"")])))
    assert (r.status, r.code) == (frame.ERROR, frame.NO_ANSWER), r
    # After all that, it still serves.
    assert raw_exchange(sock, good) == frame.Response(frame.OK, body=b"ok")


def test_a_live_socket_is_not_replaced(procs, tmp_short):
    sock = tmp_short / "svc.sock"
    start_accept(procs, sock)
    e = service_env()
    e["CHARON_ACCEPT_SOCKET"] = str(sock)
    r = subprocess.run([sys.executable, str(SERVICES / "svc.py")], env=e,
                       capture_output=True, timeout=PATIENCE)
    assert r.returncode != 0
    assert b"another process is listening" in r.stderr


def test_a_stale_socket_is_replaced_without_a_moment_of_not_found(procs, tmp_short):
    # A predecessor died and left its socket: a client trying it in a loop
    # is refused until the new service's socket is in place, and never
    # finds the path missing (PROTOCOL.md 10.2).
    sock = tmp_short / "svc.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    seen: dict = {"refused": 0, "missing": 0, "connected": False}
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(sock))
                seen["connected"] = True
                return
            except ConnectionRefusedError:
                seen["refused"] += 1
            except FileNotFoundError:
                seen["missing"] += 1
            finally:
                s.close()

    t = threading.Thread(target=client)
    t.start()
    try:
        wait_for("the client to try the stale socket", lambda: seen["refused"] > 0)
        start_accept(procs, sock)
        wait_for("the client to connect", lambda: not t.is_alive())
    finally:
        done.set()
        t.join()
    assert seen["connected"] and seen["missing"] == 0, seen
    assert sorted(os.listdir(tmp_short)) == ["svc.sock"], "no temporary file left"


def test_a_path_without_room_for_the_temporary_name_is_refused(tmp_short):
    # The path itself fits in a socket address; PATH.<pid>.tmp does not.
    sock = tmp_short / ("x" * (107 - len(str(tmp_short)) - 1))
    e = service_env()
    e["CHARON_ACCEPT_SOCKET"] = str(sock)
    r = subprocess.run([sys.executable, str(SERVICES / "svc.py")], env=e,
                       capture_output=True, timeout=PATIENCE)
    assert r.returncode != 0
    assert b"its temporary name" in r.stderr, r.stderr
    assert os.listdir(tmp_short) == []


def test_a_foreign_lock_on_the_directory_does_not_hold_a_start_forever(procs, tmp_short):
    # Something else holds a lock on the directory for longer than the
    # service waits for its turn (a second): it starts without the lock.
    sock = tmp_short / "svc.sock"
    fd = os.open(tmp_short, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start_accept(procs, sock)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        s.close()
    finally:
        os.close(fd)


def test_standalone_with_charon_test(tmp_short):
    env = service_env()
    cmd = [str(bin_path("charon")), "test", "-K", KEY, "--", sys.executable,
           str(SERVICES / "svc.py")]
    r = subprocess.run(cmd, input=b"standalone body", capture_output=True, env=env,
                       timeout=PATIENCE)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"standalone body"
    r = subprocess.run(cmd[:2] + ["-C", "fault=150:refused"] + cmd[2:], input=b"x",
                       capture_output=True, env=env, timeout=PATIENCE)
    assert r.returncode != 0
    assert b"150" in r.stderr and b"refused" in r.stderr


def test_standalone_by_hand_with_fds_3_and_4(tmp_short):
    req = tmp_short / "request"
    resp = tmp_short / "response"
    req.write_bytes(frame.encode_request(frame.Request(KEY, b"by hand", "me")))
    with open(req, "rb") as i, open(resp, "wb") as o:
        r = subprocess.run(
            [sys.executable, "-c",
             "import os,runpy; os.dup2(int(os.environ['I']),3); os.dup2(int(os.environ['O']),4);"
             f"runpy.run_path({str(SERVICES / 'svc.py')!r}, run_name='__main__')"],
            env={**service_env(), "I": str(i.fileno()), "O": str(o.fileno())},
            pass_fds=(i.fileno(), o.fileno()), capture_output=True, timeout=PATIENCE)
    assert r.returncode == 0, r.stderr
    assert frame.decode_frame(resp.read_bytes(), frame.KIND_RESPONSE) == frame.Response(
        frame.OK, body=b"by hand")
    # A truncated request is answered with an error, and the program sees none.
    req.write_bytes(frame.encode_request(frame.Request(KEY, b"by hand"))[:-3])
    with open(req, "rb") as i, open(resp, "wb") as o:
        subprocess.run(
            [sys.executable, "-c",
             "import os,runpy; os.dup2(int(os.environ['I']),3); os.dup2(int(os.environ['O']),4);"
             f"runpy.run_path({str(SERVICES / 'svc.py')!r}, run_name='__main__')"],
            env={**service_env(), "I": str(i.fileno()), "O": str(o.fileno())},
            pass_fds=(i.fileno(), o.fileno()), capture_output=True, timeout=PATIENCE)
    got = frame.decode_frame(resp.read_bytes(), frame.KIND_RESPONSE)
    assert (got.status, got.code) == (frame.ERROR, frame.MALFORMED_REQUEST)


def test_no_mode_is_a_clear_error():
    env = service_env()
    r = subprocess.run([sys.executable, str(SERVICES / "svc.py")], env=env,
                       capture_output=True, timeout=PATIENCE, stdin=subprocess.DEVNULL,
                       close_fds=True)
    assert r.returncode != 0
    assert b"no way to receive requests" in r.stderr


def test_a_template_is_refused_with_a_clear_error():
    env = {**service_env(), "CHARON_TEMPLATE": "1"}
    r = subprocess.run([sys.executable, str(SERVICES / "svc.py")], env=env,
                       capture_output=True, timeout=PATIENCE, stdin=subprocess.DEVNULL,
                       close_fds=True)
    assert r.returncode != 0
    assert b"template = true" in r.stderr
    assert b"does not support" in r.stderr


def test_allowed_uids_refuse_other_peers(procs, tmp_short):
    sock = tmp_short / "svc.sock"
    # Neither our uid nor our gid is listed: refused with NOT_PERMITTED.
    other = str(max(os.getuid(), os.getgid()) + 4242)
    start_accept(procs, sock, CHARON_ALLOWED_UIDS=other, CHARON_ALLOWED_GIDS=other)
    good = frame.encode_request(frame.Request(KEY, b"me?"))
    r = raw_exchange(sock, good)
    assert (r.status, r.code) == (frame.ERROR, frame.NOT_PERMITTED), r
    sock2 = tmp_short / "svc2.sock"
    start_accept(procs, sock2, CHARON_ALLOWED_UIDS=f"{other},{os.getuid()}")
    assert raw_exchange(sock2, good) == frame.Response(frame.OK, body=b"me?")


def test_a_program_that_closes_its_stdout_or_stderr_never_prints_into_a_client(procs,
                                                                                tmp_short):
    # The next connection would take the lowest free fd, the one the
    # program closed, and its prints would go into that client's answer.
    sock = tmp_short / f"{KEY}.sock"
    start_accept(procs, sock)
    c = charon.Client(run_dir=str(tmp_short), timeout=PATIENCE)
    printing = {"log": "to stderr", "out": "to stdout"}
    for fd in ("2", "1", "0"):
        assert c.call(KEY, b"closing " + fd.encode(), context={"close-fd": fd}) == (
            b"closing " + fd.encode())
        for i in range(3):
            assert c.call(KEY, b"after %d" % i, context=printing) == b"after %d" % i


def test_a_timeout_out_of_the_variables_bounds_is_refused_at_start(tmp_short):
    # Service(read_timeout=math.inf) started, then failed on its first
    # connection (OverflowError turning the timeout into milliseconds).
    import math

    os.environ["CHARON_ACCEPT_SOCKET"] = str(tmp_short / f"{KEY}.sock")
    try:
        for name in ("read_timeout", "affinity_timeout", "write_timeout", "drain_timeout"):
            for bad in (math.inf, 0.0, -1.0, math.nan, 86_401.0):
                with pytest.raises(charon.ServiceError, match=name):
                    charon.Service(**{name: bad})
        assert not (tmp_short / f"{KEY}.sock").exists()
    finally:
        del os.environ["CHARON_ACCEPT_SOCKET"]


def test_a_wrong_answer_the_program_catches_still_answers_the_request(procs, tmp_short):
    # respond(None) and fault(100, None) marked the request answered
    # before failing: the instance then waited on the connection for a
    # second request and the client got READ_TIMEOUT after 10 s. They now
    # leave it unanswered (NO_ANSWER when the loop moves on); fault code 0
    # is answered ERROR INTERNAL, as the Rust library does.
    sock = tmp_short / f"{KEY}.sock"
    start_accept(procs, sock)
    c = charon.Client(run_dir=str(tmp_short), timeout=PATIENCE)
    for bad, code in (("body", frame.NO_ANSWER), ("code", frame.INTERNAL),
                      ("text", frame.NO_ANSWER)):
        with pytest.raises(charon.FrameworkError) as e:
            c.call(KEY, b"x", context={"bad": bad})
        assert e.value.code == code, (bad, e.value)
        assert c.call(KEY, b"after") == b"after"


def test_requests_pipelined_on_a_kept_connection_are_each_answered_in_order(procs, tmp_short):
    # As the Rust library does (PROTOCOL.md 8.4): bytes that came after a
    # keep-affinity request are the next request's, not garbage.
    sock = tmp_short / f"{KEY}.sock"
    start_accept(procs, sock)
    fields = frame.encode_request_fields(KEY, "pipeline", (), frame.DEFAULT_LIMITS)
    sent = (frame.request_frame(fields, 1, frame.KEEP_AFFINITY, b"one")
            + frame.request_frame(fields, 1, frame.KEEP_AFFINITY, b"two" * 30_000)
            + frame.request_frame(fields, 1, 0, b"three"))
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(PATIENCE)
    try:
        s.connect(str(sock))
        s.sendall(sent)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    bodies = []
    while got:
        size = 8 + int.from_bytes(got[4:8], "big")
        resp = frame.decode_frame(got[:size], frame.KIND_RESPONSE)
        assert resp.status == frame.OK, resp
        bodies.append(resp.body)
        got = got[size:]
    assert bodies == [b"one", b"two" * 30_000, b"three"]


def test_an_exception_in_a_forked_child_does_not_answer_the_parents_request(procs, tmp_short):
    # The child has a copy of the connection: its uncaught exception
    # answered NO_ANSWER there, and the client never saw the parent's
    # answer.
    sock = tmp_short / f"{KEY}.sock"
    p = start_accept(procs, sock)
    c = charon.Client(run_dir=str(tmp_short), timeout=PATIENCE)
    for i in range(2):
        assert c.call(KEY, b"parent %d" % i, context={"fork-raise": ""}) == b"parent %d" % i
    assert sock.exists() and p.poll() is None


def test_a_service_outside_the_main_thread_is_refused_before_it_binds(tmp_short):
    # signal.signal raised a bare ValueError after the accept-mode socket
    # was bound, and the socket file stayed behind.
    sock = tmp_short / f"{KEY}.sock"
    os.environ["CHARON_ACCEPT_SOCKET"] = str(sock)
    raised: list = []

    def start() -> None:
        try:
            charon.Service()
        except Exception as e:  # noqa: BLE001 (what it raised is the point)
            raised.append(e)

    try:
        t = threading.Thread(target=start)
        t.start()
        t.join()
    finally:
        del os.environ["CHARON_ACCEPT_SOCKET"]
    assert len(raised) == 1 and isinstance(raised[0], charon.ServiceError), raised
    assert "main thread" in str(raised[0])
    assert not sock.exists()
