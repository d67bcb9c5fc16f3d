"""The SIGKILL fault through a real ``zeroscale up`` (autoscaler, reconciler and all), not a composition.

Two pods kept by ``min-scale``; one app process is killed mid-load. Every request that was inside it
fails with a 502 and nothing else does but the few sent to its queue-proxy before the pod left
traffic; no request hangs; ``up`` replaces the pod and reports two ready pods again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_up import UpProcess, up_process
from tests.faults.load import Load
from tests.faults.plane import FAULT_APP

pytestmark = pytest.mark.e2e


def service(log_dir: Path) -> str:
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: web
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "2"
    spec:
      containers:
        - command: [python3, {FAULT_APP}]
          env:
            - name: FAULT_LOG_DIR
              value: "{log_dir}"
"""


def _apps(up_pid: int) -> list[psutil.Process]:
    """The live fault_app processes among ``up``'s descendants."""
    out = []
    for p in psutil.Process(up_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone, or a zombie not reaped yet
            if p.status() != psutil.STATUS_ZOMBIE and any(str(FAULT_APP) in a for a in p.cmdline()):
                out.append(p)
    return out


@contextlib.asynccontextmanager
async def two_pods(tmp_path: Path) -> AsyncIterator[tuple[UpProcess, Path, Callable[[], Awaitable[bool]]]]:
    """``zeroscale up`` with the two-pod Service, once both pods are ready: up, the apps' log
    directory, and the "two ready pods" condition."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "web.yaml").write_text(service(logs))
    with up_process("-f", tmp_path / "web.yaml") as up:
        await up.wait_up()

        async def two_ready() -> bool:
            return bool((await up.arevision("web"))["ready_pods"] == 2)

        await up.poll(two_ready, timeout=40, what="two ready pods")
        yield up, logs, two_ready


async def test_sigkill_of_an_app_under_zeroscale_up(tmp_path: Path) -> None:
    async with two_pods(tmp_path) as (up, logs, two_ready):
        load = Load(up.port, "web.default.example.com", lambda i: f"/sleep?ms=100&id={i}", workers=16)
        load.start()
        try:
            await load.more(200)

            async def both_serving() -> bool:
                # Both pods are ready for the runtime a moment before the router sends to both:
                # the victim must be one that serves, or nothing is inside it to fail.
                apps = _apps(up.proc.pid)
                logs_of = [logs / f"web-00001-{p.pid}.log" for p in apps]
                return len(apps) == 2 and all(f.exists() and f.stat().st_size > 0 for f in logs_of)

            await up.poll(both_serving, timeout=40, what="both apps serving")
            await load.more(50)
            victim = _apps(up.proc.pid)[0]
            os.kill(victim.pid, signal.SIGKILL)

            async def replaced() -> bool:
                pids = {p.pid for p in _apps(up.proc.pid)}
                return victim.pid not in pids and len(pids) == 2 and await two_ready()

            await up.poll(replaced, timeout=40, what="the pod is replaced")
            await load.more(100)
        finally:
            await load.stop()
    started: set[int] = set()
    ended: set[int] = set()
    for line in (logs / f"web-00001-{victim.pid}.log").read_text().splitlines():
        kind, rid = line.split()
        (started if kind == "S" else ended).add(int(rid))
    inside = started - ended
    failed = {r.id for r in load.failed}
    assert load.sent == len(load.results)
    assert set(load.statuses) <= {200, 502}, load.statuses  # nothing hung, nothing else failed
    assert inside and inside <= failed, (sorted(inside), sorted(failed))
    assert len(failed - inside) <= 20, (len(failed - inside), load.statuses)
    print(f"zeroscale up, SIGKILL: {len(inside)} inside, {len(failed)} failed; {load.summary()}")


async def test_kill_9_of_zeroscale_up_leaves_no_pod_process(tmp_path: Path) -> None:
    """``up`` killed outright (kill -9, the OOM killer) cannot stop its pods: the kernel's parent-death
    signal stops the apps, the zygote stops the queue-proxies it forked. Nothing serves on for nobody."""
    async with two_pods(tmp_path) as (up, _, _):
        left = up.track()  # apps, the zygote and the queue-proxies it forked
        names = sorted(" ".join(p.cmdline()[-2:]) for p in left)
        assert len(_apps(up.proc.pid)) == 2 and len(left) >= 5, names
        up.proc.kill()
        up.proc.wait(10)

        def running() -> list[psutil.Process]:
            out = []
            for p in left:
                with contextlib.suppress(psutil.Error):
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        out.append(p)
            return out

        deadline = asyncio.get_running_loop().time() + 40
        while running() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        assert running() == [], [(p.pid, p.name()) for p in running()]
