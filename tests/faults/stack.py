"""A small real data plane for the fault tests: journaling user apps, their queue-proxies, one gateway.

``stack(tmp)`` starts, on 127.0.0.1 only, for each of two services ``web`` and ``other`` (namespace
``default``, domain ``example.com``) a pod made of ``tests/fakes/fault_app.py`` and a real
``python -m queueproxy`` in front of it, and one ``python -m activator --backend file`` (gateway +
activator) routing ``web.default.example.com`` and ``other.default.example.com`` to them. Everything
is killed on exit, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.activator.procs import Gateway, Procs, wait_for
from tests.conftest import PYTHON, ROOT, free_port

FAULT_APP = str(ROOT / "tests" / "fakes" / "fault_app.py")
DOMAIN = "example.com"


@dataclass
class FaultPod:
    revision: str
    app_port: int
    port: int  # the queue-proxy's serving port
    admin_port: int
    metrics_port: int
    user_metrics_port: int
    log: Path

    def journal(self, clear: bool = False) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.app_port}/journal" + ("?clear=1" if clear else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            data: list[dict[str, Any]] = json.loads(r.read())
        return data

    def prometheus(self) -> dict[str, float]:
        """The queue-proxy's autoscaler metrics (Prometheus text), name -> value."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("queue_") and " " in line:
                name = line.split("{", 1)[0].split(" ", 1)[0]
                out[name] = float(line.rsplit(" ", 1)[1])
        return out


def start_pod(
    procs: Procs,
    revision: str,
    cc: int = 0,
    extra: dict[str, str] | None = None,
    app_args: tuple[str, ...] = (),
) -> FaultPod:
    """A ready pod. Free ports are found by binding port 0 and letting go, so another test running
    at the same moment may take one first: a start whose process exits at once is tried again on
    other ports (up to three times)."""
    for attempt in range(3):
        try:
            return _start_pod(procs, revision, cc, extra, app_args)
        except _ExitedEarly:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class _ExitedEarly(AssertionError):
    pass


def _start_pod(
    procs: Procs, revision: str, cc: int, extra: dict[str, str] | None, app_args: tuple[str, ...]
) -> FaultPod:
    ports = [free_port() for _ in range(5)]
    log = procs.tmp / f"{revision}-requests.log"
    pod = FaultPod(revision, ports[0], ports[1], ports[2], ports[3], ports[4], log)
    app = procs.start(
        [PYTHON, FAULT_APP, "--port", str(pod.app_port), *app_args],
        env={"K_REVISION": revision, "FAULT_LOG": str(log)},
        name=f"{revision}-app",
    )
    service = revision.rsplit("-", 1)[0]
    env = {
        "USER_PORT": str(pod.app_port),
        "QUEUE_SERVING_PORT": str(pod.port),
        "QUEUE_ADMIN_PORT": str(pod.admin_port),
        "QUEUE_METRICS_PORT": str(pod.metrics_port),
        "USER_METRICS_PORT": str(pod.user_metrics_port),
        "CONTAINER_CONCURRENCY": str(cc),
        "SERVING_NAMESPACE": "default",
        "SERVING_REVISION": revision,
        "SERVING_CONFIGURATION": service,
        "SERVING_SERVICE": service,
        "SERVING_POD": f"{revision}-pod",
        "SERVING_POD_IP": "127.0.0.1",
        "QUEUE_BIND_ADDRESS": "127.0.0.1",
        "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0",
        **(extra or {}),
    }
    qp = procs.start([PYTHON, "-m", "queueproxy"], env=env, name=f"{revision}-qp")

    def ready() -> bool:
        r = httpx.get(f"http://127.0.0.1:{pod.port}/", headers={"K-Network-Probe": "queue"}, timeout=2)
        return r.status_code == 200

    try:
        wait_for(ready, 30, f"pod {revision} ready", qp)
    except AssertionError:
        exited = qp.poll() is not None or app.poll() is not None
        for p in (qp, app):
            procs.stop(p)
        if exited:
            raise _ExitedEarly(f"pod {revision}: a process exited during start-up (port taken?)") from None
        raise
    return pod


def routes(pods: list[FaultPod], ccs: dict[str, int] | None = None) -> dict[str, Any]:
    services, revisions = [], []
    for pod in pods:
        svc = pod.revision.rsplit("-", 1)[0]
        services.append(
            {
                "name": svc,
                "namespace": "default",
                "traffic": [{"revisionName": pod.revision, "percent": 100}],
            }
        )
        revisions.append(
            {
                "name": pod.revision,
                "namespace": "default",
                "containerConcurrency": (ccs or {}).get(pod.revision, 0),
                "endpoints": [{"pod": f"{pod.revision}-pod", "host": "127.0.0.1", "port": pod.port}],
            }
        )
    return {"domain": DOMAIN, "services": services, "revisions": revisions}


@dataclass
class Stack:
    procs: Procs
    web: FaultPod
    other: FaultPod
    gateway: Gateway

    def host(self, service: str) -> str:
        return f"{service}.default.{DOMAIN}"


@contextlib.contextmanager
def stack(tmp: Path) -> Iterator[Stack]:
    procs = Procs(tmp)
    try:
        web = start_pod(procs, "web-00001")
        other = start_pod(procs, "other-00001")
        gw = Gateway(procs, routes([web, other]))
        yield Stack(procs, web, other, gw)
    except BaseException:
        for f in sorted(tmp.glob("*.log")):
            print(f"--- {f.name} ---\n{f.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        procs.close()
