"""Real processes for the queue-proxy's end-to-end tests: a fake user app and a queue-proxy in front.

Every process started here is stopped (and killed if it must be) by the context managers, also when
the test fails; their stderr goes to a temp file that is shown when a start-up fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.conftest import PYTHON, ROOT, free_port
from tests.util import wait_until

USER_APP = str(ROOT / "tests" / "fakes" / "user_app.py")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.unlink(self.log)


def _spawn(args: list[str], env: dict[str, str] | None = None) -> Proc:
    fd, log = tempfile.mkstemp(prefix="qp-test-", suffix=".log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=fd, stderr=fd, stdin=subprocess.DEVNULL)
    os.close(fd)
    return Proc(proc, log)


@dataclass
class UserApp:
    port: int
    proc: Proc

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def user_app(port: int | None = None, *args: str, wait: bool = True) -> Iterator[UserApp]:
    port = port or free_port()
    p = _spawn([PYTHON, USER_APP, "--port", str(port), *args])
    try:
        if wait:
            wait_until(
                lambda: port_open(port) or p.proc.poll() is not None, timeout=30, what="user app listens"
            )
            assert p.proc.poll() is None, p.output()
        yield UserApp(port, p)
    finally:
        p.stop()


@dataclass
class QP:
    proc: Proc
    port: int
    admin_port: int
    metrics_port: int
    user_metrics_port: int
    env: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self) -> None:
        self.proc.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.proc.wait(timeout)


@contextlib.contextmanager
def queue_proxy(user_port: int, **env: str) -> Iterator[QP]:
    ports = [free_port() for _ in range(4)]
    full = {
        "QUEUE_BIND_ADDRESS": "127.0.0.1",
        "QUEUE_SERVING_PORT": str(ports[0]),
        "QUEUE_ADMIN_PORT": str(ports[1]),
        "QUEUE_METRICS_PORT": str(ports[2]),
        "USER_METRICS_PORT": str(ports[3]),
        "USER_PORT": str(user_port),
        "SERVING_NAMESPACE": "ns",
        "SERVING_SERVICE": "svc",
        "SERVING_CONFIGURATION": "cfg",
        "SERVING_REVISION": "svc-00001",
        "SERVING_POD": "svc-00001-pod",
        "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0.5",
        **env,
    }
    p = _spawn([PYTHON, "-m", "queueproxy"], full)
    try:
        wait_until(
            lambda: port_open(ports[0]) or p.proc.poll() is not None, timeout=30, what="queue-proxy up"
        )
        assert p.proc.poll() is None, p.output()
        yield QP(p, ports[0], ports[1], ports[2], ports[3], full)
    finally:
        p.stop()
