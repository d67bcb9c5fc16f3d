"""h2c server and forwarding semantics: HTTP/1.1 apps behind h2c clients and the reverse, the Upgrade
switch, request-body flow control, cancellation through the proxy, errors and graceful shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import h2.config
import h2.connection
import h2.events
import pytest
from aiohttp import web

from serving.h2_guard import INTERNAL_ERROR, NO_ERROR, REFUSED_STREAM
from serving.h2server import AutoServer, H2Server, serve_auto, serve_h2
from serving.h2upstream import H2Upstream, forward_h2
from serving.httpserver import Request, Responder
from serving.upstream import Upstream, UpstreamError, forward
from tests.fakes.grpc_frames import DATA, GOAWAY, RST_STREAM, RawH2, h2_request
from tests.util import until


@dataclass
class App:
    """An h2c app: /info describes the request it got, /hold waits, /boom-* fail."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    cancelled: int = 0

    async def __call__(self, req: Request, resp: Responder) -> None:
        if req.target == b"/hold":
            self.running += 1
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.running -= 1
        if req.target == b"/boom-before":
            raise RuntimeError("boom")
        n = 0
        h = hashlib.sha256()
        while data := await req.read():
            n += len(data)
            h.update(data)
        if req.target == b"/boom-after":
            await resp.start(200, [])
            await resp.write(b"partial")
            raise RuntimeError("boom")
        info = b"version=%s method=%s target=%s host=%s body=%d sha=%s" % (
            req.version,
            req.method,
            req.target,
            req.host,
            n,
            h.hexdigest()[:16].encode(),
        )
        await resp.start(200, [(b"content-type", b"text/plain")])
        await resp.write(info)
        await resp.end([(b"x-trailer", b"yes")])


def _proxy_handler(upstream: Upstream | H2Upstream) -> object:
    async def handler(req: Request, resp: Responder) -> None:
        try:
            if isinstance(upstream, H2Upstream):
                await forward_h2(req, resp, upstream, req.headers.items)
            else:
                await forward(req, resp, upstream, req.headers.items)
        except UpstreamError as e:
            if not resp.started:
                await resp.send(502, str(e))

    return handler


@pytest.fixture
async def h2app() -> AsyncIterator[tuple[H2Server, App]]:
    app = App()
    srv = await serve_h2(app, "127.0.0.1", 0)
    try:
        yield srv, app
    finally:
        app.release.set()
        await srv.shutdown(1.0)


