"""Malformed and abusive HTTP/2 peers get RFC 9113's answer, and the listener keeps serving others."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from serving.h2_guard import ENHANCE_YOUR_CALM, FRAME_SIZE_ERROR, PROTOCOL_ERROR, REFUSED_STREAM
from serving.h2server import AutoServer, serve_auto
from serving.httpserver import Request, Responder
from tests.fakes.grpc_frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    PRIORITY,
    RST_STREAM,
    RawH2,
    frame,
    h2_request,
    settings_frame,
)
from tests.util import until


class App:
    def __init__(self) -> None:
        self.running = 0
        self.cancelled = 0
        self.release = asyncio.Event()

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
        await resp.send(200, b"ok " + req.target)


@pytest.fixture
async def served() -> AsyncIterator[tuple[AutoServer, App]]:
    app = App()
    srv = await serve_auto(app, "127.0.0.1", 0)
    try:
        yield srv, app
    finally:
        app.release.set()
        await srv.shutdown(1.0)


async def _still_serving(port: int) -> None:
    status, _, body, _ = await h2_request(port, b"/fine")
    assert (status, body) == (200, b"ok /fine")


async def _body(raw: RawH2, sid: int) -> bytes:
    """The DATA of stream sid up to END_STREAM (small answers: no window updates needed)."""
    out = b""
    while True:
        f = await raw.next_frame()
        assert f is not None, "connection closed"
        if f.stream_id == sid and f.type == DATA:
            out += f.payload
        if f.stream_id == sid and f.type in (DATA, HEADERS) and f.flags & END_STREAM:
            return out


def _rst(sid: int, code: int = 8) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def _big_block(raw: RawH2, size: int) -> bytes:
    return raw.header_block(extra=[(b"x-big", b"v" * size)])


CASES = [
    pytest.param(lambda r: r.request(2), PROTOCOL_ERROR, id="even-stream-id-from-client"),
    pytest.param(lambda r: r.request(5) + r.request(3), PROTOCOL_ERROR, id="stream-id-going-down"),
    pytest.param(
        lambda r: frame(HEADERS, END_HEADERS | END_STREAM, 0, r.header_block()),
        PROTOCOL_ERROR,
        id="headers-on-stream-0",
    ),
    pytest.param(lambda r: frame(DATA, END_STREAM, 7, b"x"), PROTOCOL_ERROR, id="data-on-idle-stream"),
    pytest.param(lambda r: frame(DATA, 0, 1, b"", length=16385), FRAME_SIZE_ERROR, id="frame-over-max-size"),
    pytest.param(
        lambda r: frame(DATA, 0, 1, b"", length=2**24 - 1), FRAME_SIZE_ERROR, id="16MiB-frame-header-only"
    ),
    pytest.param(lambda r: settings_frame() * 3000, ENHANCE_YOUR_CALM, id="settings-flood"),
    pytest.param(lambda r: frame(PING, 0, 0, b"12345678") * 3000, ENHANCE_YOUR_CALM, id="ping-flood"),
    pytest.param(
        lambda r: b"".join(
            r.request(sid, b"/hold", end_stream=False) + _rst(sid) for sid in range(1, 4001, 2)
        ),
        ENHANCE_YOUR_CALM,
        id="rapid-reset-flood",
    ),
    pytest.param(
        lambda r: frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10") * 3000,
        ENHANCE_YOUR_CALM,
        id="priority-flood",
    ),
    pytest.param(
        lambda r: frame(HEADERS, 0, 1, _big_block(r, 16000)) + frame(CONTINUATION, 0, 1, b"\x00" * 16000) * 4,
        ENHANCE_YOUR_CALM,
        id="header-block-past-limit",
    ),
    pytest.param(
        # small on the wire, 90 KiB once decoded: one indexed literal referenced again and again
        lambda r: frame(HEADERS, END_HEADERS | END_STREAM, 1, _big_block(r, 3000) + b"\xbe" * 30),
        ENHANCE_YOUR_CALM,
        id="decoded-header-list-past-limit",
    ),
    pytest.param(
        lambda r: frame(HEADERS, 0, 1, r.header_block()) + frame(CONTINUATION, 0, 1) * 200,
        PROTOCOL_ERROR,
        id="continuation-flood",
    ),
    pytest.param(
        lambda r: frame(HEADERS, 0, 1, r.header_block()) + frame(PING, 0, 0, b"12345678"),
        PROTOCOL_ERROR,
        id="frame-inside-header-block",
    ),
]


@pytest.mark.parametrize(("attack", "code"), CASES)
async def test_abusive_peer_gets_goaway_and_others_are_served(
    served: tuple[AutoServer, App], attack: object, code: int
) -> None:
    srv, app = served
    other = await RawH2.connect(srv.port)  # a well-behaved connection open during the attack
    raw = await RawH2.connect(srv.port)
    try:
        raw.send(attack(raw))  # type: ignore[operator]
        got = await raw.goaway()
        assert got is not None, "connection closed without GOAWAY"
        assert got[1] == code
        assert await raw.closed()
        await _still_serving(srv.port)
        other.send(other.request(1, b"/other"))
        assert await _body(other, 1) == b"ok /other"
        await until(lambda: app.running == 0, what="handlers of the abusive connection stopped")
        await until(lambda: srv.active == 0, what="no stream left running")
    finally:
        raw.close()
        other.close()


async def test_streams_past_the_limit_are_refused_one_by_one(served: tuple[AutoServer, App]) -> None:
    srv, app = served
    raw = await RawH2.connect(srv.port)
    try:
        raw.send(b"".join(raw.request(sid, b"/hold") for sid in range(1, 203, 2)))  # 101 streams
        refused: list[int] = []
        async with asyncio.timeout(10):
            while not refused:
                f = await raw.next_frame()
                assert f is not None
                if f.type == RST_STREAM:
                    refused.append(f.stream_id)
                    assert struct.unpack(">I", f.payload)[0] == REFUSED_STREAM
        assert refused == [201]
        await until(lambda: app.running == 100, what="100 handlers running")
        app.release.set()
        await until(lambda: srv.active == 0, what="all 100 answered")
        await _still_serving(srv.port)
    finally:
        raw.close()


async def test_client_reset_cancels_the_handler(served: tuple[AutoServer, App]) -> None:
    srv, app = served
    raw = await RawH2.connect(srv.port)
    try:
        raw.send(raw.request(1, b"/hold"))
        await until(lambda: app.running == 1, what="handler started")
        raw.send(_rst(1))
        await until(lambda: app.cancelled == 1 and srv.active == 0, what="handler cancelled by RST_STREAM")
        raw.send(raw.request(3, b"/after"))
        assert await _body(raw, 3) == b"ok /after"
    finally:
        raw.close()


async def test_connection_loss_cancels_every_stream(served: tuple[AutoServer, App]) -> None:
    srv, app = served
    raw = await RawH2.connect(srv.port)
    raw.send(b"".join(raw.request(sid, b"/hold") for sid in (1, 3, 5)))
    await until(lambda: app.running == 3, what="three handlers running")
    raw.close()
    await until(lambda: app.cancelled == 3 and srv.active == 0, what="all three cancelled")


async def test_routine_resets_after_answers_are_not_a_flood(served: tuple[AutoServer, App]) -> None:
    """A client that resets each stream once answered (gRPC servers do the mirror image) is no attacker."""
    srv, _ = served
    raw = await RawH2.connect(srv.port)
    try:
        for sid in range(1, 1201, 2):  # 600 streams, 600 RST_STREAMs: more than any flood budget
            raw.send(raw.request(sid, b"/r"))
            assert await _body(raw, sid) == b"ok /r"
            raw.send(_rst(sid, 0))
        raw.send(raw.request(1201, b"/last"))
        assert await _body(raw, 1201) == b"ok /last"
    finally:
        raw.close()


async def test_reset_in_the_same_read_as_the_request_frees_the_slot(served: tuple[AutoServer, App]) -> None:
    srv, app = served
    raw = await RawH2.connect(srv.port)
    try:
        raw.send(b"".join(raw.request(sid, b"/hold") + _rst(sid) for sid in range(1, 101, 2)))  # 50
        await until(lambda: len(srv.h2.connections) == 1, what="connected")
        conn = next(iter(srv.h2.connections))
        await until(
            lambda: conn.h2.highest_inbound_stream_id == 99 and srv.active == 0,
            what="the 50 reset streams freed",
        )
        raw.send(b"".join(raw.request(sid, b"/hold") for sid in range(101, 301, 2)))  # 100 more
        await until(lambda: app.running == 100, what="all 100 slots usable again")
        app.release.set()
        await until(lambda: srv.active == 0, what="answered")
    finally:
        raw.close()
