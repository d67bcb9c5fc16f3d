"""`python -m queueproxy --standby`: started ahead of its pod, configured by one JSON line on stdin."""

from __future__ import annotations

import json
import os
import subprocess

import httpx

from tests.conftest import PYTHON, ROOT, free_port
from tests.queueproxy.procs import port_open, user_app
from tests.util import wait_until


def standby() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "queueproxy", "--standby"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_standby_becomes_the_queue_proxy_its_environment_line_describes() -> None:
    with user_app() as app:
        serving = free_port()
        env = {
            **os.environ,
            "QUEUE_BIND_ADDRESS": "127.0.0.1",
            "QUEUE_SERVING_PORT": str(serving),
            "QUEUE_ADMIN_PORT": str(free_port()),
            "QUEUE_METRICS_PORT": str(free_port()),
            "USER_METRICS_PORT": str(free_port()),
            "USER_PORT": str(app.port),
            "SERVING_REVISION": "standby-00001",
            "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0.2",
        }
        p = standby()
        try:
            assert not port_open(serving)  # nothing listens before it is told where
            assert p.stdin is not None
            p.stdin.write(json.dumps(env).encode() + b"\n")
            p.stdin.close()
            wait_until(lambda: port_open(serving) or p.poll() is not None, timeout=30, what="serving")
            assert p.poll() is None
            r = httpx.get(f"http://127.0.0.1:{serving}/headers", timeout=10)
            assert r.status_code == 200 and r.json()["path"] == "/headers"
            r = httpx.get(f"http://127.0.0.1:{serving}/", headers={"K-Network-Probe": "queue"}, timeout=10)
            assert (r.status_code, r.text) == (200, "queue")
            p.terminate()
            assert p.wait(30) == 0
            assert p.stdout is not None
            assert b"serving on 127.0.0.1:%d" % serving in p.stdout.read()
        finally:
            p.kill()
            p.wait(10)


def test_a_standby_that_is_not_needed_exits_quietly_at_end_of_input() -> None:
    p = standby()
    out, _ = p.communicate(b"", timeout=60)
    assert (p.returncode, out) == (0, b"")


def test_a_bad_environment_line_stops_it_with_a_message() -> None:
    for line, says in (
        (b"PORT=8080\n", b"is not JSON"),
        (b'["QUEUE_SERVING_PORT", "8013"]\n', b"JSON object of strings"),
        (b'{"QUEUE_SERVING_PORT": 8013}\n', b"JSON object of strings"),
    ):
        p = standby()
        out, _ = p.communicate(line, timeout=60)
        assert p.returncode == 2, out
        assert out.startswith(b"queue-proxy --standby: the environment line ") and says in out, out


def test_a_bad_configuration_in_the_line_is_reported_as_for_a_normal_start() -> None:
    p = standby()
    env = {**os.environ, "QUEUE_SERVING_PORT": "eighty"}
    out, _ = p.communicate(json.dumps(env).encode() + b"\n", timeout=60)
    assert p.returncode == 2
    assert b"QUEUE_SERVING_PORT" in out


def test_unknown_arguments_are_refused() -> None:
    r = subprocess.run([PYTHON, "-m", "queueproxy", "--bogus"], cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == 2 and b"usage: queue-proxy [--standby]" in r.stderr
