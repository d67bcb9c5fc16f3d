"""The activator's request path in one process: real engine servers as the front and as pods."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Sequence
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from activator.app import StandaloneHandler, revision_from_request
from activator.backends import EndpointBoard
from activator.handler import Activator, RevisionSettings, toward_pod
from activator.reporter import CallbackSink, ConcurrencyReporter
from serving.httpserver import HttpServer, Request, Responder, serve
from serving.stat import WireStat
from serving.timeouts import RequestTimeouts
from serving.types import Endpoint, RevisionKey

from .helpers import until

KEY = RevisionKey("default", "r-00001")


class AllHealthy:
    def __init__(self) -> None:
        self.down: set[int] = set()

    async def probe(self, endpoint: Endpoint) -> bool:
        return endpoint.port not in self.down


class PodServer:
    """An engine server standing in for a queue-proxy: echoes what it got, can sleep, counts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, object]] = []
        self.server: HttpServer | None = None

    async def handle(self, req: Request, resp: Responder) -> None:
        url = urlsplit(req.target.decode())
        q = parse_qs(url.query)
        body = b""
        while chunk := await req.read():
            body += chunk
        self.seen.append(
            {"path": url.path, "headers": [(k.decode(), v.decode()) for k, v in req.headers.items]}
        )
        if "sleep" in q:
            await asyncio.sleep(float(q["sleep"][0]))
        if "stream" in q:
            await resp.start(200, [(b"content-type", b"text/plain")])
            await resp.write(b"first\n")
            await asyncio.sleep(float(q["stream"][0]))
            await resp.write(b"second\n")
            await resp.end()
            return
        await resp.send(200, json.dumps({"pod": self.name, "headers": self.seen[-1]["headers"]}))

    async def start(self) -> Endpoint:
        self.server = await serve(self.handle, "127.0.0.1", 0)
        return Endpoint(f"{self.name}-pod", "127.0.0.1", self.server.port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown(1)


class Front:
    def __init__(self) -> None:
        self.board = EndpointBoard()
        self.stats: list[WireStat] = []
        self.reporter = ConcurrencyReporter("act", CallbackSink(self.stats.extend))
        self.prober = AllHealthy()
        self.activator = Activator(
            self.board, self.reporter, prober=self.prober, rng=random.Random(1), sweep_interval=0.02
        )
        self.handler = StandaloneHandler(self.activator, lambda: (True, "ok"))
        self.server: HttpServer | None = None
        self.pods: list[PodServer] = []

    async def start(self) -> str:
        self.server = await serve(self.handler, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.port}"

    async def pod(self, name: str) -> Endpoint:
        p = PodServer(name)
        self.pods.append(p)
        return await p.start()

    def publish(self, eps: Sequence[Endpoint], key: RevisionKey = KEY) -> None:
        self.board.publish(key, eps)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.shutdown(1)
        await self.activator.close()
        for p in self.pods:
            await p.stop()


@pytest.fixture
async def front() -> AsyncIterator[tuple[Front, httpx.AsyncClient, str]]:
    f = Front()
    url = await f.start()
    async with httpx.AsyncClient(timeout=20, headers={"Knative-Serving-Namespace": "default"}) as c:
        try:
            yield f, c, url
        finally:
            await f.close()


def _rev(name: str = "r-00001") -> dict[str, str]:
    return {"Knative-Serving-Revision": name}


def _dead_port_before(live: int) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if f"127.0.0.1:{port}" < f"127.0.0.1:{live}":
            return port


async def test_unknown_revision_404(front: tuple[Front, httpx.AsyncClient, str]) -> None:
    _, c, url = front
    r = await c.get(url, headers=_rev("nope-00001"))
    assert r.status_code == 404 and "Error getting active endpoint" in r.text


async def test_forwarded_headers_and_no_cold_mark_when_warm(
    front: tuple[Front, httpx.AsyncClient, str],
) -> None:
    f, c, url = front
    f.activator.add_revision(KEY, RevisionSettings(0))
    f.publish([await f.pod("a")])
    await until(lambda: f.activator.healthy(KEY) != [], what="pod healthy")
    r = await c.get(url + "/x", headers={**_rev(), "Host": "r-00001.default.svc.cluster.local"})
    assert r.status_code == 200
    assert "x-zeroscale-cold-start" not in r.headers
    seen = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert seen["k-proxy-request"] == "activator"
    assert seen["k-original-host"] == "r-00001.default.svc.cluster.local"
    assert seen["host"].startswith("127.0.0.1:")
    assert "knative-serving-revision" not in seen and "knative-serving-namespace" not in seen
    assert f.stats[0].stat.request_count == 1.0  # the poke


async def test_connect_refused_pod_is_skipped_and_suspected(
    front: tuple[Front, httpx.AsyncClient, str],
) -> None:
    f, c, url = front
    f.activator.add_revision(KEY, RevisionSettings(1))
    live = await f.pod("live")
    dead = Endpoint("dead-pod", "127.0.0.1", _dead_port_before(live.port))
    f.publish([dead, live])
    await until(lambda: len(f.activator.healthy(KEY)) == 2, what="both pods 'healthy'")
    throttler = f.activator.throttler(KEY)
    assert (
        throttler is not None and throttler.assigned[0].endpoint == dead
    )  # first-available tries dead first
    f.prober.down.add(dead.port)  # its re-probe fails from now on
    r = await c.get(url, headers=_rev())
    assert r.status_code == 200 and r.json()["pod"] == "live"
    assert throttler.in_flight == 0
    assert f.activator.healthy(KEY) == [live]  # set aside until a probe passes again


async def test_pod_going_away_finishes_in_flight_new_requests_elsewhere(
    front: tuple[Front, httpx.AsyncClient, str],
) -> None:
    f, c, url = front
    f.activator.add_revision(KEY, RevisionSettings(1))
    a, b = await f.pod("a"), await f.pod("b")
    first, second = sorted([a, b], key=lambda e: e.address)
    f.publish([first, second])
    await until(lambda: len(f.activator.healthy(KEY)) == 2)
    slow = asyncio.create_task(c.get(url + "/?sleep=0.5", headers=_rev()))
    await until(lambda: sum(len(p.seen) for p in f.pods) == 1, what="slow request on a pod")
    f.publish([second, Endpoint(first.pod_name, first.host, first.port, terminating=True)])
    for _ in range(5):
        r = await c.get(url, headers=_rev())
        assert r.status_code == 200
        assert r.json()["pod"] == second.pod_name.removesuffix("-pod")
    assert (await slow).status_code == 200


@pytest.mark.parametrize(
    ("timeouts", "query", "want"),
    [
        pytest.param(RequestTimeouts(0.3, 0.3, 0), "", 504, id="total-while-queued"),
        pytest.param(RequestTimeouts(10, 0.3, 0), "?sleep=5", 504, id="response-start"),
    ],
)
async def test_timeouts_504(
    front: tuple[Front, httpx.AsyncClient, str], timeouts: RequestTimeouts, query: str, want: int
) -> None:
    f, c, url = front
    f.activator.add_revision(KEY, RevisionSettings(0, timeouts))
    if query:
        f.publish([await f.pod("a")])
        await until(lambda: f.activator.healthy(KEY) != [])
    r = await c.get(url + "/" + query, headers=_rev())
    assert r.status_code == want and r.text == "activator request timeout"
    throttler = f.activator.throttler(KEY)
    assert throttler is not None
    await until(lambda: throttler.in_flight == 0, what="slot released after the timeout")


async def test_idle_timeout_after_start_aborts(front: tuple[Front, httpx.AsyncClient, str]) -> None:
    f, c, url = front
    f.activator.add_revision(KEY, RevisionSettings(0, RequestTimeouts(10, 10, 0.3)))
    f.publish([await f.pod("a")])
    await until(lambda: f.activator.healthy(KEY) != [])
    async with c.stream("GET", url + "/?stream=5", headers=_rev()) as r:
        assert r.status_code == 200
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async for _ in r.aiter_bytes():
                pass


async def test_cold_start_header_and_queue_full(front: tuple[Front, httpx.AsyncClient, str]) -> None:
    f, c, url = front
    f.activator._queue_depth = 3  # a small bound for this test
    f.activator.add_revision(KEY, RevisionSettings(0))
    waiting = [asyncio.create_task(c.get(url, headers=_rev())) for _ in range(3)]
    throttler = f.activator.throttler(KEY)
    assert throttler is not None
    await until(lambda: throttler.queued == 3, what="3 queued")
    r = await c.get(url, headers=_rev())
    assert r.status_code == 503 and "pending request queue full" in r.text
    f.publish([await f.pod("a")])
    done = await asyncio.gather(*waiting)
    assert all(d.status_code == 200 and float(d.headers["x-zeroscale-cold-start"]) > 0 for d in done)


async def test_client_gone_leaves_the_queue(front: tuple[Front, httpx.AsyncClient, str]) -> None:
    f, _, url = front
    f.activator.add_revision(KEY, RevisionSettings(1))
    throttler = f.activator.throttler(KEY)
    assert throttler is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nKnative-Serving-Namespace: default\r\n"
        b"Knative-Serving-Revision: r-00001\r\n\r\n"
    )
    await until(lambda: throttler.queued == 1)
    writer.close()
    await until(
        lambda: throttler.queued == 0 and throttler.in_flight == 0, what="waiter gone with its client"
    )
    del reader


