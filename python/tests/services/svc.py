"""A test service: echoes the body, steered by context entries.

``fault=CODE:TEXT`` answers a fault; ``close-fd=N`` closes fd N;
``out=TEXT`` writes a stdout line; ``exit=N`` exits with status N before
answering; ``raise=TEXT`` raises an exception with TEXT; ``fork-raise``
forks a child that raises an exception, waits for it, then answers; ``die-once=PATH``
exits 0 unanswered if PATH does not exist yet
(creating it); ``sleep=MS`` sleeps first; ``log=TEXT`` writes a stderr line;
``pid`` answers with the instance's pid; ``span`` with the pid and
the monotonic times the request started and ended; ``noanswer`` drops the request;
``bad=body|code|text`` answers with a wrong argument (None for the body, 0
for the fault code, None for its text) and catches what that raises.
"""

import os
import sys
import time

import charon

if os.environ.get("SVC_FAIL_AT_START"):
    print("svc: cannot start: " + os.environ["SVC_FAIL_AT_START"], file=sys.stderr, flush=True)
    sys.exit(3)

for request in charon.Service():
    ctx = dict(request.context)
    if "close-fd" in ctx:
        os.close(int(ctx["close-fd"]))
    if "log" in ctx:
        print("svc: " + ctx["log"].decode(), file=sys.stderr, flush=True)
    if "out" in ctx:
        print("svc: " + ctx["out"].decode(), flush=True)
    start = time.monotonic_ns()
    if "sleep" in ctx:
        time.sleep(int(ctx["sleep"]) / 1000)
    if "die-once" in ctx:
        path = ctx["die-once"].decode()
        if not os.path.exists(path):
            open(path, "w").close()
            sys.exit(0)
    if "exit" in ctx:
        sys.exit(int(ctx["exit"]))
    if "raise" in ctx:
        raise RuntimeError(ctx["raise"].decode())
    if "fork-raise" in ctx:
        child = os.fork()
        if child == 0:
            raise RuntimeError("svc: the forked child's own error")
        os.waitpid(child, 0)
    if "noanswer" in ctx:
        continue
    if "bad" in ctx:
        # A wrong answer that the program catches, then goes on.
        try:
            if ctx["bad"] == b"body":
                request.respond(None)  # type: ignore[arg-type]
            elif ctx["bad"] == b"code":
                request.fault(0, "zero")
            else:
                request.fault(100, None)  # type: ignore[arg-type]
        except (TypeError, charon.CharonError) as e:
            print(f"svc: caught {e!r}", file=sys.stderr, flush=True)
        continue
    if "fault" in ctx:
        code, _, text = ctx["fault"].decode().partition(":")
        request.fault(int(code), text)
    elif "span" in ctx:
        # CLOCK_MONOTONIC is one clock for every process on the host.
        request.respond(f"{os.getpid()} {start} {time.monotonic_ns()}")
    elif "pid" in ctx:
        request.respond(str(os.getpid()))
    else:
        request.respond(request.body)
