"""The Python client against the real charond and the Rust charon-echo:
answers, faults, retry once, affinity, no-wait, not found, wildcard lookup
and batches under one clock."""

import os
import socket
import threading
import time

import pytest

import charon
from charon import frame
from conftest import PATIENCE, bin_path, service_exec, toml_env, wait_for

KEY = "system.echo.0.raw"


def echo_conf(extra: str = "") -> str:
    return f'exec = "{bin_path("charon-echo")}"\n{extra}\n'


def test_call_echo_fault_and_context(daemon):
    d = daemon({KEY: echo_conf()})
    rd = str(d.run)
    assert charon.call(KEY, b"hello", run_dir=rd) == b"hello"
    assert charon.call(KEY, b"", run_dir=rd) == b""
    big = os.urandom(3 * 65536 + 7)
    assert charon.call(KEY, big, run_dir=rd) == big
    with pytest.raises(charon.ServiceFault) as e:
        charon.call(KEY, b"x", context={"echo.fault": "107:on purpose"}, run_dir=rd)
    assert (e.value.code, e.value.text) == (107, "on purpose")
    with pytest.raises(charon.InvalidRequest):
        charon.call(KEY, b"x", context={"charon.mine": "no"}, run_dir=rd)


def test_not_found_stale_and_bad_key(daemon, tmp_short):
    with pytest.raises(charon.NotFound):
        charon.call("app.none.0.raw", b"", run_dir=str(tmp_short))
    # A socket file nobody listens on is not found, and says so.
    path = tmp_short / "app.stale.0.raw.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    with pytest.raises(charon.NotFound) as e:
        charon.call("app.stale.0.raw", b"", run_dir=str(tmp_short))
    assert e.value.stale == str(path)
    with pytest.raises(charon.InvalidKey):
        charon.call("app..0.raw", b"", run_dir=str(tmp_short))
    with pytest.raises(charon.InvalidKey):
        charon.call("app.f.01.raw", b"", run_dir=str(tmp_short))


def test_wildcard_lookup_and_exact_key_in_frame(daemon):
    d = daemon({"mail..1.raw": echo_conf()})
    # charon-echo answers the key it was asked with under echo.key.
    assert charon.call("mail.send.1.raw", b"w", run_dir=str(d.run)) == b"w"
    assert charon.resolve(str(d.run), "mail.send.1.raw") == str(d.run / "mail..1.raw.sock")


def test_silent_close_is_retried_once_as_attempt_2(daemon):
    d = daemon({KEY: echo_conf()})
    c = charon.Client(run_dir=str(d.run), timeout=20)
    # charon-echo exits 0 mid-request the first time only: the retry
    # reaches a fresh instance.
    once = str(d.dir / "died")
    assert c.call(KEY, b"again", context={"echo.die-once": once}) == b"again"
    assert os.path.exists(once)
    with pytest.raises(charon.Disconnected):
        c.call(KEY, b"x", context={"echo.exit": "0"}, retry=False)
    wait_for("the retry counted", lambda: d.stats(KEY)["retried"] >= 1)


def test_batch_wait_modes_under_one_clock(daemon):
    d = daemon({KEY: echo_conf("maximum-processes = 4")})
    c = charon.Client(run_dir=str(d.run), timeout=20)
    b = c.batch()
    ids = [b.add(KEY, f"b{i}".encode()) for i in range(16)]
    b.add("app.none.0.raw", b"")
    b.wait_all()
    assert [b.result(i) for i in ids] == [f"b{i}".encode() for i in range(16)]
    with pytest.raises(charon.NotFound):
        b.result(16)
    b = c.batch()
    first = b.add(KEY, b"one")
    b.add(KEY, b"two")
    assert b.wait_one(first) == b"one"
    seen = set()
    while (i := b.wait_any()) is not None:
        seen.add(i)
    assert seen == {0, 1}
    # One clock: a slow request times out when the batch's clock runs out.
    b = c.batch(timeout=0.5)
    slow = b.add(KEY, b"s", context={"echo.sleep-ms": "5000"})
    t = time.monotonic()
    b.wait_all()
    assert time.monotonic() - t < 4
    with pytest.raises(charon.Timeout):
        b.result(slow)


