"""End to end on loopback: the gateway+activator process (``python -m activator``) in front of real pods
(``python -m queueproxy`` + the fake user app), routes from the file backend, a websocket double of the
autoscaler that receives the activator's stats."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import WSMsgType, web

from serving.stat import WireStat, decode_wire_stats
from tests.conftest import free_port

from .procs import Gateway, Pod, Procs, wait_for

pytestmark = pytest.mark.e2e

DOMAIN = "example.com"
HELLO = f"hello.default.{DOMAIN}"


class AutoscalerDouble:
    """Receives the activator's binary stat stream on a websocket, in a thread of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.stats: list[WireStat] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "autoscaler double did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    with self._lock:
                        self.stats.extend(decode_wire_stats(msg.data))
            return ws

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/", handler)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def received(self, name: str) -> list[WireStat]:
        with self._lock:
            return [s for s in self.stats if s.name == name]

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _doc(endpoints: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def rev(name: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "namespace": "default", "endpoints": endpoints.get(name, []), **kw}

    return {
        "domain": DOMAIN,
        "services": [
            {
                "name": "hello",
                "latestRevision": "hello-00002",
                "traffic": [
                    {"revisionName": "hello-00001", "percent": 40, "tag": "stable"},
                    {"latestRevision": True, "percent": 60, "tag": "canary"},
                ],
            },
            {"name": "alpha", "latestRevision": "hello-00001"},
            {"name": "cold", "latestRevision": "cold-00001"},
            {"name": "slow", "latestRevision": "slow-00001"},
        ],
        "revisions": [
            rev("hello-00001"),
            rev("hello-00002"),
            rev("cold-00001", containerConcurrency=1),
            rev("slow-00001", timeoutSeconds=1),
        ],
    }


class Env:
    def __init__(self, tmp: Path) -> None:
        self.procs = Procs(tmp)
        self.double = AutoscalerDouble()
        self.a = Pod(self.procs, "hello-00001")
        self.b = Pod(self.procs, "hello-00002")
        self.endpoints = {"hello-00001": [self.a.endpoint()], "hello-00002": [self.b.endpoint()]}
        self.gw = Gateway(
            self.procs, _doc(self.endpoints), env={"AUTOSCALER_URL": f"ws://127.0.0.1:{self.double.port}/"}
        )
        self.a.wait_ready()
        self.b.wait_ready()
        self.pids = {self.a.pid(): "hello-00001", self.b.pid(): "hello-00002"}

    def publish(self, name: str, endpoints: list[dict[str, Any]]) -> None:
        self.endpoints[name] = endpoints
        self.gw.write(_doc(self.endpoints))

    def close(self) -> None:
        self.procs.close()
        self.double.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("gw"))
    try:
        yield e
    finally:
        e.close()


def _served_by(env: Env, client: httpx.Client, host: str, **headers: str) -> str:
    r = client.get(f"{env.gw.url}/pid", headers={"Host": host, **headers})
    assert r.status_code == 200, r.text
    return env.pids[int(r.text)]


def test_split_40_60_over_real_http(env: Env) -> None:
    # Wait until both pods are probed healthy (a request must not wait for the first probe round).
    with httpx.Client(timeout=30) as c:
        counts = Counter(_served_by(env, c, HELLO) for _ in range(300))
    assert abs(counts["hello-00001"] / 300 - 0.40) <= 0.01, counts
    assert abs(counts["hello-00002"] / 300 - 0.60) <= 0.01, counts


@pytest.mark.parametrize(
    ("host", "headers", "want"),
    [
        pytest.param(f"stable-hello.default.{DOMAIN}", {}, {"hello-00001"}, id="tag-host-stable"),
        pytest.param(f"canary-hello.default.{DOMAIN}", {}, {"hello-00002"}, id="tag-host-canary"),
        pytest.param(HELLO, {"Knative-Serving-Tag": "stable"}, {"hello-00001"}, id="tag-header-stable"),
        pytest.param(HELLO, {"Knative-Serving-Tag": "canary"}, {"hello-00002"}, id="tag-header-canary"),
        pytest.param(
            HELLO, {"Knative-Serving-Tag": "nope"}, {"hello-00001", "hello-00002"}, id="unknown-tag"
        ),
        pytest.param(
            f"alpha.default.{DOMAIN}",
            {"Knative-Serving-Revision": "hello-00002", "Knative-Serving-Namespace": "default"},
            {"hello-00001"},
            id="spoofed-revision-header-ignored",
        ),
        pytest.param(
            f"stable-hello.default.{DOMAIN}",
            {"Knative-Serving-Tag": "canary", "Knative-Serving-Revision": "hello-00002"},
            {"hello-00001"},
            id="tag-host-ignores-tag-and-revision-headers",
        ),
    ],
)
def test_routing(env: Env, host: str, headers: dict[str, str], want: set[str]) -> None:
    with httpx.Client(timeout=30) as c:
        got = {_served_by(env, c, host, **headers) for _ in range(20)}
    assert got == want


def test_unknown_host_is_404_and_goes_nowhere(env: Env) -> None:
    before = httpx.get(f"http://127.0.0.1:{env.a.user_port}/concurrency", timeout=5).json()
    r = httpx.get(f"{env.gw.url}/", headers={"Host": "nobody.default.example.com"}, timeout=10)
    assert r.status_code == 404
    assert "nobody.default.example.com" in r.text
    assert httpx.get(f"http://127.0.0.1:{env.a.user_port}/concurrency", timeout=5).json() == before