async def test_direct_mode_skips_the_throttler(front: tuple[Front, httpx.AsyncClient, str]) -> None:
    f, c, _ = front
    f.activator.add_revision(KEY, RevisionSettings(1))
    f.publish([await f.pod("a")])
    await until(lambda: f.activator.healthy(KEY) != [])
    server = await serve(
        lambda req, resp: f.activator.forward_direct(KEY, req, resp, list(req.headers.items)), "127.0.0.1", 0
    )
    try:
        r = await c.get(f"http://127.0.0.1:{server.port}/", headers=_rev())
        seen = dict((k.lower(), v) for k, v in r.json()["headers"])
        assert r.status_code == 200 and "k-proxy-request" not in seen
    finally:
        await server.shutdown(1)


@pytest.mark.parametrize(
    ("probe", "status", "body"),
    [
        pytest.param({"K-Network-Probe": "activator"}, 200, "activator", id="activator-probe"),
        pytest.param({"K-Network-Probe": "probe", "K-Network-Hash": "abc"}, 200, "abc", id="hash-probe"),
        pytest.param({"K-Network-Probe": "probe"}, 400, "no K-Network-Hash provided", id="hash-missing"),
        pytest.param({"K-Network-Probe": "what"}, 400, "unexpected probe header value: what", id="bad-probe"),
        pytest.param({"User-Agent": "kube-probe/1.30"}, 200, "ok", id="kubelet"),
    ],
)
async def test_standalone_probes(
    front: tuple[Front, httpx.AsyncClient, str], probe: dict[str, str], status: int, body: str
) -> None:
    _, c, url = front
    r = await c.get(url, headers=probe)
    assert (r.status_code, r.text) == (status, body)


