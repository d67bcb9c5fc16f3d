"""Real processes for the gateway/activator end-to-end tests: the gateway, pods (queue-proxy + fake app).

Every process is started with its own ports on 127.0.0.1 and stopped (terminate, then kill) by
:class:`Procs` even when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import PYTHON, ROOT, free_port

USER_APP = str(ROOT / "tests" / "fakes" / "user_app.py")


def wait_for(
    cond: Any, timeout: float = 30.0, what: str = "condition", proc: subprocess.Popen[bytes] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = cond()
        except (httpx.HTTPError, OSError):
            got = None
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], env: dict[str, str] | None = None, name: str = "proc"
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "wb")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        p = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(p)
        return p

    def stop(
        self, p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0
    ) -> int | None:
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


class Pod:
    """A queue-proxy in front of the fake user app: what the activator probes and forwards to."""

    def __init__(self, procs: Procs, name: str, cc: int = 0, namespace: str = "default") -> None:
        self.name = name
        self.user_port = free_port()
        self.port = free_port()
        self.admin_port = free_port()
        self.app = procs.start([PYTHON, USER_APP, "--port", str(self.user_port)], name=f"{name}-app")
        env = {
            "USER_PORT": str(self.user_port),
            "QUEUE_SERVING_PORT": str(self.port),
            "QUEUE_ADMIN_PORT": str(self.admin_port),
            "QUEUE_METRICS_PORT": str(free_port()),
            "USER_METRICS_PORT": str(free_port()),
            "CONTAINER_CONCURRENCY": str(cc),
            "SERVING_NAMESPACE": namespace,
            "SERVING_REVISION": name,
            "SERVING_CONFIGURATION": name.rsplit("-", 1)[0],
            "SERVING_SERVICE": name.rsplit("-", 1)[0],
            "SERVING_POD": f"{name}-pod",
            "SERVING_POD_IP": "127.0.0.1",
            "QUEUE_BIND_ADDRESS": "127.0.0.1",
            "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0",
        }
        self.qp = procs.start([PYTHON, "-m", "queueproxy"], env=env, name=f"{name}-qp")

    def endpoint(self) -> dict[str, Any]:
        return {"pod": f"{self.name}-pod", "host": "127.0.0.1", "port": self.port}

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ok() -> bool:
            r = httpx.get(
                f"http://127.0.0.1:{self.port}/healthz", headers={"K-Network-Probe": "queue"}, timeout=2
            )
            return r.status_code == 200 and r.text == "queue"

        wait_for(ok, timeout, f"pod {self.name} ready", self.qp)

    def pid(self) -> int:
        return int(httpx.get(f"http://127.0.0.1:{self.user_port}/pid", timeout=5).text)


class Gateway:
    """``python -m activator --backend file``; the routes file is rewritten atomically to change things."""

    def __init__(self, procs: Procs, doc: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.procs = procs
        self.config = procs.tmp / f"routes-{len(procs.procs)}.yaml"
        self.write(doc)
        self.port = free_port()
        self.admin_port = free_port()
        self.proc = procs.start(
            [
                PYTHON,
                "-m",
                "activator",
                "--backend",
                "file",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin_port),
            ],
            env=env,
            name="gateway",
        )
        wait_for(self.healthy, 30, "gateway healthy", self.proc)

    def healthy(self) -> bool:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=2).status_code == 200

    def write(self, doc: dict[str, Any]) -> None:
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        os.replace(tmp, self.config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total
