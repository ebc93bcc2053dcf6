"""Test harness: the built binaries, unique temp dirs, a real charond in
a temp dir, child processes always killed and reaped, and polling for a
condition until a deadline (never sleeping and hoping)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
# Test this tree's package, even if an older copy is installed.
sys.path.insert(0, str(PYTHON_DIR))
REPO = PYTHON_DIR.parent
SERVICES = Path(__file__).resolve().parent / "services"
PATIENCE = 60.0


def bin_path(name: str) -> Path:
    """A binary of the workspace: $CHARON_BIN_DIR, else target/debug."""
    base = Path(os.environ.get("CHARON_BIN_DIR", REPO / "target" / "debug"))
    p = base / name
    if not p.exists():
        pytest.fail(f"{p} is missing: build the workspace first (cargo build --bins --examples)")
    return p


def wait_for(what: str, cond: Callable[[], bool], timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def service_exec(script: str, *args: str) -> str:
    """A config's exec line running a test service with this Python."""
    return json.dumps([sys.executable, str(SERVICES / script), *args])


def service_env() -> Dict[str, str]:
    """The environment for a Python service run by hand: this package on
    the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PYTHON_DIR)
    for k in list(env):
        if k.startswith("CHARON_"):
            del env[k]
    return env


def toml_env() -> str:
    return f'env = {{ PYTHONPATH = "{PYTHON_DIR}" }}\n'


def instances_of(run: Path) -> List[int]:
    """Pids of processes whose environment names this run dir."""
    needle = f"CHARON_RUN_DIR={run}".encode()
    pids = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(e))
        except OSError:
            pass
    return sorted(pids)


class Daemon:
    """A charond over a temp config dir and run dir."""

    def __init__(self, services: Dict[str, str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chpy", dir="/tmp"))
        self.conf = self.dir / "conf"
        self.run = self.dir / "run"
        self.conf.mkdir()
        for key, text in services.items():
            (self.conf / f"{key}.toml").write_text(text)
        self._log: List[str] = []
        self.proc = subprocess.Popen(
            [str(bin_path("charond")), "--config-dir", str(self.conf), "--run-dir", str(self.run)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        try:
            wait_for("charond's control socket", self._control_answers)
            for key in services:
                assert (self.run / f"{key}.sock").exists(), f"{key} is served"
        except BaseException:
            self.stop()
            raise

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.append(line.decode(errors="replace"))

    def log(self) -> str:
        return "".join(self._log)

    def _control_answers(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect(str(self.run / "charond.sock"))
            s.sendall(b'{"cmd":"version"}\n')
            return b'"ok":true' in s.recv(4096)
        except OSError:
            return False
        finally:
            s.close()

    def charon(self, *args: str, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_path("charon")), *args, "--run-dir", str(self.run)],
            input=input if input is not None else b"", capture_output=True, timeout=PATIENCE,
        )

    def stats(self, key: str) -> dict:
        r = self.charon("stats", "--json", key)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["services"][0]

    def instances(self) -> List[int]:
        return instances_of(self.run)

    def stop(self) -> None:
        killed = self.instances()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = self.instances()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed.append(pid)
            time.sleep(0.01)
        while any(os.path.exists(f"/proc/{p}") for p in killed) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._reader.join(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon():
    """Starts charond with the given services; always stopped and reaped."""
    started: List[Daemon] = []

    def start(services: Dict[str, str]) -> Daemon:
        d = Daemon(services)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def tmp_short():
    """A short temp dir (socket paths are limited to 107 bytes), removed."""
    d = Path(tempfile.mkdtemp(prefix="chpy", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Procs:
    """Child processes started by a test: killed and reaped at its end."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def start(self, args: List[str], **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    f.close()


@pytest.fixture
def procs():
    ps = Procs()
    yield ps
    ps.close()
