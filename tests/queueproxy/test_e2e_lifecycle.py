"""A real queue-proxy's lifecycle: readiness probing, stats for the autoscaler, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import httpx
import pytest
import websockets

from serving.stat import Stat, decode_stat
from tests.conftest import free_port

from .procs import QP, UserApp, queue_proxy, user_app

pytestmark = pytest.mark.e2e

PROBE = {"K-Network-Probe": "queue"}
T = TypeVar("T")


@pytest.fixture(scope="module")
def app() -> Iterator[UserApp]:
    with user_app() as a:
        yield a


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def poll(fn: Callable[[], Awaitable[T]], what: str, timeout: float = 15.0) -> T:
    """Call the async fn until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = await fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def stays(cond: Callable[[], object], seconds: float, what: str) -> None:
    """Check that cond() holds during the whole window (a negative can only be seen over time)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert cond(), what
        await asyncio.sleep(0.05)


async def status_of(client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> int:
    return (await client.get(url, headers=headers)).status_code


async def wait_exit(qp: QP, timeout: float = 20.0) -> int:
    return await asyncio.to_thread(qp.wait_exit, timeout)


# -- drain --------------------------------------------------------------------------------------


async def test_sigterm_during_a_5s_request_lets_it_finish_then_exits_0(
    app: UserApp, client: httpx.AsyncClient
) -> None:
    with queue_proxy(app.port, QUEUE_DRAIN_QUIET_PERIOD_SECONDS="0.5") as qp:
        assert await status_of(client, qp.url("/"), PROBE) == 200
        long = asyncio.ensure_future(client.get(qp.url("/sleep?ms=5000")))

        async def app_busy() -> bool:
            return bool((await client.get(app.url("/concurrency"))).json()["current"] >= 1)

        await poll(app_busy, "the long request reaches the app")
        qp.terminate()

        async def not_ready() -> bool:
            return await status_of(client, qp.url("/"), PROBE) == 503

        t0 = time.monotonic()
        await poll(not_ready, "readiness fails after SIGTERM", timeout=5)
        assert time.monotonic() - t0 < 2.0, "readiness must fail at once"
        r = await client.get(qp.url("/"))  # requests keep being served while draining
        assert (r.status_code, r.text) == (200, "hello")
        r = await client.get(qp.url("/"), headers={"User-Agent": "kube-probe/1.30"})
        assert (r.status_code, r.text) == (503, "shutting down")
        assert qp.proc.proc.poll() is None
        r = await asyncio.wait_for(long, 20)
        finished = time.monotonic()
        assert (r.status_code, r.text) == (200, "slept 5000")
        assert await wait_exit(qp) == 0
        assert time.monotonic() >= finished


async def test_open_websocket_counts_in_flight_and_holds_the_drain(
    app: UserApp, client: httpx.AsyncClient
) -> None:
    with queue_proxy(app.port, QUEUE_DRAIN_QUIET_PERIOD_SECONDS="0.3") as qp:
        async with websockets.connect(f"ws://127.0.0.1:{qp.port}/ws", open_timeout=10) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 5) == "hi"

            async def full_period_with_ws() -> Stat | None:
                stat = await protobuf_stat(client, qp)
                return stat if stat.average_concurrent_requests >= 0.99 else None

            stat = await poll(full_period_with_ws, "a period in which the websocket was in flight throughout")
            assert stat is not None and stat.average_concurrent_requests == pytest.approx(1.0, abs=0.01)
            qp.terminate()
            await stays(lambda: qp.proc.proc.poll() is None, 1.2, "exited with a websocket open")
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
        assert await wait_exit(qp) == 0


async def test_drain_is_capped_by_the_revision_timeout(app: UserApp, client: httpx.AsyncClient) -> None:
    """Steady traffic keeps restarting the quiet period; the revision timeout still ends the drain."""
    with queue_proxy(app.port, QUEUE_DRAIN_QUIET_PERIOD_SECONDS="1", REVISION_TIMEOUT_SECONDS="2") as qp:
        assert await status_of(client, qp.url("/")) == 200
        qp.terminate()
        t0 = time.monotonic()
        served = 0
        while qp.proc.proc.poll() is None:
            assert time.monotonic() - t0 < 15, "the drain never ended"
            try:
                r = await client.get(qp.url("/"), timeout=2)
                served += r.status_code == 200
            except httpx.HTTPError:
                pass  # the listener closed under us: the drain has ended
            await asyncio.sleep(0.1)
        took = time.monotonic() - t0
        assert qp.proc.proc.returncode == 0
        assert 1.9 <= took < 6, took
        assert served >= 5, "requests during the drain are served"


async def test_wait_for_drain_without_sigterm_is_called_off(app: UserApp, client: httpx.AsyncClient) -> None:
    with queue_proxy(app.port, QUEUE_DRAIN_QUIET_PERIOD_SECONDS="30") as qp:
        t0 = time.monotonic()
        r = await client.get(f"http://127.0.0.1:{qp.admin_port}/wait-for-drain")
        assert r.status_code == 200
        assert 0.9 <= time.monotonic() - t0 < 5
        assert await status_of(client, qp.url("/"), PROBE) == 200, "a drain called off serves again"
        assert qp.proc.proc.poll() is None


async def test_wait_for_drain_returns_when_the_sigterm_drain_completes(
    app: UserApp, client: httpx.AsyncClient
) -> None:
    with queue_proxy(app.port, QUEUE_DRAIN_QUIET_PERIOD_SECONDS="0.5") as qp:
        waiter = asyncio.ensure_future(client.get(f"http://127.0.0.1:{qp.admin_port}/wait-for-drain"))

        async def draining() -> bool:
            return await status_of(client, qp.url("/"), PROBE) == 503

        await poll(draining, "/wait-for-drain starts the drain")
        qp.terminate()
        r = await asyncio.wait_for(waiter, 15)
        assert (r.status_code, r.text) == (200, "drained")
        assert await wait_exit(qp) == 0


# -- readiness ------------------------------------------------------------------------------------


async def test_readiness_follows_the_user_container(client: httpx.AsyncClient) -> None:
    port = free_port()
    with queue_proxy(port) as qp:
        # the app starts 1 s late: the aggressive probe sees it within about 50 ms of listening
        with user_app(port, "--startup-delay-ms", "1000", wait=False):
            t0 = time.monotonic()
            r = await client.get(qp.url("/"), headers=PROBE)
            assert (r.status_code, r.text) == (200, "queue")
            assert time.monotonic() - t0 < 8
        # the app is gone: not ready, answered at once
        t0 = time.monotonic()
        assert await status_of(client, qp.url("/"), PROBE) == 503
        assert time.monotonic() - t0 < 2
        # it comes back (a container restart): ready again
        with user_app(port):

            async def ready() -> bool:
                return await status_of(client, qp.url("/"), PROBE) == 200

            await poll(ready, "readiness recovers after a restart")


async def test_http_readiness_probe_from_env(app: UserApp, client: httpx.AsyncClient) -> None:
    probe = json.dumps({"httpGet": {"path": "/healthz", "port": app.port, "scheme": "HTTP"}})
    with queue_proxy(app.port, SERVING_READINESS_PROBE=probe) as qp:
        assert await status_of(client, qp.url("/"), PROBE) == 200
        await client.get(app.url("/healthz?set=0"))
        try:
            assert await status_of(client, qp.url("/"), PROBE) == 503
        finally:
            await client.get(app.url("/healthz?set=1"))
        assert await status_of(client, qp.url("/"), PROBE) == 200


@pytest.mark.parametrize(
    ("headers", "status", "body", "echo"),
    [
        pytest.param(
            {"K-Network-Probe": "bogus"}, 400, "unexpected probe header value: bogus", None, id="bad"
        ),
        pytest.param({"K-Network-Probe": "probe", "K-Network-Hash": "abc"}, 200, "", "abc", id="k-probe"),
        pytest.param(
            {"K-Network-Probe": "probe"}, 400, "no K-Network-Hash header", None, id="k-probe-no-hash"
        ),
        pytest.param({"User-Agent": "kube-probe/1.30"}, 200, "hello", None, id="kubelet-goes-to-the-app"),
        pytest.param({"K-Kubelet-Probe": "1"}, 200, "hello", None, id="k-kubelet-probe"),
    ],
)
async def test_probe_routing(
    app: UserApp, client: httpx.AsyncClient, headers: dict[str, str], status: int, body: str, echo: str | None
) -> None:
    with queue_proxy(app.port, CONTAINER_CONCURRENCY="1") as qp:
        r = await client.get(qp.url("/"), headers=headers)
        assert (r.status_code, r.text) == (status, body)
        if echo is not None:
            assert r.headers["k-network-hash"] == echo


# -- stats for the autoscaler ---------------------------------------------------------------------


async def protobuf_stat(client: httpx.AsyncClient, qp: QP) -> Stat:
    r = await client.get(
        f"http://127.0.0.1:{qp.metrics_port}/metrics", headers={"Accept": "application/protobuf"}
    )
    assert r.headers["content-type"] == "application/protobuf"
    return decode_stat(r.content)


async def count_round(client: httpx.AsyncClient, qp: QP) -> list[Stat] | None:
    """Five direct, five proxied and ten probe requests; the periods that reported them, or None on a gap."""
    base = await protobuf_stat(client, qp)
    for _ in range(5):
        assert await status_of(client, qp.url("/")) == 200
        assert await status_of(client, qp.url("/"), {"K-Proxy-Request": "activator"}) == 200
        assert await status_of(client, qp.url("/"), PROBE) == 200
        assert await status_of(client, qp.url("/"), {"User-Agent": "kube-probe/1.30"}) == 200
    periods: dict[float, Stat] = {}
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, f"requests never fully reported: {periods}"
        stat = await protobuf_stat(client, qp)
        if stat.process_uptime > base.process_uptime:
            periods[stat.process_uptime] = stat
        uptimes = [base.process_uptime, *sorted(periods)]
        if any(b - a > 1.5 for a, b in itertools.pairwise(uptimes)):
            return None
        counted = sum(s.request_count for s in periods.values())
        # done once everything is in and one more period has passed with nothing new
        if counted >= 10 and periods[max(periods)].request_count == 0:
            return list(periods.values())
        await asyncio.sleep(0.05)


async def test_stats_count_requests_and_proxied_requests_but_not_probes(
    app: UserApp, client: httpx.AsyncClient
) -> None:
    with queue_proxy(app.port) as qp:
        # The endpoint holds only the latest 1 s period; on a starved machine a poll can miss one.
        # A missed period shows as a gap in process_uptime, and then the round is run again.
        for _ in range(3):
            periods = await count_round(client, qp)
            if periods is not None:
                break
        else:
            pytest.fail("every round missed a reporting period")
        assert sum(s.request_count for s in periods) == 10
        assert sum(s.proxied_request_count for s in periods) == 5
        assert all(s.pod_name == "svc-00001-pod" for s in periods)
        text = (await client.get(f"http://127.0.0.1:{qp.metrics_port}/metrics")).text
        for name in (
            "queue_average_concurrent_requests",
            "queue_requests_per_second",
            "queue_average_proxied_concurrent_requests",
            "queue_proxied_operations_per_second",
            "process_uptime",
        ):
            assert f"\n{name}{{" in text, name


async def test_kubelet_probe_bypasses_a_full_breaker(app: UserApp, client: httpx.AsyncClient) -> None:
    with queue_proxy(app.port, CONTAINER_CONCURRENCY="1") as qp:
        held = asyncio.ensure_future(client.get(qp.url("/sleep?ms=3000")))

        async def busy() -> bool:
            return bool((await client.get(app.url("/concurrency"))).json()["current"] >= 1)

        await poll(busy, "the slot is taken")
        t0 = time.monotonic()
        r = await client.get(qp.url("/"), headers={"User-Agent": "kube-probe/1.30"})
        assert (r.status_code, r.text) == (200, "hello")
        assert time.monotonic() - t0 < 1.5, "a liveness probe must not wait for the breaker"
        assert not held.done()
        assert (await held).status_code == 200