def test_no_wait_and_wait_sent(daemon):
    d = daemon({KEY: echo_conf()})
    c = charon.Client(run_dir=str(d.run), timeout=20)
    assert c.call(KEY, b"fire", no_wait=True) == b""
    b = c.batch()
    i = b.add(KEY, b"x" * 100_000, no_wait=True)
    b.wait_sent()
    assert b.done(i) and b.result(i) == b""
    wait_for("both counted", lambda: d.stats(KEY)["requests"] >= 2)


def test_affinity_conversation_stays_on_one_instance(daemon):
    # Python on both sides: the service keeps the connection too.
    key = "py.svc.0.raw"
    d = daemon({key: f"exec = {service_exec('svc.py')}\n{toml_env()}"
                     "minimum-processes = 2\nprestart-processes = true\n"})
    c = charon.Client(run_dir=str(d.run), timeout=20)
    with pytest.raises(charon.NoAffinity):
        c.call(key, b"x", need_affinity=True)
    pid = c.call(key, b"", context={"pid": ""}, keep_affinity=True)
    assert c.has_affinity(key)
    for _ in range(5):
        assert c.call(key, b"", context={"pid": ""}, keep_affinity=True,
                      need_affinity=True) == pid
    assert c.call(key, b"", context={"pid": ""}, need_affinity=True) == pid
    assert not c.has_affinity(key)
    c.close()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_kept_conversation_waits_without_spinning_while_others_queue(daemon):
    # One instance (the knob this test is about: nobody else may take the
    # queued connection), so the connection queues while the instance
    # waits on a conversation kept for affinity.
    key = "py.svc.0.raw"
    d = daemon({key: f"exec = {service_exec('svc.py')}\n{toml_env()}"
                     "minimum-processes = 1\nmaximum-processes = 1\n"
                     "prestart-processes = true\n"})
    c = charon.Client(run_dir=str(d.run), timeout=20)
    pid = int(c.call(key, b"", context={"pid": ""}, keep_affinity=True))
    queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued.connect(str(d.run / f"{key}.sock"))
    queued.sendall(frame.encode_request(frame.Request(key, b"later", "test")))
    before = _cpu_seconds(pid)
    time.sleep(1.0)  # a span to measure CPU over, not a wait for a condition
    spent = _cpu_seconds(pid) - before
    assert spent < 0.2, f"the instance spent {spent:.2f} s of CPU in 1 s of waiting"
    c.close()  # the conversation ends: the queued request is served
    queued.settimeout(20)
    head = queued.recv(8, socket.MSG_WAITALL)
    assert frame.check_header(head, frame.KIND_RESPONSE, frame.Limits()) > 0
    queued.close()


