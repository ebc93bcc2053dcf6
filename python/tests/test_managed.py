"""A Python service run by the real charond (managed mode): the Rust CLI
and client call it, charond counts, retries, fast-fails, recycles and
scales it exactly as it does a Rust service."""

import json
import os
import signal
import time

import pytest

import charon
from charon import frame
from conftest import service_exec, toml_env, wait_for

KEY = "py.svc.0.raw"


def conf(extra: str = "") -> str:
    return f"exec = {service_exec('svc.py')}\n{toml_env()}{extra}\n"


def test_rust_cli_calls_a_python_service_and_stats_count_it(daemon):
    d = daemon({KEY: conf()})
    r = d.charon("send", KEY, "from rust")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"from rust"
    r = d.charon("send", "-C", "fault=123:not today", KEY, "x")
    assert r.returncode != 0
    assert b"123" in r.stderr and b"not today" in r.stderr, r.stderr
    r = d.charon("ping", "-c", "20", KEY)
    assert r.returncode == 0, r.stderr + r.stdout
    c = charon.Client(run_dir=str(d.run), timeout=20)
    for i in range(5):
        assert c.call(KEY, b"py %d" % i) == b"py %d" % i
    # Records are batched for up to a second before they reach charond.
    wait_for("the requests and the fault counted",
             lambda: d.stats(KEY)["requests"] == 27 and d.stats(KEY)["faults"] == 1)
    s = d.stats(KEY)
    assert s["latency_us"]["max"] > 0, s
    assert s["latency_us"]["p50"] > 0, s
    assert s["retried"] == 0, s
    assert s["instances"]["running"] >= 1, s


def test_a_python_service_that_exits_mid_request_is_retried_once(daemon):
    d = daemon({KEY: conf()})
    c = charon.Client(run_dir=str(d.run), timeout=30)
    once = str(d.dir / "died")
    assert c.call(KEY, b"survived", context={"die-once": once}) == b"survived"
    assert os.path.exists(once)
    wait_for("the retry and the clean exit counted", lambda: (
        d.stats(KEY)["retried"] == 1 and d.stats(KEY)["exits"]["clean"] >= 1))
    with pytest.raises(charon.Disconnected):
        c.call(KEY, b"x", context={"exit": "0"})


def test_an_exception_mid_request_answers_no_answer_and_ends_only_its_instance(daemon):
    # Every knob at its default.
    d = daemon({KEY: conf()})
    c = charon.Client(run_dir=str(d.run), timeout=30)
    assert c.call(KEY, b"warm") == b"warm"
    with pytest.raises(charon.FrameworkError) as e:
        c.call(KEY, b"x", context={"raise": "a bug in one request"})
    assert e.value.code == frame.NO_ANSWER, e.value
    wait_for("the instance's exit counted", lambda: d.stats(KEY)["exits"]["nonzero"] == 1)
    s = d.stats(KEY)
    assert s["retried"] == 0, s
    assert "a bug in one request" in d.log()
    assert c.call(KEY, b"after") == b"after"
    assert d.stats(KEY)["exits"]["nonzero"] == 1, "one instance ended, not two"


def test_a_failing_python_service_fast_fails_with_the_reason(daemon):
    # A long backoff so that the service is still in backoff when the test
    # looks (the default first backoff is a second).
    d = daemon({KEY: conf('backoff-initial = "10m"\nexec-failure-backoff = "10m"')})
    c = charon.Client(run_dir=str(d.run), timeout=30)
    # Without retry: a retry would meet the backoff already (Unavailable).
    with pytest.raises(charon.Disconnected):
        c.call(KEY, b"x", context={"log": "the disk is gone", "exit": "3"}, retry=False)
    wait_for("the backoff", lambda: d.stats(KEY)["state"] == "backoff")
    t = time.monotonic()
    with pytest.raises(charon.Unavailable) as e:
        c.call(KEY, b"y")
    assert time.monotonic() - t < 10.0, "answered at once, not after the 30 s timeout"
    assert e.value.retry_after > 0
    assert "the disk is gone" in e.value.reason, e.value.reason
    assert d.stats(KEY)["fast_failed"] >= 1


