"""The engine's callback-only path (HttpServer.fast + upstream.forward_fast): taken for a GET over a
free pooled connection, the task path otherwise, and the same answers either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from serving.httpserver import FastRequest, HttpServer, Request, Responder, serve
from serving.upstream import Upstream, forward, forward_fast


class App(asyncio.Protocol):
    """An upstream that answers each request head with ``ok <n>``."""

    served = 0
    conns: list[App] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        App.conns.append(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            App.served += 1
            body = b"ok %d" % App.served
            if head.startswith(b"POST"):
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.buf = self.buf[length:]
            self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[HttpServer, list[bytes], Upstream]]:
    loop = asyncio.get_running_loop()
    app_srv = await loop.create_server(App, "127.0.0.1", 0)
    port = app_srv.sockets[0].getsockname()[1]
    pool = Upstream("127.0.0.1", port)
    slow: list[bytes] = []

    async def handler(req: Request, resp: Responder) -> None:
        slow.append(req.method)
        await forward(req, resp, pool, req.headers.items)

    def fast(req: Request, resp: Responder, marker: FastRequest) -> bool:
        return forward_fast(req, resp, pool, req.headers.items, marker) is not None

    srv = await serve(handler, "127.0.0.1", 0)
    srv.fast = fast
    try:
        yield srv, slow, pool
    finally:
        await srv.shutdown(1)
        await pool.close()
        app_srv.close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bytes, bytes]:
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


async def test_gets_over_a_pooled_connection_take_the_callback_path(
    proxy: tuple[HttpServer, list[bytes], Upstream],
) -> None:
    srv, slow, pool = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        get = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
        head, body = await _exchange(reader, writer, get)
        assert head.startswith(b"HTTP/1.1 200 ") and body.startswith(b"ok ")
        assert slow == [b"GET"]  # no pooled connection yet: the task path, which fills the pool
        for _ in range(3):
            head, body = await _exchange(reader, writer, get)
            assert head.startswith(b"HTTP/1.1 200 ") and body.startswith(b"ok ")
        assert slow == [b"GET"]  # the next three never reached the handler
        post = b"POST /y HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
        head, body = await _exchange(reader, writer, post)
        assert head.startswith(b"HTTP/1.1 200 ") and slow == [b"GET", b"POST"]  # a body: the task path
        assert srv.active == 0 and pool.in_use == 0
    finally:
        writer.close()


async def test_a_pooled_connection_the_app_closed_is_retried_once(
    proxy: tuple[HttpServer, list[bytes], Upstream],
) -> None:
    srv, _, pool = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        get = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
        await _exchange(reader, writer, get)
        assert pool.idle == 1
        # the app closes the idle connection: whether or not the pool has seen it yet (the keep-alive
        # race), the next GET is answered, on a new connection
        App.conns[-1].t.close()
        head, body = await _exchange(reader, writer, get)
        assert head.startswith(b"HTTP/1.1 200 ") and body.startswith(b"ok ")
        assert srv.active == 0
    finally:
        writer.close()


async def test_a_hook_may_hand_the_request_to_a_task_of_its_own_choosing() -> None:
    """A hook that decided something the handler must not decide again (a traffic split's pick)
    returns what a task runs instead of the handler."""
    handled: list[bytes] = []
    decided: list[bytes] = []

    async def handler(req: Request, resp: Responder) -> None:
        handled.append(req.target)
        await resp.send(200, b"handler")

    async def chosen(req: Request, resp: Responder, pick: bytes) -> None:
        decided.append(req.target)
        await resp.send(200, b"picked " + pick)

    def fast(req: Request, resp: Responder, marker: FastRequest) -> bool | Awaitable[None]:
        if req.target == b"/decide":
            return chosen(req, resp, b"b")
        return False

    srv = await serve(handler, "127.0.0.1", 0)
    srv.fast = fast
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        _, body = await _exchange(reader, writer, b"GET /decide HTTP/1.1\r\nHost: h\r\n\r\n")
        assert body == b"picked b" and decided == [b"/decide"] and handled == []
        _, body = await _exchange(reader, writer, b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n")
        assert body == b"handler" and handled == [b"/other"]
        assert srv.active == 0 and srv.fast_taken == 0
    finally:
        writer.close()
        await srv.shutdown(1)