def _vanishing_server(path: str) -> threading.Thread:
    """Accepts one connection and reads its request, then closes the
    listening socket (the path stays, with nobody listening on it) and the
    connection, without answering."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)

    def serve() -> None:
        conn, _ = listener.accept()
        head = conn.recv(8, socket.MSG_WAITALL)
        n = int.from_bytes(head[4:8], "big")
        conn.recv(n, socket.MSG_WAITALL)
        listener.close()
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    return t


@pytest.mark.parametrize("batch", [False, True])
def test_a_retry_that_finds_nobody_listening_is_disconnected_not_not_found(tmp_short, batch):
    # The request was written to a service that existed: Disconnected.
    key = "test.gone.0.raw"
    t = _vanishing_server(str(tmp_short / f"{key}.sock"))
    c = charon.Client(run_dir=str(tmp_short), timeout=20)
    try:
        if batch:
            b = c.batch()
            i = b.add(key, b"x")
            b.wait_all()
            with pytest.raises(charon.Disconnected):
                b.result(i)
        else:
            with pytest.raises(charon.Disconnected):
                c.call(key, b"x")
    finally:
        t.join(timeout=20)


def test_a_batch_past_the_fd_limit_fails_those_requests_and_serves_the_rest(daemon):
    # A batch holds one connection per request in flight: past the open
    # files limit, the requests that get no socket fail with a
    # CharonError at once (as the Rust client's Io error), and the rest
    # are answered without waiting for the batch's timeout.
    import resource

    d = daemon({KEY: echo_conf()})
    c = charon.Client(run_dir=str(d.run), timeout=60)
    assert c.call(KEY, b"warm") == b"warm"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = [int(f) for f in os.listdir("/proc/self/fd")]
    limit = max(max(fds) + 1, len(fds) + 40)
    room = limit - len(fds)  # the fds free below the limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        b = c.batch()
        ids = [b.add(KEY, b"r%d" % i) for i in range(3 * room)]
        start = time.monotonic()
        b.wait_all()
        took = time.monotonic() - start
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    served = failed = 0
    for i in ids:
        try:
            assert b.result(i) == b"r%d" % i
            served += 1
        except charon.Overloaded:
            pass  # a loaded machine's instances may fall behind the backlog
        except charon.CharonError as e:
            assert "create a socket" in str(e), e
            failed += 1
    assert served >= 1 and failed >= 1, (served, failed, room)
    assert took < 30, f"wait_all waited {took:.1f} s for requests that never started"


def test_threads_may_share_a_client_for_calls_without_affinity(daemon):
    # A web application's one client, used by its worker threads.
    d = daemon({KEY: echo_conf()})
    c = charon.Client(run_dir=str(d.run), timeout=PATIENCE)
    assert c.call(KEY, b"warm") == b"warm"
    failures: list = []

    def worker(n: int) -> None:
        for i in range(40):
            body = b"%d-%d" % (n, i)
            try:
                # A short sleep keeps the four threads' calls overlapping.
                got = c.call(KEY, body, context={"echo.sleep-ms": "2"})
                if got != body:
                    failures.append((body, got))
            except Exception as e:  # noqa: BLE001 (every failure is counted)
                failures.append((body, repr(e)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]


def test_a_timeout_past_what_poll_takes_waits_and_a_non_positive_one_is_refused(daemon):
    # math.inf, or a month, for "no limit": answered (poll took the
    # milliseconds as an int and raised OverflowError, after the request
    # was written). Zero, negative and NaN are refused before anything is
    # sent, in a call as in a batch or a client.
    import math

    d = daemon({KEY: echo_conf()})
    c = charon.Client(run_dir=str(d.run), timeout=PATIENCE)
    for t in (math.inf, 30 * 86400.0):
        assert c.call(KEY, b"call", timeout=t) == b"call"
        b = c.batch(timeout=t)
        i = b.add(KEY, b"batch")
        b.wait_all()
        assert b.result(i) == b"batch"
        assert charon.Client(run_dir=str(d.run), timeout=t).call(KEY, b"client") == b"client"
    for t in (0, -1.0, math.nan):
        with pytest.raises(charon.InvalidRequest):
            c.call(KEY, b"x", timeout=t)
        with pytest.raises(charon.InvalidRequest):
            c.batch(timeout=t)
        with pytest.raises(charon.InvalidRequest):
            c.batch().set_timeout(t)


def test_a_body_or_context_value_is_bytes_like_or_str_and_nothing_else(daemon):
    # bytes(5) is five zero bytes: an int body or context value was sent
    # as that (charon.call(key, 10**9) allocated a gigabyte); a str body
    # raised "string argument without an encoding". A str is now UTF-8,
    # like a service's respond(str), and another type a TypeError.
    d = daemon({KEY: echo_conf()})
    c = charon.Client(run_dir=str(d.run), timeout=PATIENCE)
    assert c.call(KEY, "héllo") == "héllo".encode()
    assert c.call(KEY, bytearray(b"ba")) == b"ba"
    assert c.call(KEY, memoryview(b"mv")) == b"mv"
    b = c.batch()
    i = b.add(KEY, "in a batch")
    b.wait_all()
    assert b.result(i) == b"in a batch"
    for bad in (5, None, 1.5, [1, 2]):
        with pytest.raises(TypeError):
            c.call(KEY, bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c.batch().add(KEY, bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c.call(KEY, b"x", context={"echo.log": bad})  # type: ignore[dict-item]


def test_a_forked_child_does_not_share_the_parents_kept_conversation(daemon):
    # charon.call's per-thread client keeps the connection; a child forked
    # afterwards starts with no client of its own.
    key = "py.svc.0.raw"
    d = daemon({key: f"exec = {service_exec('svc.py')}\n{toml_env()}"
                     "minimum-processes = 2\nprestart-processes = true\n"})
    rd = str(d.run)
    pid = charon.call(key, b"", context={"pid": ""}, keep_affinity=True, run_dir=rd)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(r)
            try:
                charon.call(key, b"", need_affinity=True, run_dir=rd)
            except charon.NoAffinity:
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(r)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child used the parent's connection"
    assert charon.call(key, b"", context={"pid": ""}, need_affinity=True, run_dir=rd) == pid
