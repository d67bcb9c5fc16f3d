"""The examples run as they are: one real pod each, behind a real queue-proxy, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from cluster.local import LocalRuntime, PodSettings
from serving.spec import Revision, RevisionHistory, load_services
from serving.types import Endpoint

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = PodSettings(ready_timeout=30.0, drain_quiet_period=0.2, termination_grace=5.0, kill_grace=2.0)


def first_revision(relative: str) -> Revision:
    return RevisionHistory().admit(load_services(EXAMPLES / relative)[0])[0]


@pytest.fixture
async def runtime() -> AsyncIterator[LocalRuntime]:
    rt = LocalRuntime(SETTINGS)
    try:
        yield rt
    finally:
        await rt.close(timeout=15)


async def one_pod(rt: LocalRuntime, revision: Revision) -> Endpoint:
    rt.add_revision(revision)
    await rt.scale(revision.key, 1)
    deadline = time.monotonic() + 30
    while await rt.ready_pods(revision.key) < 1:
        failures = rt.failures(revision.key)
        assert not failures, failures[0].describe()
        assert time.monotonic() < deadline, "not ready in 30 s"
        await asyncio.sleep(0.02)
    [endpoint] = rt.endpoints(revision.key)
    return endpoint


@pytest.mark.parametrize(
    ("relative", "path", "expect"),
    [
        pytest.param("hello/service.yaml", "/", "Hello zeroscale! (revision hello-00001)\n", id="hello"),
        pytest.param(
            "autoscale/service.yaml",
            "/?sleep=20&prime=100&bloat=1",
            "Slept for ",
            id="autoscale",
        ),
        pytest.param("blue-green/service-blue.yaml", "/", "blue (revision blue-green-blue)\n", id="blue"),
        pytest.param("blue-green/service-green.yaml", "/", "green (revision blue-green-green)\n", id="green"),
        pytest.param("rollout/service-v2.yaml", "/", "version 2 (revision rollout-00001)\n", id="rollout"),
        pytest.param("websocket/service.yaml", "/", "websocket echo", id="websocket"),
    ],
)
async def test_example_serves(runtime: LocalRuntime, relative: str, path: str, expect: str) -> None:
    endpoint = await one_pod(runtime, first_revision(relative))
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"http://{endpoint.address}{path}")
    assert r.status_code == 200
    assert r.text.startswith(expect)


async def test_autoscale_rejects_bad_parameters(runtime: LocalRuntime) -> None:
    endpoint = await one_pod(runtime, first_revision("autoscale/service.yaml"))
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"http://{endpoint.address}/?prime=abc")
        assert (r.status_code, r.text) == (400, "prime='abc' must be a whole number between 0 and 50000000\n")
        r = await client.get(f"http://{endpoint.address}/?prime=100")
        assert r.text == "The largest prime less than 100 is 97.\n"


async def test_websocket_echo_through_the_queue_proxy(runtime: LocalRuntime) -> None:
    endpoint = await one_pod(runtime, first_revision("websocket/service.yaml"))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://{endpoint.address}/ws") as ws:
            for i in range(3):
                await ws.send_str(f"hello {i}")
                assert (await ws.receive(timeout=10)).data == f"hello {i}"
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive(timeout=10)).data == b"\x00\x01"


async def test_sse_events_arrive_one_by_one(runtime: LocalRuntime) -> None:
    endpoint = await one_pod(runtime, first_revision("sse/service.yaml"))
    arrivals: list[float] = []
    body = b""
    async with httpx.AsyncClient(timeout=20) as client:
        start = time.monotonic()
        async with client.stream("GET", f"http://{endpoint.address}/?count=3&interval=800") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for chunk in r.aiter_bytes():
                body += chunk
                arrivals.append(time.monotonic() - start)
    assert body.count(b"event: tick\n") == 3
    assert b'"revision": "sse-00001"' in body
    # the first event is not held back until the stream ends (1.6 s of intervals later)
    assert arrivals[0] < arrivals[-1] - 1.0