def test_toward_pod_keeps_an_existing_original_host() -> None:
    out = toward_pod(
        [(b"host", b"a"), (b"k-original-host", b"orig"), (b"knative-serving-revision", b"r")], b"a"
    )
    assert out == [(b"k-original-host", b"orig"), (b"k-proxy-request", b"activator")]


class _Req:
    def __init__(self, host: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        from serving.httpserver import Headers

        self.host = host
        self.headers = Headers(headers)


@pytest.mark.parametrize(
    ("host", "headers", "want"),
    [
        pytest.param(
            b"x",
            [(b"knative-serving-namespace", b"ns"), (b"knative-serving-revision", b"r")],
            ("ns", "r"),
            id="headers",
        ),
        pytest.param(b"r-1.ns.svc.cluster.local:80", [], ("ns", "r-1"), id="host"),
        pytest.param(b"r-1.ns.example.com", [], None, id="other-host"),
        pytest.param(b"a.b.c.svc.cluster.local", [], None, id="too-many-labels"),
        pytest.param(b"x", [(b"knative-serving-revision", b"r")], None, id="half-headers"),
    ],
)
def test_revision_from_request(
    host: bytes, headers: list[tuple[bytes, bytes]], want: tuple[str, str] | None
) -> None:
    got = revision_from_request(_Req(host, headers))  # type: ignore[arg-type]
    assert got == (RevisionKey(*want) if want else None)


async def test_h2c_revision_is_forwarded_over_h2c(front: tuple[Front, httpx.AsyncClient, str]) -> None:
    from serving.h2server import serve_h2

    f, c, url = front
    seen: list[bytes] = []

    async def h2_pod(req: Request, resp: Responder) -> None:
        seen.append(req.version)
        await resp.send(200, b"over h2c", headers=[(b"x-proto", req.version)])

    pod = await serve_h2(h2_pod, "127.0.0.1", 0)
    try:
        f.activator.add_revision(KEY, RevisionSettings(0, protocol="h2c"))
        f.publish([Endpoint("h2-pod", "127.0.0.1", pod.port)])
        r = await c.get(url, headers=_rev())
        assert r.status_code == 200 and r.text == "over h2c"
        assert seen and seen[0].startswith(b"2")
    finally:
        await pod.shutdown(1)


def test_bad_protocol_named() -> None:
    with pytest.raises(ValueError, match="protocol must be http1 or h2c, got 'grpc'"):
        RevisionSettings(protocol="grpc")


def test_toward_pod_cannot_be_stripped_by_connection() -> None:
    out = toward_pod([(b"connection", b"k-proxy-request, k-original-host"), (b"te", b"trailers, gzip")], b"h")
    assert out == [(b"te", b"trailers"), (b"k-original-host", b"h"), (b"k-proxy-request", b"activator")]


async def test_websocket_to_an_h2c_revision_goes_over_http1() -> None:
    """An h2c (gRPC) revision's pods get HTTP/2, but a websocket upgrade has no HTTP/2 form here."""
    import aiohttp
    from aiohttp import web

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str("pod:" + msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws_echo)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    pod_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    f = Front()
    url = await f.start()
    try:
        f.activator.add_revision(KEY, RevisionSettings(0, RequestTimeouts(30, 30, 0), "h2c"))
        f.publish([Endpoint("ws-pod", "127.0.0.1", pod_port)])
        hdrs = {"Knative-Serving-Namespace": "default", **_rev()}
        async with aiohttp.ClientSession() as s, s.ws_connect(url + "/ws", headers=hdrs) as ws:
            await ws.send_str("hi")
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.data == "pod:hi"
    finally:
        await f.close()
        await runner.cleanup()
