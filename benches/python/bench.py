"""Python benchmark: Charon's Python library against plain Python doing the
same exchange (connect, write one frame, read one frame, close on a Unix
socket), side by side in one run.

- **service**: the Python echo service (``echo_service.py``) run by
  charond, N instances prestarted, against a plain pre-forked Python
  ``accept()`` server (``plain_server.py``: N processes blocking in
  ``accept()`` on one socket, reading the 8-byte header and the payload,
  writing an OK frame back, closing), each a fresh ``python3`` given the
  listening socket, as charond starts its instances (``--plain-start
  fork`` forks them from the bench instead). Both are driven by the same
  plain client, so the difference is the service library.
- **client**: ``charon.Client.call`` against a plain Python socket client
  (a pre-encoded request frame, connect, ``sendall``, read the response,
  close), both calling the same plain server, so the difference is the
  client library.

Each cell (side x concurrency 1 and 4) runs A and B in turns, A B A B
(``--rounds`` pairs, S/rounds seconds a turn), clients being separate
processes, so that noise lands on both. It prints a
Markdown table and each target with PASS or MISS:

- the charond-run Python service at least 0.8x the plain server's
  throughput;
- the Python client's p50 within 1.25x of the plain client's.

Run from the repository's root after ``cargo build --release --bins``
(or set CHARON_BIN_DIR; target/debug works too, charond is not in the
data path)::

    python3 benches/python/bench.py [--seconds S] [--instances N] [--body B] [--plain-start fork]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

import charon  # noqa: E402
import plain_server  # noqa: E402
from charon import frame  # noqa: E402
from plain_server import HEADER, recv_exact  # noqa: E402

KEY = "bench.echo.0.raw"


def bin_dir() -> Path:
    env = os.environ.get("CHARON_BIN_DIR")
    if env:
        return Path(env)
    for d in ("release", "debug"):
        if (REPO / "target" / d / "charond").exists():
            return REPO / "target" / d
    sys.exit("build the binaries first: cargo build --release --bins")


# ------------------------------------------------------------ plain server

class PlainServer:
    """N processes accepting on one socket: fresh interpreters running
    plain_server.py (``start="exec"``, as charond starts instances), or
    forks of this process (``start="fork"``)."""

    def __init__(self, path: Path, n: int, start: str = "exec") -> None:
        self.path = path
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(128)
        self.procs: List[subprocess.Popen] = []  # type: ignore[type-arg]
        self.forked: List[int] = []
        for _ in range(n):
            if start == "exec":
                fd = listener.fileno()
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("plain_server.py")), str(fd)],
                    pass_fds=(fd,)))
                continue
            pid = os.fork()
            if pid == 0:
                try:
                    plain_server.serve(listener)
                finally:
                    os._exit(0)
            self.forked.append(pid)
        # Every process's pid, for measurements.
        self.pids = self.forked + [p.pid for p in self.procs]
        listener.close()

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for pid in self.forked:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)


# ------------------------------------------------------------ clients

def plain_call(path: str, request: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall(request)
        head = recv_exact(s, 8)
        return recv_exact(s, HEADER.unpack(head)[3])
    finally:
        s.close()


def run_clients(conc: int, seconds: float, make: Callable[[], Callable[[], object]]
                ) -> Tuple[int, List[int]]:
    """Runs ``conc`` client processes for ``seconds``; every round trip's
    latency in ns."""
    children = []
    start = time.monotonic() + 0.05
    for _ in range(conc):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 0
            try:
                one = make()
                lat = []
                while time.monotonic() < start:
                    pass
                end = start + seconds
                now = time.perf_counter_ns
                while time.monotonic() < end:
                    t = now()
                    one()
                    lat.append(now() - t)
                with os.fdopen(w, "w") as f:
                    json.dump(lat, f)
            except BaseException as e:  # report and leave
                print(f"client failed: {e!r}", file=sys.stderr)
                code = 1
            os._exit(code)
        os.close(w)
        children.append((pid, r))
    lats: List[int] = []
    for pid, r in children:
        with os.fdopen(r) as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if status != 0:
            sys.exit("a client process failed")
        lats += json.loads(data)
    return len(lats), lats


class Sample:
    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.lat: List[int] = []

    def add(self, count: int, seconds: float, lat: List[int]) -> None:
        self.count += count
        self.seconds += seconds
        self.lat += lat

    def rate(self) -> float:
        return self.count / self.seconds

    def pct(self, q: float) -> float:
        s = sorted(self.lat)
        return s[min(len(s) - 1, int(q * len(s)))] / 1000.0


# ------------------------------------------------------------ charond

class Charond:
    def __init__(self, bins: Path, n: int, tmp: Path) -> None:
        self.bins = bins
        self.conf = tmp / "conf"
        self.run = tmp / "run"
        self.conf.mkdir()
        exec_ = json.dumps([sys.executable, str(REPO / "benches/python/echo_service.py")])
        (self.conf / f"{KEY}.toml").write_text(
            f"exec = {exec_}\nenv = {{ PYTHONPATH = \"{REPO / 'python'}\" }}\n"
            f"minimum-processes = {n}\nmaximum-processes = {n}\nprestart-processes = true\n"
            "maximum-requests = 0\n")
        self.proc = subprocess.Popen(
            [str(bins / "charond"), "--config-dir", str(self.conf), "--run-dir", str(self.run)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.idle() == n:
                return
            time.sleep(0.05)
        self.stop()
        sys.exit("charond's Python instances did not come up")

    def idle(self) -> int:
        r = subprocess.run([str(self.bins / "charon"), "stats", "--json", KEY, "--run-dir",
                            str(self.run)], capture_output=True)
        if r.returncode:
            return -1
        return int(json.loads(r.stdout)["services"][0]["instances"]["idle"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------ the run

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per system per cell")
    ap.add_argument("--instances", type=int, default=2, help="server processes")
    ap.add_argument("--body", type=int, default=64, help="request body bytes")
    ap.add_argument("--rounds", type=int, default=4,
                    help="A B pairs per cell (each system gets S/rounds a turn)")
    ap.add_argument("--plain-start", choices=("exec", "fork"), default="exec",
                    help="start the plain server's processes as fresh interpreters, as "
                    "charond starts instances (exec), or as forks of this process (fork)")
    args = ap.parse_args()
    bins = bin_dir()
    tmp = Path(tempfile.mkdtemp(prefix="chpybench", dir="/tmp"))
    plain_dir = tmp / "plain"
    plain_dir.mkdir()
    body = os.urandom(args.body)
    request = frame.encode_request(frame.Request(KEY, body, "bench"))
    plain = PlainServer(plain_dir / f"{KEY}.sock", args.instances, args.plain_start)
    daemon = None
    rows = []
    try:
        daemon = Charond(bins, args.instances, tmp)
        charond_sock = str(daemon.run / f"{KEY}.sock")
        plain_sock = str(plain_dir / f"{KEY}.sock")
        assert plain_call(charond_sock, request)[5:] == body
        # The plain server echoes the whole request payload as the body.
        assert charon.Client(run_dir=str(plain_dir), name="bench").call(KEY, body) == request[8:]

        def plain_client(path: str):  # type: ignore[no-untyped-def]
            return lambda: (lambda: plain_call(path, request))

        def charon_client():  # type: ignore[no-untyped-def]
            def make():  # type: ignore[no-untyped-def]
                c = charon.Client(run_dir=str(plain_dir), name="bench")
                return lambda: c.call(KEY, body)
            return make

        cells = [
            ("service", "plain server", plain_client(plain_sock),
             "charond + Python service", plain_client(charond_sock)),
            ("client", "plain client", plain_client(plain_sock),
             "charon.Client.call", charon_client()),
        ]
        half = args.seconds / args.rounds
        for side, a_name, a_make, b_name, b_make in cells:
            for conc in (1, 4):
                a, b = Sample(), Sample()
                for _ in range(args.rounds):
                    n, lat = run_clients(conc, half, a_make)
                    a.add(n, half, lat)
                    n, lat = run_clients(conc, half, b_make)
                    b.add(n, half, lat)
                for name, s in ((a_name, a), (b_name, b)):
                    print(f"{side:7} c={conc} {name:25} {s.rate():9.0f} req/s  "
                          f"p50 {s.pct(0.5):7.1f} us  p99 {s.pct(0.99):7.1f} us", flush=True)
                rows.append((side, conc, a_name, a, b_name, b))
    finally:
        if daemon is not None:
            daemon.stop()
        plain.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| side | conc | system | req/s | p50 us | p99 us | ratio (req/s, p50) |")
    print("|---|---:|---|---:|---:|---:|---|")
    targets = []
    for side, conc, a_name, a, b_name, b in rows:
        print(f"| {side} | {conc} | {a_name} | {a.rate():.0f} | {a.pct(0.5):.1f} | "
              f"{a.pct(0.99):.1f} | |")
        rr, rp = b.rate() / a.rate(), b.pct(0.5) / a.pct(0.5)
        print(f"| {side} | {conc} | {b_name} | {b.rate():.0f} | {b.pct(0.5):.1f} | "
              f"{b.pct(0.99):.1f} | {rr:.2f} / {rp:.2f} |")
        if side == "service":
            targets.append((f"service c={conc}: throughput >= 0.8x the plain server", rr,
                            rr >= 0.8))
        else:
            targets.append((f"client c={conc}: p50 <= 1.25x the plain client", rp, rp <= 1.25))
    print()
    for what, ratio, ok in targets:
        print(f"{'PASS' if ok else 'MISS'}  {what}: {ratio:.2f}")


if __name__ == "__main__":
    main()
