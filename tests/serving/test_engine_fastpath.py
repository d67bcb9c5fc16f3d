"""The engine's fast paths keep its guarantees: a client that pipelines without reading is held to one
answer past the high-water mark; pipelined answers stay in order; buffered upstream answers (written
head, body and end at once) are framed right; deadlines come from the server's sweep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from serving.httpserver import HttpServer, Request, Responder, ServerLimits, serve
from serving.upstream import Upstream, forward
from tests.util import until

BODY = 256 * 1024


class _App(asyncio.Protocol):
    """Answers GET /N with BODY bytes of the digit N % 10 (so order can be checked), /chunked in chunks."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1]
            if path == b"/chunked":
                self.t.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                )
                continue
            if path == b"/keepalive-hop":
                self.t.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nX-End: 2\r\n"
                             b"Content-Length: 2\r\n\r\nok")  # fmt: skip
                continue
            digit = b"%d" % (int(path[1:]) % 10)
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (BODY, digit * BODY))


class Env:
    def __init__(self, server: HttpServer, app_port: int) -> None:
        self.server = server
        self.app_port = app_port


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    loop = asyncio.get_running_loop()
    app = await loop.create_server(_App, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    pool = Upstream("127.0.0.1", app_port)

    async def handler(req: Request, resp: Responder) -> None:
        await forward(req, resp, pool, req.headers.items)

    server = await serve(
        handler, "127.0.0.1", 0, limits=ServerLimits(header_timeout=0.3, keepalive_timeout=0.3)
    )
    try:
        yield Env(server, app_port)
    finally:
        await server.shutdown(1)
        await pool.close()
        app.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


async def test_a_client_pipelining_without_reading_is_held_to_one_answer(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port, limit=1 << 20)
    n = 60  # 15 MiB of answers if nothing held them back
    try:
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
        await writer.drain()
        await until(lambda: len(env.server.connections) == 1, what="connection accepted")
        (conn,) = env.server.connections
        # the engine stops answering (and reading) once the client's socket is full: no request in
        # progress while writing is paused (without the hold, every answer would be written first)
        await until(lambda: conn._paused_writing and conn._task is None, what="writing paused, idle")
        assert len(conn._pipeline) > 0
        assert conn.transport is not None
        buffered = conn.transport.get_write_buffer_size()
        assert buffered <= 2 * BODY + 65536, buffered  # one answer past the high-water mark, not n
        for i in range(n):  # then every answer arrives, complete and in order
            head, body = await asyncio.wait_for(_read_response(reader), 30)
            assert head.startswith(b"HTTP/1.1 200") and len(body) == BODY and body[:1] == b"%d" % (i % 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_buffered_answers_keep_their_framing(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    try:
        writer.write(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"transfer-encoding: chunked" in head.lower()
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10) == b"5\r\nabcde\r\n0\r\n\r\n"
        # hop-by-hop fields of the answer, and those its Connection names, are not relayed
        writer.write(b"GET /keepalive-hop HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await asyncio.wait_for(_read_response(reader), 10)
        low = head.lower()
        assert body == b"ok" and b"x-end: 2" in low and b"x-hop" not in low and b"keep-alive" not in low
        # HEAD: the head only, with the upstream's length, and the connection stays usable
        writer.write(b"HEAD /3 HTTP/1.1\r\nHost: x\r\n\r\nGET /4 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % BODY in head.lower()
        head, body = await asyncio.wait_for(_read_response(reader), 10)
        assert body[:1] == b"4" and len(body) == BODY
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_deadlines_from_the_sweep(env: Env) -> None:
    # an idle keep-alive connection is closed after keepalive_timeout; a slow head gets 408
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(_read_response(reader), 10)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server, idle
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    data = await asyncio.wait_for(reader.read(), 10)
    assert data.startswith(b"HTTP/1.1 408")
    writer.close()
