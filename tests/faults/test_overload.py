"""Overload far past capacity, with clients that give up after one second (Knative serving#13583).

One pod with containerConcurrency 2 and 100 ms requests (capacity 20 requests a second) behind the
real gateway process; the attack opens a new connection for each of 200 requests a second, for 6 s.
Every request is counted: an answer by status, or ``gave-up`` when the client gave up at 1 s. The
gateway's memory (RSS) is sampled all along; afterwards the activator's queue must be empty at once
and the next request served normally.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.activator.procs import Gateway, Procs, wait_for
from tests.fakes import hostile
from tests.faults.stack import routes, start_pod

pytestmark = pytest.mark.e2e

RATE = 200  # requests a second offered, 10 x capacity
SECONDS = 6
CLIENT_TIMEOUT = 1.0
RSS_GROWTH_BOUND = 32 * 1024 * 1024  # bytes above the idle gateway's RSS (measured: see the test output)


async def _one(
    port: int, host: str, i: int, out: Counter[int | str], latency: dict[int | str, list[float]]
) -> None:
    t0 = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /sleep?ms=100&id={i} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
            status: int | str = int(line.split(b" ", 2)[1]) if line.startswith(b"HTTP/1.1 ") else "closed"
            await reader.read()
    except TimeoutError:
        status = "gave-up"
    except OSError as e:
        status = type(e).__name__
    finally:
        if writer is not None:
            writer.close()
    out[status] += 1
    latency.setdefault(status, []).append(time.monotonic() - t0)


async def _attack(port: int, host: str) -> tuple[Counter[int | str], dict[int | str, list[float]]]:
    out: Counter[int | str] = Counter()
    latency: dict[int | str, list[float]] = {}
    tasks = []
    start = time.monotonic()
    for i in range(RATE * SECONDS):
        delay = start + i / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the attack's pace, not a wait for a condition
        tasks.append(asyncio.create_task(_one(port, host, i, out, latency)))
    await asyncio.gather(*tasks)
    return out, latency


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):  # the sampling pace
            self.samples.append(self.proc.memory_info().rss)


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))] if values else 0.0


@pytest.mark.parametrize(
    ("queue_depth", "timeout"),
    [(10_000, 300), (50, 0.5)],
    ids=["knative-defaults", "short-queue-and-timeout"],
)
async def test_overload_with_impatient_clients(tmp_path: Path, queue_depth: int, timeout: float) -> None:
    procs = Procs(tmp_path)
    try:
        pod = start_pod(procs, "web-00001", cc=2)
        doc = routes([pod], ccs={"web-00001": 2})
        doc["revisions"][0]["timeoutSeconds"] = timeout
        gw = Gateway(procs, doc, env={"ACTIVATOR_QUEUE_DEPTH": str(queue_depth)})
        host = "web.default.example.com"
        for _ in range(20):  # warm up: pools, probes, imports
            assert (await asyncio.to_thread(hostile.request, gw.port, "GET", "/rev", host)).status == 200
        idle = psutil.Process(gw.proc.pid).memory_info().rss
        sampler = RssSampler(gw.proc.pid)
        sampler.start()
        try:
            out, latency = await _attack(gw.port, host)
        finally:
            sampler.done.set()
            sampler.join(5)
        peak = max(sampler.samples)
        queued = 'zeroscale_activator_request_queued{namespace="default",revision="web-00001"}'
        await asyncio.to_thread(wait_for, lambda: gw.metric(queued.split("{")[0]) == 0, 5, "queue empty")
        t0 = time.monotonic()
        after = await asyncio.to_thread(hostile.request, gw.port, "GET", "/rev", host)
        next_latency = time.monotonic() - t0
        gone = await asyncio.to_thread(
            wait_for,
            lambda: hostile.request(pod.app_port, "GET", "/inflight", "h").body.startswith(b'{"now": 0'),
            10,
            "the pod's app idle",
        )
        app_max = json.loads(hostile.request(pod.app_port, "GET", "/inflight", "h").body)["max"]
        words = pod.log.read_text().split()
        reached, finished = words.count("S"), words.count("E")
    finally:
        procs.close()
    p99 = {k: round(_p99(v), 3) for k, v in latency.items()}
    summary = (
        f"{sum(out.values())} requests at {RATE}/s for {SECONDS} s, queue {queue_depth}, "
        f"timeout {timeout} s: {dict(out)}; p99 by status {p99}; the app: {reached} reached it, "
        f"{finished} answered, at most {app_max} at once; gateway RSS idle {idle / 2**20:.1f} MiB, "
        f"peak {peak / 2**20:.1f} MiB (+{(peak - idle) / 2**20:.1f}); "
        f"next request {next_latency * 1000:.0f} ms"
    )
    print(summary)
    assert gone
    assert sum(out.values()) == RATE * SECONDS, summary  # every request accounted for
    assert set(out) <= {200, 503, 504, "gave-up"}, summary  # no reset, no malformed answer
    # The pod kept serving. (Not at capacity: the queue is first-in first-out, so under this overload
    # a request reaches the pod just before its client gives up: see docs/guarantees.md.)
    assert out[200] > 0 and reached >= 5 * SECONDS, summary
    assert peak - idle < RSS_GROWTH_BOUND, summary
    assert after.status == 200 and next_latency < 1.0, (after, summary)
    if queue_depth < 1000:
        # Bounded queue and timeout: the excess is answered, quickly, before the client gives up.
        assert out[503] > 0 and out[504] > 0, summary
        assert _p99(latency[503]) < 0.5 and _p99(latency[504]) < timeout + 0.4, summary
        assert out["gave-up"] <= 0.05 * sum(out.values()), summary  # a starved client may still give up