@pytest.fixture
async def h2proxy(h2app: tuple[H2Server, App]) -> AsyncIterator[tuple[AutoServer, H2Upstream]]:
    up = H2Upstream("127.0.0.1", h2app[0].port)
    proxy = await serve_auto(_proxy_handler(up), "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        yield proxy, up
    finally:
        await proxy.shutdown(1.0)
        await up.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def test_h2c_request_to_an_http11_app() -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        text = f"{request.version.major}.{request.version.minor} {request.host} {len(body)} {_sha(body)}"
        return web.Response(text=text, headers={"x-app": "aiohttp"})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(b"chunk%d;" % i)
        return resp

    webapp = web.Application()
    webapp.router.add_post("/echo", echo)
    webapp.router.add_get("/stream", stream)
    runner = web.AppRunner(webapp)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    up = Upstream("127.0.0.1", port)
    proxy = await serve_auto(_proxy_handler(up), "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        body = bytes(range(256)) * 1200  # 300 KiB: more than one window
        status, headers, out, _ = await h2_request(proxy.port, b"/echo", method=b"POST", body=body)
        assert status == 200
        assert out.decode() == f"1.1 test {len(body)} {_sha(body)}"  # :authority became Host
        assert (b"x-app", b"aiohttp") in headers
        status, _, out, _ = await h2_request(proxy.port, b"/stream")
        assert (status, out) == (200, b"chunk0;chunk1;chunk2;chunk3;chunk4;")
    finally:
        await proxy.shutdown(1.0)
        await up.close()
        await runner.cleanup()


async def test_http11_client_to_h2c_app_which_sees_http2(h2proxy: tuple[AutoServer, H2Upstream]) -> None:
    proxy, _ = h2proxy
    body = b"z" * 100_000
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{proxy.port}/info?q=1", data=body) as r:
            text = await r.text()
            assert r.status == 200
    assert (
        text
        == f"version=2 method=POST target=/info?q=1 host=127.0.0.1:{proxy.port} body=100000 sha={_sha(body)}"
    )


async def test_h2c_to_h2c_with_trailers(h2proxy: tuple[AutoServer, H2Upstream]) -> None:
    proxy, up = h2proxy
    status, _, out, trailers = await h2_request(proxy.port, b"/info", method=b"PUT", body=b"abc")
    assert status == 200 and out.startswith(b"version=2 method=PUT target=/info host=test body=3")
    assert trailers == [(b"x-trailer", b"yes")]
    body = bytes(range(256)) * 8192  # 2 MiB: many windows both hops
    status, _, out, _ = await h2_request(proxy.port, b"/info", method=b"POST", body=body)
    assert status == 200 and out.endswith(b"body=%d sha=%s" % (len(body), _sha(body).encode()))
    assert up.connections == 1 and up.in_use == 0


async def test_request_body_waits_for_a_slow_handler() -> None:
    """The client may send one stream window ahead of what the handler read, and no more."""
    gate = asyncio.Event()
    read = 0

    async def slow(req: Request, resp: Responder) -> None:
        nonlocal read
        await gate.wait()
        while data := await req.read():
            read += len(data)
        await resp.send(200, b"read=%d" % read)

    srv = await serve_h2(slow, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(
        1, [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"t")]
    )
    writer.write(conn.data_to_send())
    pending = 2 * 1024 * 1024
    sent = 0
    answer = b""
    done = False

    def push() -> None:
        nonlocal pending, sent
        while pending:
            n = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size, pending)
            if n <= 0:
                return
            conn.send_data(1, b"b" * n, end_stream=n == pending)
            pending -= n
            sent += n

    async def run() -> None:
        nonlocal answer, done
        while not done:
            data = await reader.read(65536)
            if not data:
                raise AssertionError("server closed the connection")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    answer += ev.data or b""
                elif isinstance(ev, h2.events.StreamEnded):
                    done = True
            push()
            writer.write(conn.data_to_send())

    task = asyncio.create_task(run())
    try:
        await until(lambda: sent >= 262144, what="one stream window sent")
        assert conn.local_flow_control_window(1) == 0 and sent == 262144  # the server's stream window
        gate.set()
        await asyncio.wait_for(task, 20)
        assert answer == b"read=%d" % (2 * 1024 * 1024)
    finally:
        task.cancel()
        writer.close()
        await srv.shutdown(1.0)


async def test_client_reset_through_the_proxy_cancels_the_app(
    h2app: tuple[H2Server, App], h2proxy: tuple[AutoServer, H2Upstream]
) -> None:
    app_srv, app = h2app
    proxy, up = h2proxy
    raw = await RawH2.connect(proxy.port)
    try:
        raw.send(raw.request(1, b"/hold"))
        await until(lambda: app.running == 1, what="app handler running")
        raw.send(struct.pack(">I", 4)[1:] + bytes((RST_STREAM, 0)) + struct.pack(">II", 1, 8))
        await until(lambda: app.cancelled == 1, what="app handler cancelled by the proxy's RST_STREAM")
        await until(lambda: proxy.active == 0 and app_srv.active == 0 and up.in_use == 0, what="all freed")
    finally:
        raw.close()


async def test_upstream_failures(h2proxy: tuple[AutoServer, H2Upstream]) -> None:
    proxy, _ = h2proxy
    status, _, _, _ = await h2_request(proxy.port, b"/boom-before")
    assert status == 500  # the app's own answer, relayed
    with pytest.raises(ConnectionResetError, match="INTERNAL_ERROR"):
        await h2_request(proxy.port, b"/boom-after")  # cut mid-response: the client's stream is reset
    dead = H2Upstream("127.0.0.1", 1, connect_timeout=2.0)
    srv = await serve_auto(_proxy_handler(dead), "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        status, _, out, _ = await h2_request(srv.port, b"/x")
        assert status == 502 and out.startswith(b"dial tcp 127.0.0.1:1")
    finally:
        await srv.shutdown(1.0)


async def test_graceful_shutdown_finishes_open_streams_and_refuses_new_ones(
    h2app: tuple[H2Server, App],
) -> None:
    srv, app = h2app
    raw = await RawH2.connect(srv.port)
    try:
        raw.send(raw.request(1, b"/hold"))
        await until(lambda: app.running == 1, what="stream 1 running")
        stopping = asyncio.create_task(srv.shutdown(10.0))
        f = await raw.next_frame()
        while f is not None and f.type != GOAWAY:
            f = await raw.next_frame()
        assert f is not None and struct.unpack(">II", f.payload[:8]) == (1, NO_ERROR)
        raw.send(raw.request(3, b"/late"))
        f = await raw.next_frame()
        assert f is not None and (f.type, f.stream_id) == (RST_STREAM, 3)
        assert struct.unpack(">I", f.payload)[0] == REFUSED_STREAM
        app.release.set()
        body = b""
        while (f := await raw.next_frame()) is not None:
            if f.type == DATA and f.stream_id == 1:
                body += f.payload
        assert body.startswith(b"version=2 method=GET target=/hold")
        await asyncio.wait_for(stopping, 10)
    finally:
        raw.close()


async def test_handler_failure_after_start_resets_only_that_stream(h2app: tuple[H2Server, App]) -> None:
    srv, _ = h2app
    raw = await RawH2.connect(srv.port)
    try:
        raw.send(raw.request(1, b"/boom-after") + raw.request(3, b"/info"))
        codes: dict[int, int] = {}
        got3 = b""
        while 1 not in codes or not got3:
            f = await raw.next_frame()
            assert f is not None
            if f.type == RST_STREAM:
                codes[f.stream_id] = struct.unpack(">I", f.payload)[0]
            elif f.type == DATA and f.stream_id == 3:
                got3 += f.payload
        assert codes == {1: INTERNAL_ERROR}
        assert got3.startswith(b"version=2")
    finally:
        raw.close()


async def test_a_stalled_stream_does_not_starve_its_neighbours() -> None:
    """Five requests whose handlers do not read hold five stream windows (more than the 1 MiB connection
    window); a sixth upload on the same connection still goes through."""
    gate = asyncio.Event()

    async def app(req: Request, resp: Responder) -> None:
        if req.target == b"/stall":
            await gate.wait()
        n = 0
        while data := await req.read():
            n += len(data)
        await resp.send(200, b"read=%d" % n)

    srv = await serve_h2(app, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.increment_flow_control_window(8 * 1024 * 1024)
    pending: dict[int, int] = {}
    answers: dict[int, bytes] = {}

    def open_stream(sid: int, path: bytes, size: int) -> None:
        fields = [(b":method", b"POST"), (b":path", path), (b":scheme", b"http"), (b":authority", b"t")]
        conn.send_headers(sid, fields)
        pending[sid] = size

    def push() -> None:
        for sid, left in pending.items():
            while left:
                n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, left)
                if n <= 0:
                    break
                conn.send_data(sid, b"u" * n, end_stream=n == left)
                left -= n
            pending[sid] = left
        writer.write(conn.data_to_send())

    async def run() -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    answers[ev.stream_id or 0] = answers.get(ev.stream_id or 0, b"") + (ev.data or b"")
                    conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id or 0)
            push()

    task = asyncio.create_task(run())
    try:
        for sid in (1, 3, 5, 7, 9):
            open_stream(sid, b"/stall", 512 * 1024)
        push()
        await until(lambda: all(pending[s] == 512 * 1024 - 262144 for s in (1, 3, 5, 7, 9)), what="stalled")
        open_stream(11, b"/flow", 2 * 1024 * 1024)
        push()
        await until(lambda: answers.get(11) == b"read=2097152", what="the sixth upload answered")
        gate.set()
        await until(
            lambda: all(answers.get(s) == b"read=524288" for s in (1, 3, 5, 7, 9)), what="all answered"
        )
    finally:
        task.cancel()
        writer.close()
        await srv.shutdown(1.0)