def test_recycling_after_maximum_requests_is_a_hard_bound(daemon):
    # The knob under test, without jitter so that the bound is exact.
    d = daemon({KEY: conf("maximum-requests = 5\nmaximum-requests-jitter = 0")})
    c = charon.Client(run_dir=str(d.run), timeout=30)
    pids = [int(c.call(KEY, b"", context={"pid": ""})) for _ in range(16)]
    served = {p: pids.count(p) for p in pids}
    # Replacements start ahead, so requests spread over several instances,
    # but none serves more than its limit.
    assert max(served.values()) <= 5, pids
    assert len(served) >= 4, pids
    wait_for("the recycles counted", lambda: d.stats(KEY)["exits"]["max_requests"] >= 2)
    s = d.stats(KEY)
    assert s["exits"]["crashed"] == 0 and s["exits"]["nonzero"] == 0, s
    wait_for("every request counted", lambda: d.stats(KEY)["requests"] == 16)


def test_a_batch_of_64_across_4_python_instances_runs_in_parallel(daemon):
    # Four instances up front, so the timing measures parallelism rather
    # than Python's start-up.
    d = daemon({KEY: conf("minimum-processes = 4\nmaximum-processes = 4\n"
                          "prestart-processes = true")})
    wait_for("four idle instances", lambda: d.stats(KEY)["instances"]["idle"] == 4)
    c = charon.Client(run_dir=str(d.run), timeout=60)
    b = c.batch()
    ids = [b.add(KEY, b"", context={"sleep": "100", "span": ""}) for _ in range(64)]
    b.wait_all()
    spans = [tuple(int(x) for x in b.result(i).split()) for i in ids]
    assert len({pid for pid, _, _ in spans}) == 4, spans
    # Parallel, read from the requests' own times rather than a wall-clock
    # bound: at some moment all four instances were in a request.
    events = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans],
                    key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 4, spans
    wait_for("all 64 counted", lambda: d.stats(KEY)["requests"] == 64)


def test_stats_json_is_what_the_cli_prints(daemon):
    d = daemon({KEY: conf()})
    charon.call(KEY, b"x", run_dir=str(d.run))
    r = d.charon("stats", "--json")
    assert r.returncode == 0
    keys = [s["key"] for s in json.loads(r.stdout)["services"]]
    assert KEY in keys


def test_charond_stop_lets_python_instances_finish_what_is_queued(daemon):
    d = daemon({KEY: conf()})
    c = charon.Client(run_dir=str(d.run), timeout=60)
    assert c.call(KEY, b"warm") == b"warm"
    b = c.batch()
    ids = [b.add(KEY, b"q%d" % i, context={"log": "got %d" % i, "sleep": "300"})
           for i in range(4)]
    wait_for("a request in hand", lambda: "svc: got" in d.log())
    d.proc.send_signal(signal.SIGTERM)
    b.wait_all()
    assert [b.result(i) for i in ids] == [b"q%d" % i for i in range(4)]
    assert d.proc.wait(timeout=60) == 0


def test_a_killed_charond_loses_nothing_python_instances_hold(daemon):
    # One instance (the pool's shape, not a lifecycle knob): the requests
    # queue behind the one in hand, so the instance must serve its queue
    # after the manager is gone.
    d = daemon({KEY: conf("minimum-processes = 1\nmaximum-processes = 1\n"
                          "prestart-processes = true")})
    c = charon.Client(run_dir=str(d.run), timeout=60)
    assert c.call(KEY, b"warm") == b"warm"
    pids = d.instances()
    assert len(pids) == 1, pids
    b = c.batch()
    ids = [b.add(KEY, b"q%d" % i, context={"log": "got %d" % i, "sleep": "300"})
           for i in range(4)]
    wait_for("a request in hand", lambda: "svc: got" in d.log())
    d.proc.kill()  # SIGKILL: nothing of charond's own stop runs
    d.proc.wait(timeout=30)
    b.wait_all()
    assert [b.result(i) for i in ids] == [b"q%d" % i for i in range(4)]
    # The manager's death means drain: with its queue served, the instance
    # leaves by itself.
    wait_for("the instance to leave", lambda: not os.path.exists(f"/proc/{pids[0]}/cmdline")
             or open(f"/proc/{pids[0]}/cmdline", "rb").read() == b"")
