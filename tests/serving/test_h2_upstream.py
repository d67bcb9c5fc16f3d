"""forward_h2 and the h2c pool against scripted upstreams: refused streams retried once, GOAWAY from
the app, idle connections closed on both ends, request trailers relayed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from serving.h2_guard import NO_ERROR
from serving.h2server import AutoServer, H2Limits, serve_auto, serve_h2
from serving.h2upstream import H2Upstream, forward_h2
from serving.httpserver import Request, Responder
from serving.upstream import UpstreamError
from tests.fakes.grpc_frames import GOAWAY, RawH2, h2_request
from tests.util import until

Script = Callable[[int, h2.connection.H2Connection, h2.events.Event], None]


class ScriptedUpstream(asyncio.Protocol):
    """An h2c server passing each request's HEADERS and DATA events to script(conn number, conn, event)."""

    connections = 0

    def __init__(self, script: Script) -> None:
        self.script = script
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        ScriptedUpstream.connections += 1
        self.number = ScriptedUpstream.connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id or 0)
            if isinstance(ev, (h2.events.RequestReceived, h2.events.DataReceived)):
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.script(self.number, self.conn, ev)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())


def _ok(conn: h2.connection.H2Connection, sid: int, body: bytes) -> None:
    conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
    conn.send_data(sid, body, end_stream=True)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], asyncio.Future[tuple[AutoServer, H2Upstream]]]]:
    closers: list[Callable[[], object]] = []

    async def make(script: Script) -> tuple[AutoServer, H2Upstream]:
        ScriptedUpstream.connections = 0
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ScriptedUpstream(script), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        up = H2Upstream("127.0.0.1", port)

        async def handler(req: Request, resp: Responder) -> None:
            try:
                await forward_h2(req, resp, up, req.headers.items)
            except UpstreamError as e:
                if not resp.started:
                    await resp.send(502, str(e))

        proxy = await serve_auto(handler, "127.0.0.1", 0)
        closers.extend([server.close, lambda: proxy.shutdown(1.0), up.close])
        return proxy, up

    try:
        yield make  # type: ignore[misc]
    finally:
        for close in reversed(closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result


async def test_refused_stream_is_sent_again_on_a_new_connection(scripted: Callable[..., object]) -> None:
    def script(n: int, conn: h2.connection.H2Connection, ev: h2.events.Event) -> None:
        if not isinstance(ev, h2.events.RequestReceived):
            return
        if n == 1:
            conn.reset_stream(ev.stream_id or 0, h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            _ok(conn, ev.stream_id or 0, b"from connection %d" % n)

    proxy, _ = await scripted(script)  # type: ignore[misc]
    status, _, body, _ = await h2_request(proxy.port, b"/x")
    assert (status, body) == (200, b"from connection 2")


async def test_goaway_refuses_the_streams_above_its_last_id(scripted: Callable[..., object]) -> None:
    def script(n: int, conn: h2.connection.H2Connection, ev: h2.events.Event) -> None:
        if not isinstance(ev, h2.events.RequestReceived):
            return
        if n == 1:
            conn.close_connection(NO_ERROR, last_stream_id=0)  # "I processed nothing"
        else:
            _ok(conn, ev.stream_id or 0, b"retried")

    proxy, up = await scripted(script)  # type: ignore[misc]
    status, _, body, _ = await h2_request(proxy.port, b"/x")
    assert (status, body) == (200, b"retried")
    assert up.connections == 1  # the one that said GOAWAY left the pool


async def test_a_request_whose_body_was_consumed_is_not_sent_twice(scripted: Callable[..., object]) -> None:
    seen: list[int] = []

    def script(n: int, conn: h2.connection.H2Connection, ev: h2.events.Event) -> None:
        # refused only once body bytes arrived: the proxy has consumed some, it cannot send them again
        if isinstance(ev, h2.events.DataReceived) and n not in seen:
            seen.append(n)
            conn.reset_stream(ev.stream_id or 0, h2.errors.ErrorCodes.REFUSED_STREAM)

    proxy, _ = await scripted(script)  # type: ignore[misc]
    status, _, body, _ = await h2_request(proxy.port, b"/x", method=b"POST", body=b"y" * 200_000)
    assert status == 502 and b"REFUSED_STREAM" in body
    assert seen == [1]


async def test_request_trailers_are_relayed() -> None:
    got: list[tuple[bytes, bytes]] = []

    async def app(req: Request, resp: Responder) -> None:
        while await req.read():
            pass
        got.extend(getattr(req, "trailers", []))
        await resp.send(200, b"ok")

    app_srv = await serve_h2(app, "127.0.0.1", 0)
    up = H2Upstream("127.0.0.1", app_srv.port)

    async def proxy_handler(req: Request, resp: Responder) -> None:
        await forward_h2(req, resp, up, req.headers.items)

    proxy = await serve_h2(proxy_handler, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(
            1, [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"t")]
        )
        conn.send_data(1, b"body")
        conn.send_headers(1, [(b"x-checksum", b"abc")], end_stream=True)
        writer.write(conn.data_to_send())
        async with asyncio.timeout(10):
            ended = False
            while not ended:
                data = await reader.read(65536)
                assert data
                ended = any(isinstance(ev, h2.events.StreamEnded) for ev in conn.receive_data(data))
                writer.write(conn.data_to_send())
        assert got == [(b"x-checksum", b"abc")]
    finally:
        writer.close()
        await proxy.shutdown(1.0)
        await up.close()
        await app_srv.shutdown(1.0)


async def test_idle_connections_are_closed_on_both_ends() -> None:
    async def app(req: Request, resp: Responder) -> None:
        await resp.send(200, b"ok")

    srv = await serve_h2(app, "127.0.0.1", 0, limits=H2Limits(idle_timeout=0.3))
    up = H2Upstream("127.0.0.1", srv.port, idle_timeout=0.3)

    async def handler(req: Request, resp: Responder) -> None:
        await forward_h2(req, resp, up, req.headers.items)

    proxy = await serve_h2(handler, "127.0.0.1", 0)
    try:
        status, _, body, _ = await h2_request(proxy.port, b"/x")
        assert (status, body) == (200, b"ok") and up.connections == 1
        await until(lambda: up.connections == 0, what="the pool dropped its idle connection")
        await until(lambda: not srv.connections, what="the app side closed too")
        status, _, body, _ = await h2_request(proxy.port, b"/x")  # and dials afresh
        assert (status, body) == (200, b"ok")
        raw = await RawH2.connect(srv.port)  # a client that opens no stream is sent away
        try:
            f = await raw.next_frame()
            while f is not None and f.type != GOAWAY:
                f = await raw.next_frame()
            assert f is not None and f.payload[4:8] == b"\x00\x00\x00\x00"
        finally:
            raw.close()
    finally:
        await proxy.shutdown(1.0)
        await up.close()
        await srv.shutdown(1.0)


async def test_closing_the_pool_lets_running_streams_finish() -> None:
    """A pod leaving the endpoints keeps serving what it has: close() refuses new streams only."""
    release = asyncio.Event()

    async def app(req: Request, resp: Responder) -> None:
        await resp.start(200, [])
        await resp.write(b"first;")
        await release.wait()
        await resp.write(b"second")

    app_srv = await serve_h2(app, "127.0.0.1", 0)
    up = H2Upstream("127.0.0.1", app_srv.port)

    async def handler(req: Request, resp: Responder) -> None:
        try:
            await forward_h2(req, resp, up, req.headers.items)
        except UpstreamError as e:
            if not resp.started:
                await resp.send(502, str(e))

    proxy = await serve_h2(handler, "127.0.0.1", 0)
    try:
        call = asyncio.create_task(h2_request(proxy.port, b"/long"))
        await until(lambda: up.in_use == 1, what="the long call under way")
        await up.close()
        status, _, body, _ = await h2_request(proxy.port, b"/new")
        assert status == 502 and b"closed" in body
        release.set()
        status, _, body, _ = await call
        assert (status, body) == (200, b"first;second")
        await until(lambda: not app_srv.connections, what="the pool's connection closed after its stream")
    finally:
        release.set()
        await proxy.shutdown(1.0)
        up.abort()
        await app_srv.shutdown(1.0)


async def test_probe_an_h2c_app() -> None:
    async def app(req: Request, resp: Responder) -> None:
        if req.target == b"/ready" and req.headers.get(b"k-kubelet-probe") == b"queue":
            await resp.start(200, [])
            await resp.write(b"x" * 100_000)  # not read by the probe
            return
        await resp.send(503, b"no")

    srv = await serve_h2(app, "127.0.0.1", 0)
    up = H2Upstream("127.0.0.1", srv.port)
    try:
        assert await up.probe(b"/ready", [(b"k-kubelet-probe", b"queue")]) == 200
        assert await up.probe(b"/other") == 503
        await until(lambda: up.in_use == 0, what="probe streams closed")
        dead = H2Upstream("127.0.0.1", 1)
        with pytest.raises(UpstreamError, match="dial tcp"):
            await dead.probe(b"/ready")
    finally:
        await up.close()
        await srv.shutdown(1.0)
