"""The HTTP/1.1 engine (serving.httpserver + serving.upstream) against a real aiohttp upstream on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from serving.httpserver import HttpServer, Request, Responder, ServerLimits, serve
from serving.upstream import Upstream, UpstreamError, forward

RELEASE = web.AppKey("release", asyncio.Event)


async def _upstream_app() -> web.Application:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.method} {request.path_qs}")

    async def echo(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({k.lower(): v for k, v in request.headers.items()})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await request.app[RELEASE].wait()
        await resp.write(b"data: last\n\n")
        await resp.write_eof()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
        return sock

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "10")))
        return web.Response(text="slow")

    app[RELEASE] = asyncio.Event()
    app.router.add_route("*", "/", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/headers", headers)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws)
    app.router.add_get("/slow", slow)
    return app


class Env:
    def __init__(
        self, server: HttpServer, upstream: Upstream, app: web.Application, calls: list[str]
    ) -> None:
        self.server = server
        self.upstream = upstream
        self.app = app
        self.calls = calls

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    app = await _upstream_app()
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up = Upstream("127.0.0.1", port)
    calls: list[str] = []

    async def handler(req: Request, resp: Responder) -> None:
        calls.append("start")
        try:
            if req.target == b"/local":
                await resp.send(200, b"local")
                return
            hdrs = [*req.headers.items, (b"x-via-engine", b"1")]
            try:
                await forward(req, resp, up, hdrs)
            except UpstreamError as e:
                if not e.started:
                    await resp.send(502, str(e))
        except asyncio.CancelledError:
            calls.append("cancelled")
            raise

    server = await serve(
        handler, "127.0.0.1", 0, limits=ServerLimits(header_timeout=1.0, max_header_bytes=8192)
    )
    try:
        yield Env(server, up, app, calls)
    finally:
        app[RELEASE].set()
        await server.shutdown(1.0)
        await up.close()
        await runner.cleanup()


async def test_get_keep_alive_and_headers(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            async with s.get(env.url + f"/?i={i}") as r:
                assert r.status == 200
                assert await r.text() == f"hello GET /?i={i}"
        async with s.get(
            env.url + "/headers", headers={"Connection": "keep-alive, X-Drop", "X-Drop": "1"}
        ) as r:
            got = await r.json()
    assert got["x-via-engine"] == "1"
    async with aiohttp.ClientSession() as s, s.get(env.url + "/") as r:
        assert len(r.headers.getall("Date")) == 1  # the upstream's Date is relayed, not doubled
    assert "x-drop" not in got  # named in Connection: hop-by-hop
    assert env.upstream.idle >= 1  # upstream connections are pooled


async def test_streaming_body_both_ways(env: Env) -> None:
    chunks = [bytes([i]) * 65536 for i in range(32)]  # 2 MiB, chunked upload

    async def gen() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    async with aiohttp.ClientSession() as s:
        async with s.post(env.url + "/echo", data=gen()) as r:
            body = await r.read()
        assert body == b"".join(chunks)
        async with s.post(env.url + "/echo", data=b"x" * 100000) as r:  # content-length upload
            assert await r.read() == b"x" * 100000


async def test_first_event_arrives_before_stream_ends(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(env.url + "/stream") as r:
            first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
            assert first == b"data: first\n\n"
            env.app[RELEASE].set()
            assert await r.content.read() == b"data: last\n\n"


async def test_websocket_through_the_engine(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(env.url + "/ws") as ws:
            for i in range(3):
                await ws.send_str(f"m{i}")
                msg = await asyncio.wait_for(ws.receive(), 5)
                assert msg.data == f"echo:m{i}"
    assert env.server.active <= 1


async def test_upstream_down_is_502() -> None:
    up = Upstream("127.0.0.1", 1)  # nothing listens on port 1

    async def handler(req: Request, resp: Responder) -> None:
        try:
            await forward(req, resp, up, req.headers.items)
        except UpstreamError as e:
            await resp.send(502, str(e))

    server = await serve(handler, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/") as r:
            assert r.status == 502
            assert "dial tcp 127.0.0.1:1" in await r.text()
    finally:
        await server.shutdown(1)


async def test_client_disconnect_cancels_the_handler(env: Env) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(b"GET /slow?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await _until(lambda: env.calls == ["start"])
    writer.close()
    await _until(lambda: "cancelled" in env.calls)
    await _until(lambda: env.server.active == 0)
    assert env.upstream.in_use == 0  # the abandoned upstream connection was closed, not leaked


async def test_pipelined_requests_answered_in_order(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(
        b"GET /?a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /local HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /?c HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await writer.drain()
    data = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"hello GET /?c"):
                data += await reader.read(65536)
    writer.close()
    a, b, c = data.index(b"hello GET /?a"), data.index(b"local"), data.index(b"hello GET /?c")
    assert a < b < c


BAD_REQUESTS = [
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="bad-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400, id="space-in-header-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400, id="nul-in-header-value"),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        id="cl-and-te",
    ),
    pytest.param(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        id="dup-cl",
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, id="header-too-large"),
    pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, id="url-too-long"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
    pytest.param(b"GET / HTTP/1.1\nHost: x\n\n", 400, id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400, id="bare-cr"),
    pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, id="connect"),
    pytest.param(b"GET /\r\nHost: x\r\n\r\n", 400, id="http-0.9"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, id="http-2.0-as-text"),
]


@pytest.mark.parametrize(("raw", "status"), BAD_REQUESTS)
async def test_malformed_input_gets_4xx_and_never_reaches_the_handler(
    env: Env, raw: bytes, status: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(raw)
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()  # the server closes the connection
    writer.close()
    assert data.startswith(b"HTTP/1.1 %d" % status), data[:200]
    assert env.calls == []
    async with aiohttp.ClientSession() as s, s.get(env.url + "/") as r:  # still serving others
        assert r.status == 200


async def test_slow_header_client_gets_408(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(b"GET / HTTP/1.1\r\nHo")
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    assert data.startswith(b"HTTP/1.1 408")


async def test_dead_pooled_connection_is_retried_once() -> None:
    """An upstream that closes a keep-alive connection right after answering (the 502 keep-alive race)."""
    served = 0

    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()  # without announcing connection: close

    upstream_srv = await asyncio.start_server(one_shot, "127.0.0.1", 0)
    up = Upstream("127.0.0.1", upstream_srv.sockets[0].getsockname()[1])

    async def handler(req: Request, resp: Responder) -> None:
        await forward(req, resp, up, req.headers.items)

    server = await serve(handler, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(f"http://127.0.0.1:{server.port}/") as r:
                    assert r.status == 200 and await r.text() == "ok"
                await _until(lambda: up.idle == 0 or all(c.closed for c in up._idle))
        assert served == 3
    finally:
        await server.shutdown(1)
        upstream_srv.close()
        await up.close()


async def test_only_replayable_requests_are_sent_again_when_a_pooled_connection_dies() -> None:
    """A pooled connection that dies after the upstream read the request: a GET may go again on a
    fresh connection, a POST must not (it may have run); its error is not a connect failure."""
    seen: list[bytes] = []

    async def second_request_dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            for n in (1, 2):
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b" ", 1)[0])
                if n == 2:
                    break  # read, maybe acted on, never answered
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    upstream_srv = await asyncio.start_server(second_request_dies, "127.0.0.1", 0)
    up = Upstream("127.0.0.1", upstream_srv.sockets[0].getsockname()[1])
    errors: list[UpstreamError] = []

    async def handler(req: Request, resp: Responder) -> None:
        try:
            await forward(req, resp, up, req.headers.items)
        except UpstreamError as e:
            errors.append(e)
            await resp.send(502, str(e))

    server = await serve(handler, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:  # opens the pooled connection
                assert r.status == 200
            async with s.post(url) as r:  # the connection's second request: dies unanswered
                assert r.status == 502
            assert seen == [b"GET", b"POST"]  # not sent again
            assert len(errors) == 1 and not errors[0].connect
            async with s.get(url) as r:  # a new pooled connection
                assert r.status == 200
            async with s.get(url) as r:  # dies on the pooled one, answered on a fresh one
                assert r.status == 200
            assert seen == [b"GET", b"POST", b"GET", b"GET", b"GET"]
    finally:
        await server.shutdown(1)
        upstream_srv.close()
        await up.close()


async def test_the_retry_after_a_dead_pooled_connection_dials_anew() -> None:
    """Several pooled connections the app is closing at once (the keep-alive race under load): the one
    retry must not take another of them, or the request fails after all."""
    firsts: list[bytes] = []
    both_in = asyncio.Event()

    async def answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            firsts.append(await reader.readuntil(b"\r\n\r\n"))
            if len(firsts) == 2:
                both_in.set()
            await both_in.wait()  # the first two requests overlap: two connections go to the pool
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # a second request on this connection: dropped
        writer.close()

    upstream_srv = await asyncio.start_server(answers_once, "127.0.0.1", 0)
    up = Upstream("127.0.0.1", upstream_srv.sockets[0].getsockname()[1])

    async def handler(req: Request, resp: Responder) -> None:
        try:
            await forward(req, resp, up, req.headers.items)
        except UpstreamError as e:
            await resp.send(502, str(e))

    server = await serve(handler, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/"
    try:
        async with aiohttp.ClientSession() as s:

            async def get() -> int:
                async with s.get(url) as r:
                    await r.read()
                    return r.status

            assert await asyncio.gather(get(), get()) == [200, 200]
            assert up.idle == 2
            assert await get() == 200  # dies on one pooled connection, then answered on a new one
            assert len(firsts) == 3
    finally:
        await server.shutdown(1)
        upstream_srv.close()
        await up.close()


async def test_refused_answer_is_not_relayed_and_reads_as_not_sent() -> None:
    """forward(refuse=...): an answer saying the upstream did not take the request (a queue-proxy that
    could not reach its app) is not relayed; the caller may send the request elsewhere."""

    async def not_sent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\nk-zeroscale-not-sent: 1\r\ncontent-length: 4\r\n\r\nnope"
            )
            await writer.drain()
        writer.close()

    upstream_srv = await asyncio.start_server(not_sent, "127.0.0.1", 0)
    up = Upstream("127.0.0.1", upstream_srv.sockets[0].getsockname()[1])
    caught: list[UpstreamError] = []

    def refuse(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        return status == 502 and (b"k-zeroscale-not-sent", b"1") in headers

    async def handler(req: Request, resp: Responder) -> None:
        try:
            await forward(req, resp, up, req.headers.items, refuse=refuse)
        except UpstreamError as e:
            caught.append(e)
            assert not resp.started  # nothing of the refused answer reached the client
            await resp.send(200, b"sent elsewhere")

    server = await serve(handler, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/") as r:
            assert (r.status, await r.text()) == (200, "sent elsewhere")
        assert len(caught) == 1 and caught[0].connect
        assert up.idle == 0  # the connection is not reused
    finally:
        await server.shutdown(1)
        upstream_srv.close()
        await up.close()


async def test_connect_failure_is_marked() -> None:
    up = Upstream("127.0.0.1", 1)  # nothing listens on port 1: nothing of a request can reach it
    with pytest.raises(UpstreamError) as info:
        await up.acquire()
    assert info.value.connect and "dial tcp 127.0.0.1:1" in str(info.value)


async def test_head_request_has_no_body(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.head(env.url + "/") as r:
            assert r.status == 200
        async with s.get(env.url + "/") as r:
            assert await r.text() == "hello GET /"


async def _until(cond: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)
