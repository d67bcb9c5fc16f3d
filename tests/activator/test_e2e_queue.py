"""The activator's queue bound and what 10,000 waiting requests cost; drain on SIGTERM. Real processes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from .procs import Gateway, Pod, Procs, wait_for

pytestmark = pytest.mark.e2e

QUEUED = 10_000
HOST = "idle.default.example.com"


def _doc(endpoints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "domain": "example.com",
        "services": [{"name": "idle", "latestRevision": "idle-00001"}],
        "revisions": [{"name": "idle-00001", "timeoutSeconds": 600, "endpoints": endpoints or []}],
    }


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


async def _open(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(request)
        conns.append((r, w))

    for start in range(0, n, 500):  # batches stay under the listen backlog
        await asyncio.gather(*(one() for _ in range(min(500, n - start))))
    return conns


async def test_10000_queued_requests_memory_and_503_past_the_bound(procs: Procs) -> None:
    gw = await asyncio.to_thread(Gateway, procs, _doc())
    proc = psutil.Process(gw.proc.pid)
    queued = "zeroscale_activator_request_queued"
    # Warm-up: one request through the whole path so lazily built parts count in the baseline.
    warm = await _open(gw.port, 1)
    await asyncio.to_thread(wait_for, lambda: gw.metric(queued) == 1, 30, "warm-up request queued")
    for _, w in warm:
        w.close()
    await asyncio.to_thread(wait_for, lambda: gw.metric(queued) == 0, 30, "warm-up request gone")
    base = proc.memory_info().rss
    t0 = time.monotonic()
    conns = await _open(gw.port, QUEUED)
    try:
        await asyncio.to_thread(
            wait_for, lambda: gw.metric(queued) == QUEUED, 120, f"{QUEUED} requests queued"
        )
        filled = time.monotonic() - t0
        full = proc.memory_info().rss
        # The bound: request 10,001 gets 503 at once.
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(f"{gw.url}/", headers={"Host": HOST})
        assert r.status_code == 503
        assert "pending request queue full" in r.text
        per_request = (full - base) / QUEUED
        print(
            f"\nMEMORY gateway RSS: {base / 2**20:.1f} MiB idle, {full / 2**20:.1f} MiB with {QUEUED} queued"
            f" requests (+{(full - base) / 2**20:.1f} MiB, {per_request / 1024:.1f} KiB each); filled in"
            f" {filled:.1f} s"
        )
        assert per_request < 64 * 1024, "a queued request should cost well under 64 KiB"
    finally:
        for _, w in conns:
            w.close()
    # Clients that give up leave the queue at once.
    await asyncio.to_thread(wait_for, lambda: gw.metric(queued) == 0, 60, "queue empty after clients left")


def test_sigterm_fails_health_finishes_in_flight_then_exits(procs: Procs) -> None:
    pod = Pod(procs, "idle-00001")
    gw = Gateway(procs, _doc([pod.endpoint()]), env={"DRAIN_TIMEOUT_SECONDS": "1"})
    pod.wait_ready()
    with httpx.Client(timeout=30) as c:
        assert c.get(f"{gw.url}/", headers={"Host": HOST}).status_code == 200
        result: list[int] = []

        def slow() -> None:
            result.append(c.get(f"{gw.url}/sleep?ms=2500", headers={"Host": HOST}).status_code)

        import threading

        t = threading.Thread(target=slow)
        t.start()
        wait_for(lambda: gw.metric("zeroscale_activator_request_active") == 1, 30, "slow request in flight")
        gw.proc.send_signal(signal.SIGTERM)

        def health_fails() -> bool:
            return httpx.get(f"http://127.0.0.1:{gw.admin_port}/healthz", timeout=2).status_code == 500

        wait_for(health_fails, 10, "health to fail after SIGTERM", gw.proc)
        # kubelet probes on the main port fail too
        probe = c.get(f"{gw.url}/healthz", headers={"User-Agent": "kube-probe/1.30"})
        assert probe.status_code == 500 and probe.text == "draining"
        t.join(30)
    assert result == [200]
    assert gw.proc.wait(30) == 0
