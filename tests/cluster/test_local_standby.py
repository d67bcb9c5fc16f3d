"""Queue-proxies started ahead of their pods (cluster.local_standby) in the real local runtime."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from cluster.local import LocalRuntime
from serving.spec import Revision, RevisionHistory, load_services
from tests.cluster.test_local import FAST, _eq, alive, until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def hello() -> Revision:
    return RevisionHistory().admit(load_services(ROOT / "examples/hello/service.yaml")[0])[0]


@pytest.fixture
async def runtime() -> AsyncIterator[LocalRuntime]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rt = LocalRuntime(FAST)
    try:
        yield rt
    finally:
        await rt.close(timeout=20)
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and alive(p.pid)]
        for p in left:
            p.kill()
        assert not left, f"processes left behind (a standby included): {left}"


async def test_a_pod_gets_the_standby_queue_proxy_and_the_pool_refills(runtime: LocalRuntime) -> None:
    revision = hello()
    runtime.add_revision(revision)
    pool = runtime.standby
    assert pool is not None
    await until(lambda: pool.idle == 1, what="one standby started")
    [standby_pid] = pool.idle_pids()

    key = revision.key
    await runtime.scale(key, 1)
    await until(lambda: _eq(runtime.ready_pods(key), 1), what="ready")
    [pod] = runtime.pods(key)
    assert pod.queue.pid == standby_pid  # no new queue-proxy process was started for the pod
    assert pod.queue.name == f"{pod.name}/queue-proxy"
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{pod.endpoint.address}/")
    assert r.status_code == 200 and r.text.startswith("Hello zeroscale!")
    assert any(f"serving on 127.0.0.1:{pod.ports.serving}" in line for line in pod.queue.last_lines())
    # the pool starts a replacement once the pod is ready
    await until(lambda: pool.idle == 1 and pool.idle_pids() != [standby_pid], what="a new standby")
    assert (pool.taken, pool.missed) == (1, 0)

    await runtime.scale(key, 0)
    await until(lambda: runtime.endpoints(key) == (), what="pod gone")
    assert not alive(standby_pid)


async def test_a_dead_standby_is_skipped_and_the_pod_starts_its_own(runtime: LocalRuntime) -> None:
    revision = hello()
    runtime.add_revision(revision)
    pool = runtime.standby
    assert pool is not None
    await until(lambda: pool.idle == 1, what="one standby started")
    [standby_pid] = pool.idle_pids()
    os.kill(standby_pid, signal.SIGKILL)
    await until(lambda: pool.idle == 0, what="the standby seen dead")

    key = revision.key
    await runtime.scale(key, 1)
    await until(lambda: _eq(runtime.ready_pods(key), 1), what="ready all the same")
    [pod] = runtime.pods(key)
    assert pod.queue.pid != standby_pid
    assert (pool.taken, pool.missed) == (0, 1)


async def test_no_pool_when_turned_off() -> None:
    settings = dataclasses.replace(FAST, standby_queue_proxies=0)
    async with LocalRuntime(settings) as rt:
        revision = hello()
        rt.add_revision(revision)
        assert rt.standby is None
        key = revision.key
        await rt.scale(key, 1)
        await until(lambda: _eq(rt.ready_pods(key), 1), what="ready without a standby")