def test_headers_toward_the_pod(env: Env) -> None:
    r = httpx.get(
        f"{env.gw.url}/headers",
        headers={
            "Host": f"alpha.default.{DOMAIN}",
            "K-Original-Host": "evil.example.com",
            "K-Proxy-Request": "nope",
            "X-Custom": "kept",
        },
        timeout=10,
    )
    assert r.status_code == 200
    body = r.json()
    seen = {k.lower(): v for k, v in body["headers"]}
    # The activator kept the real Host in K-Original-Host (the client's was dropped at the door) and
    # the queue-proxy restored it as Host.
    assert body["host"] == f"alpha.default.{DOMAIN}"
    assert "evil.example.com" not in str(body)
    assert seen["x-custom"] == "kept"
    assert "knative-serving-revision" not in seen and "knative-serving-namespace" not in seen
    assert "x-forwarded-for" in seen


async def test_cold_requests_wait_for_a_pod_the_autoscaler_double_brings(env: Env) -> None:
    async with httpx.AsyncClient(timeout=60) as c:
        tasks = [
            asyncio.create_task(
                c.get(f"{env.gw.url}/sleep?ms=20", headers={"Host": f"cold.default.{DOMAIN}"})
            )
            for _ in range(20)
        ]
        # The double sees the poke (concurrency 1, count 1) and the requests wait in the activator.
        await asyncio.to_thread(
            wait_for, lambda: env.double.received("cold-00001"), 30, "the activator's poke for cold-00001"
        )
        poke = env.double.received("cold-00001")[0].stat
        assert (poke.average_concurrent_requests, poke.request_count) == (1.0, 1.0)
        await asyncio.to_thread(
            wait_for,
            lambda: env.gw.metric("zeroscale_activator_request_queued", 'revision="cold-00001"') == 20,
            30,
            "20 requests queued",
        )
        assert not any(t.done() for t in tasks)
        # The double "scales up": a real pod starts and is published through the EndpointSource.
        pod = await asyncio.to_thread(Pod, env.procs, "cold-00001", 1)
        env.publish("cold-00001", [pod.endpoint()])
        responses = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert [r.status_code for r in responses] == [200] * 20
    waits = [float(r.headers["x-zeroscale-cold-start"]) for r in responses]
    assert all(w > 0 for w in waits)
    # cc = 1: the pod never saw two requests at once, even with 20 released together.
    async with httpx.AsyncClient(timeout=5) as c:
        conc = (await c.get(f"http://127.0.0.1:{pod.user_port}/concurrency")).json()
    assert conc["max"] <= 1
    count = await asyncio.to_thread(
        env.gw.metric, "zeroscale_activator_cold_start_seconds_count", 'revision="cold-00001"'
    )
    assert count == 20
    # Periodic reports followed the poke.
    await asyncio.to_thread(wait_for, lambda: len(env.double.received("cold-00001")) >= 2, 10, "a report")


def test_waiting_too_long_is_504(env: Env) -> None:
    r = httpx.get(f"{env.gw.url}/", headers={"Host": f"slow.default.{DOMAIN}"}, timeout=30)
    assert r.status_code == 504
    assert r.text == "activator request timeout"


def test_route_update_does_not_fail_requests_in_flight(env: Env) -> None:
    doc = _doc(env.endpoints)
    with httpx.Client(timeout=30) as c:
        slow = threading.Thread(
            target=lambda: results.append(
                c.get(f"{env.gw.url}/sleep?ms=500", headers={"Host": HELLO}).status_code
            )
        )
        results: list[int] = []
        slow.start()
        for i in range(5):  # rewrite the routes while the request runs
            doc["services"][0]["traffic"][0]["percent"] = 40 + i
            doc["services"][0]["traffic"][1]["percent"] = 60 - i
            env.gw.write(doc)
        slow.join(30)
        assert results == [200]
        assert {_served_by(env, c, HELLO) for _ in range(10)} <= {"hello-00001", "hello-00002"}
    env.gw.write(_doc(env.endpoints))


async def test_websocket_through_gateway_and_activator(env: Env) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"ws://127.0.0.1:{env.gw.port}/ws", headers={"Host": f"alpha.default.{DOMAIN}"}) as ws,
    ):
        for msg in ("one", "two"):
            await ws.send_str(msg)
            got = await asyncio.wait_for(ws.receive(), 10)
            assert got.data == msg
        await ws.send_bytes(b"\x00\x01")
        assert (await asyncio.wait_for(ws.receive(), 10)).data == b"\x00\x01"


async def test_sse_streams_event_by_event(env: Env) -> None:
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    async with (
        httpx.AsyncClient(timeout=30) as c,
        c.stream(
            "GET", f"{env.gw.url}/sse?n=3&interval_ms=300", headers={"Host": f"alpha.default.{DOMAIN}"}
        ) as r,
    ):
        assert r.status_code == 200
        async for chunk in r.aiter_text():
            if "data:" in chunk:
                arrivals.extend(loop.time() for _ in range(chunk.count("data:")))
    assert len(arrivals) == 3
    assert arrivals[-1] - arrivals[0] >= 0.45  # not buffered into one piece at the end


async def test_request_body_streams_both_ways(env: Env) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def body() -> Any:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(f"{env.gw.url}/echo", content=body(), headers={"Host": f"alpha.default.{DOMAIN}"})
    assert r.status_code == 200 and r.content == payload
