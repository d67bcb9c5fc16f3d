"""The whole autoscaler against real queue-proxy processes, real time and a 6 s window.

Pods are real: each is a fake user app plus ``python -m queueproxy`` in front (Knative's env names,
QUEUE_METRICS_PORT serving the protobuf Stat), started and stopped by a Scaler the autoscaler drives.
Load is real HTTP through the queue-proxies. The autoscaler scrapes them every second, decides every
2 s, scales up (through panic), back to zero once the load stops, and is woken from zero by an
activator stat sent over its real websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest

from autoscaler.app import AutoscalerApp, AutoscalerSettings
from autoscaler.multiscaler import Decision
from serving.stat import Stat, WireStat, encode_wire_stats
from serving.types import Endpoint, RevisionKey
from tests.queueproxy.procs import QP, queue_proxy, user_app
from tests.util import until

pytestmark = pytest.mark.e2e

REV = RevisionKey("ns", "svc-00001")
ANNOTATIONS = {
    "autoscaling.knative.dev/window": "6s",
    # A 1 s panic window reads 0 whenever the newest scrape is in the previous second (Knative does the
    # same); half the stable window gives a steady panic average on a busy machine.
    "autoscaling.knative.dev/panic-window-percentage": "50",
    "autoscaling.knative.dev/target": "1",
    "autoscaling.knative.dev/target-utilization-percentage": "100",
    "autoscaling.knative.dev/max-scale": "3",
}


class ProcessPods:
    """Scaler, ReadyPodCounter and ScrapeTargets over real processes (one app + one queue-proxy a pod)."""

    def __init__(self) -> None:
        self.pods: list[tuple[contextlib.ExitStack, QP]] = []
        self.asked: list[tuple[float, int]] = []

    def _start(self) -> tuple[contextlib.ExitStack, QP]:
        stack = contextlib.ExitStack()
        try:
            app = stack.enter_context(user_app())
            qp = stack.enter_context(queue_proxy(app.port, SERVING_POD=f"svc-00001-pod-{len(self.pods)}"))
        except BaseException:
            stack.close()
            raise
        return stack, qp

    async def scale(self, revision: RevisionKey, desired: int) -> None:
        self.asked.append((time.monotonic(), desired))
        while len(self.pods) < desired:
            self.pods.append(await asyncio.to_thread(self._start))
        while len(self.pods) > desired:
            stack, _ = self.pods.pop()
            await asyncio.to_thread(stack.close)

    def ready_pods(self, revision: RevisionKey) -> int:
        return len(self.pods)

    def get(self, revision: RevisionKey) -> Sequence[Endpoint]:
        return [
            Endpoint(qp.env["SERVING_POD"], "127.0.0.1", qp.port, metrics_port=qp.metrics_port)
            for _, qp in self.pods
        ]

    def close(self) -> None:
        while self.pods:
            self.pods.pop()[0].close()


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[tuple[AutoscalerApp, ProcessPods, list[Decision]]]:
    pods = ProcessPods()
    app = AutoscalerApp(
        scaler=pods,
        pods=pods,
        targets=pods,
        settings=AutoscalerSettings(host="127.0.0.1", stat_port=0, metrics_port=0),
    )
    decisions: list[Decision] = []
    app.multiscaler.add_listener(decisions.append)
    try:
        await app.start()
        yield app, pods, decisions
    finally:
        await app.stop()
        await asyncio.to_thread(pods.close)


async def load(pods: ProcessPods, workers: int, stop: asyncio.Event, deadline: float) -> int:
    """``workers`` clients looping 250 ms requests through the queue-proxies; bounded in time and count."""
    done = 0
    rr = itertools.count()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for _ in range(400):
            if stop.is_set() or time.monotonic() > deadline:
                return
            eps = pods.get(REV)
            if not eps:
                await asyncio.sleep(0.05)  # pacing while no pod exists, not a wait for a condition
                continue
            ep = eps[next(rr) % len(eps)]
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(f"http://{ep.address}/sleep?ms=250") as r:
                    await r.read()
                    done += r.status == 200

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        await asyncio.gather(*(worker(s) for _ in range(workers)))
    return done


async def test_scale_up_through_panic_to_zero_and_cold_start_over_websocket() -> None:
    async with running() as (app, pods, decisions):
        app.multiscaler.upsert(REV, ANNOTATIONS, 0, created=True)
        await until(lambda: pods.ready_pods(REV) == 1, timeout=60, what="initial scale: one pod")

        stop = asyncio.Event()
        load_task = asyncio.create_task(load(pods, 8, stop, time.monotonic() + 90))
        try:
            # 8 requests in flight at target 1 and at most 3 pods: over the 200 % panic threshold.
            # (the Decision is published once the Scaler returned: wait for both)
            await until(
                lambda: pods.ready_pods(REV) == 3 and any(d.want == 3 for d in decisions),
                timeout=60,
                what="scaled up to max-scale 3",
            )
            assert any(d.in_panic for d in decisions)
            assert max(d.observed_panic or 0 for d in decisions) > 2.0
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{app.metrics_port}/metrics") as r,
            ):
                text = await r.text()
            labels = '{namespace_name="ns",revision_name="svc-00001"}'
            assert f"autoscaler_requested_pods{labels} 3.0" in text  # max-scale caps what is asked for
            desired = re.search(rf"^autoscaler_desired_pods{re.escape(labels)} (\S+)$", text, re.M)
            assert desired is not None and float(desired.group(1)) >= 3  # the decider's own number
        finally:
            stop.set()
            served = await load_task
        assert served > 20

        # No load: the 6 s windows empty out, panic ends, halving steps, then zero behind the activator.
        await until(
            lambda: pods.ready_pods(REV) == 0 and any(d.want == 0 and d.applied for d in decisions),
            timeout=90,
            what="scaled to zero",
        )
        last = app.multiscaler.latest(REV)
        assert last is not None and last.activator_in_path and last.want == 0
        downs = [n for _, n in pods.asked]
        assert downs[-1] == 0 and 3 in downs

        # A request waits at an activator: its stat arrives over the websocket and pokes a decision.
        batch = [WireStat(REV.namespace, REV.name, Stat("activator-0", 1.0, 0.0, 1.0, 0.0, 0.0, 0))]
        t_sent = time.monotonic()
        async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{app.stat_port}/") as ws:
            await ws.send_bytes(encode_wire_stats(batch))
            await until(
                lambda: pods.ready_pods(REV) == 1 and any(d.poke for d in decisions),
                timeout=60,
                what="cold start from zero",
            )
        asked_at = next(t for t, n in pods.asked if n == 1 and t >= t_sent)
        assert any(d.poke for d in decisions)
        print(f"stat -> scale call: {asked_at - t_sent:.3f} s")
