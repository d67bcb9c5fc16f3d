"""The gateway and activator on the engine's callback-only path (GatewayApp.fast): a GET to a warm
revision with room on a pod and a free pooled connection takes no handler task, and keeps every
guarantee of the task path: the headers toward the pod, a refusal sent to another pod, the revision's
timeout, a client that goes away, serve mode. In-process GatewayApp, real engine servers as pods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml

from activator.backends import EndpointBoard
from cluster.gateway_app import GatewayApp, apply_snapshot, parse_routes_file
from routing.table import TableHolder
from serving.headers import NOT_SENT
from serving.httpserver import Request, Responder
from serving.stat import WireStat
from serving.types import Endpoint, RevisionKey

from .helpers import until
from .test_handler import AllHealthy, PodServer

HOST = "s.default.example.com"
KEY = RevisionKey("default", "s-00001")


class Refuser(PodServer):
    """A pod that serves until ``refusing``, then answers as a queue-proxy that could not reach its
    app: 502 marked "not sent" (nothing ran), over the keep-alive connection it served on before."""

    refusing = False
    refused = 0

    async def handle(self, req: Request, resp: Responder) -> None:
        if not self.refusing:
            await super().handle(req, resp)
            return
        self.refused += 1
        await resp.send(502, b"dial tcp: connection refused", headers=[(NOT_SENT, b"true")])


async def _warm(c: httpx.AsyncClient, *pods: PodServer) -> None:
    """GETs until every pod has answered one: each then has a pooled connection from the gateway."""
    for _ in range(200):
        if all(p.seen for p in pods):
            return
        assert (await c.get("/x", headers={"Host": HOST})).status_code == 200
    raise AssertionError(f"not every pod was picked in 200 requests: {[len(p.seen) for p in pods]}")


def _doc(endpoints: list[Endpoint], **rev: Any) -> str:
    return yaml.safe_dump(
        {
            "domain": "example.com",
            "services": [{"name": "s", "latestRevision": "s-00001"}],
            "revisions": [
                {
                    "name": "s-00001",
                    "endpoints": [{"host": e.host, "port": e.port, "pod": e.pod_name} for e in endpoints],
                    **rev,
                }
            ],
        }
    )


@pytest.fixture
async def gw() -> AsyncIterator[tuple[GatewayApp, EndpointBoard]]:
    board = EndpointBoard()
    stats: list[WireStat] = []
    app = GatewayApp(TableHolder(), board, stats.extend, prober=AllHealthy())
    await app.start("127.0.0.1", 0)
    try:
        yield app, board
    finally:
        await app.shutdown(1)


async def _route(app: GatewayApp, board: EndpointBoard, pods: list[Endpoint], **rev: Any) -> None:
    await apply_snapshot(app, parse_routes_file(_doc(pods, **rev)), board)
    await until(lambda: len(app.activator.healthy(KEY)) == len(pods))


def _taken(app: GatewayApp) -> int:
    assert app.server is not None
    return app.server.http.fast_taken


async def test_warm_gets_take_the_callback_path_with_the_task_paths_headers(
    gw: tuple[GatewayApp, EndpointBoard],
) -> None:
    app, board = gw
    pod = PodServer("a")
    await _route(app, board, [await pod.start()])
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=10) as c:
            cold = await c.get("/x", headers={"Host": HOST})  # opens the pooled connection
            before = _taken(app)
            via = {"Host": HOST, "X-Forwarded-For": "10.0.0.1"}
            warm = [await c.get("/x", headers=via) for _ in range(5)]
            assert _taken(app) == before + 5
            posted = await c.post("/x", headers={"Host": HOST}, content=b"body")
            assert _taken(app) == before + 5  # a request with a body keeps the task path
        assert cold.status_code == posted.status_code == 200
        assert all(r.status_code == 200 and r.json()["pod"] == "a" for r in warm)
        sent = {k.lower(): v for k, v in warm[-1].json()["headers"]}
        assert sent["k-proxy-request"] == "activator" and sent["k-original-host"] == HOST
        assert sent["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert "knative-serving-revision" not in sent  # routing headers end at the activator
        throttler = app.activator.throttler(KEY)
        assert throttler is not None and throttler.in_flight == 0  # every slot given back
    finally:
        await pod.stop()


async def test_a_refusal_on_the_callback_path_goes_to_another_pod(
    gw: tuple[GatewayApp, EndpointBoard],
) -> None:
    app, board = gw
    good, bad = PodServer("good"), Refuser("bad")
    await _route(app, board, [await good.start(), await bad.start()])
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=10) as c:
            await _warm(c, good, bad)
            bad.refusing = True  # its next request comes over the pooled connection: the callback path
            before = _taken(app)
            answers = [await c.get("/x", headers={"Host": HOST}) for _ in range(30)]
        assert [r.status_code for r in answers] == [200] * 30
        assert {r.json()["pod"] for r in answers} == {"good"}
        assert bad.refused >= 1 and _taken(app) > before
        throttler = app.activator.throttler(KEY)
        assert throttler is not None and throttler.in_flight == 0
    finally:
        await good.stop()
        await bad.stop()


async def test_the_revision_timeout_on_the_callback_path_is_a_504_and_frees_the_pod(
    gw: tuple[GatewayApp, EndpointBoard],
) -> None:
    app, board = gw
    pod = PodServer("a")
    await _route(app, board, [await pod.start()], containerConcurrency=1, timeoutSeconds=1)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=30) as c:
            assert (await c.get("/x", headers={"Host": HOST})).status_code == 200  # warm
            before = _taken(app)
            t0 = time.monotonic()
            r = await c.get("/x?sleep=5", headers={"Host": HOST})
            waited = time.monotonic() - t0
            assert (r.status_code, r.text) == (504, "activator request timeout")
            assert waited < 4.5, waited  # the revision's 1 s, not the app's 5
            assert _taken(app) == before + 1  # it went the callback way, and timed out there
            # cc = 1: the next request gets the pod at once, so its slot was given back
            assert (await c.get("/x", headers={"Host": HOST})).status_code == 200
    finally:
        await pod.stop()


async def test_a_client_gone_on_the_callback_path_gives_its_pod_slot_back(
    gw: tuple[GatewayApp, EndpointBoard],
) -> None:
    app, board = gw
    pod = PodServer("a")
    await _route(app, board, [await pod.start()], containerConcurrency=1)
    throttler = app.activator.throttler(KEY)
    assert throttler is not None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=10) as c:
            await _warm(c, pod)
            before = _taken(app)
            _, writer = await asyncio.open_connection("127.0.0.1", app.port)
            writer.write(f"GET /x?sleep=30 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            await until(lambda: throttler.in_flight == 1)
            assert _taken(app) == before + 1
            writer.close()  # the client leaves while the pod still works on it
            await until(lambda: throttler.in_flight == 0)
            # cc = 1: the pod's one slot is free again, so this one does not wait 30 s
            assert (await c.get("/x", headers={"Host": HOST})).status_code == 200
    finally:
        await pod.stop()


async def test_serve_mode_takes_the_callback_path_and_a_refusal_goes_to_the_throttled_one(
    gw: tuple[GatewayApp, EndpointBoard],
) -> None:
    app, board = gw
    good, bad = PodServer("good"), Refuser("bad")
    await _route(app, board, [await good.start(), await bad.start()])
    app.set_activator_in_path(KEY, False)  # the autoscaler took the activator out of the path
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.port}", timeout=10) as c:
            await _warm(c, good, bad)
            bad.refusing = True
            before = _taken(app)
            answers = [await c.get("/x", headers={"Host": HOST}) for _ in range(30)]
        assert [r.status_code for r in answers] == [200] * 30
        assert {r.json()["pod"] for r in answers} == {"good"}
        assert bad.refused >= 1 and _taken(app) > before
    finally:
        await good.stop()
        await bad.stop()
