"""One port for HTTP/1.1 and h2c (serve_auto): the Upgrade switch to stream 1, bad HTTP2-Settings,
and HTTP/1.1 bytes that must pass the sniffer untouched."""

from __future__ import annotations

import asyncio
import contextlib

import h2.config
import h2.connection
import h2.events
import pytest

from serving.h2server import H2Server, serve_auto
from tests.fakes.grpc_frames import h2_request
from tests.serving.test_h2_server import App, h2app
from tests.util import until

__all__ = ["h2app"]  # the fixture, shared with test_h2_server


async def test_upgrade_to_h2c_serves_the_request_as_stream_1(h2app: tuple[H2Server, App]) -> None:
    srv = await serve_auto(h2app[1], "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        settings = conn.initiate_upgrade_connection()
        assert settings is not None
        writer.write(
            b"GET /up HTTP/1.1\r\nHost: up.example\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(conn.data_to_send())  # the client preface and SETTINGS
        bodies: dict[int, bytes] = {1: b"", 3: b""}
        ended: set[int] = set()
        async with asyncio.timeout(10):
            while ended != {1, 3}:
                data = await reader.read(65536)
                assert data, "server closed the connection"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        bodies[ev.stream_id or 0] += ev.data or b""
                    elif isinstance(ev, h2.events.StreamEnded):
                        ended.add(ev.stream_id or 0)
                        if ev.stream_id == 1:  # the same connection goes on as HTTP/2
                            conn.send_headers(
                                3,
                                [
                                    (b":method", b"GET"),
                                    (b":path", b"/next"),
                                    (b":scheme", b"http"),
                                    (b":authority", b"up.example"),
                                ],
                                end_stream=True,
                            )
                writer.write(conn.data_to_send())
        assert bodies[1].startswith(b"version=2 method=GET target=/up host=up.example body=0")
        assert bodies[3].startswith(b"version=2 method=GET target=/next")
    finally:
        writer.close()
        await srv.shutdown(1.0)


async def test_http11_pipelined_requests_pass_the_sniffer_untouched(h2app: tuple[H2Server, App]) -> None:
    srv = await serve_auto(h2app[1], "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        )
        data = b""
        async with asyncio.timeout(10):
            while data.count(b"x-trailer: yes") < 2:
                chunk = await reader.read(65536)
                assert chunk, "server closed the connection"
                data += chunk
        assert b"version=1.1 method=GET target=/one host=a body=0" in data
        assert b"version=1.1 method=POST target=/two host=a body=2" in data
    finally:
        writer.close()
        await srv.shutdown(1.0)


@pytest.mark.parametrize(
    "settings",
    [b"AAQAAAAA_", b"AAMAAA", b"AAIAAAAC"],
    ids=["bad-base64", "not-6-byte-entries", "enable-push-2"],
)
async def test_upgrade_with_bad_http2_settings_is_a_400(h2app: tuple[H2Server, App], settings: bytes) -> None:
    srv = await serve_auto(h2app[1], "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: " + settings + b"\r\n\r\n"
        )
        async with asyncio.timeout(10):
            answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b"invalid HTTP2-Settings header")
        status, _, _, _ = await h2_request(srv.port, b"/info")  # the listener goes on
        assert status == 200
    finally:
        writer.close()
        await srv.shutdown(1.0)


async def test_shutdown_closes_connections_that_never_spoke(h2app: tuple[H2Server, App]) -> None:
    srv = await serve_auto(h2app[1], "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(b"GET / HT")  # neither protocol can be told yet
        await until(lambda: len(srv.sniffing) == 1, what="the connection waits in the sniffer")
        await srv.shutdown(1.0)
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):  # closed is closed, FIN or RST
                assert await reader.read() == b""
        assert not srv.sniffing
    finally:
        writer.close()
