"""The examples run as written: python/README.md's service and clients,
and examples/python's JSON service and client, under the real charond."""

import json
import re
import subprocess
import sys

from conftest import PATIENCE, PYTHON_DIR, REPO, bin_path, service_env, toml_env

README = (PYTHON_DIR / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def run_client(script, run_dir, *args):  # type: ignore[no-untyped-def]
    env = service_env()
    env["CHARON_RUN_DIR"] = str(run_dir)
    return subprocess.run([sys.executable, str(script), *args], env=env,
                          capture_output=True, timeout=PATIENCE)


def test_readme_service_and_clients_run_as_written(daemon, tmp_short):
    service, *clients = BLOCKS
    assert "charon.Service()" in service and len(clients) == 2
    svc = tmp_short / "echo_upper.py"
    svc.write_text(service)
    d = daemon({
        "app.upper.0.raw": f"exec = {json.dumps([sys.executable, str(svc)])}\n{toml_env()}",
        "system.echo.0.raw": f'exec = "{bin_path("charon-echo")}"\n',
    })
    outputs = []
    for i, code in enumerate(clients):
        script = tmp_short / f"client{i}.py"
        script.write_text(code)
        r = run_client(script, d.run)
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout.decode())
    assert outputs[0] == "b'hello'\nfault 100 an empty body has no upper case\n", outputs[0]
    assert outputs[1].splitlines() == [repr(b"request %d" % i) for i in range(10)]
    r = d.charon("send", "app.upper.0.raw", "shout")
    assert r.stdout == b"SHOUT", r.stderr


def test_json_example_service_and_client(daemon):
    examples = REPO / "examples" / "python"
    exec_ = json.dumps([sys.executable, str(examples / "json_service.py")])
    d = daemon({"stats..1.JSON": f"exec = {exec_}\n{toml_env()}"})
    r = run_client(examples / "json_client.py", d.run, "--run-dir", str(d.run), "1", "2", "6")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        "mean: 3.0",
        "sum: 9.0",
        "mean: 3.0",
        "median: fault 2: no function 'median'; try one of mean, sum",
    ]
    r = d.charon("send", "stats.sum.1.JSON", "[1, 2]")
    assert r.returncode != 0 and b"fault 4" in r.stderr, r.stderr
