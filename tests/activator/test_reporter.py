from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web

from activator.reporter import CallbackSink, ConcurrencyReporter
from activator.stat_sink import WebsocketSink
from serving.clock import FakeClock
from serving.stat import Stat, WireStat, decode_wire_stats
from serving.types import RevisionKey

from .helpers import until

A = ("default", "a-00001")
B = ("default", "b-00001")


def _key(t: tuple[str, str]) -> RevisionKey:
    return RevisionKey(*t)


def _make() -> tuple[ConcurrencyReporter, list[list[WireStat]], FakeClock]:
    sent: list[list[WireStat]] = []
    clock = FakeClock(100.0)
    return ConcurrencyReporter("activator-0", CallbackSink(sent.append), clock), sent, clock


def test_poke_on_first_sight_then_minus_one_on_first_report() -> None:
    rep, sent, clock = _make()
    rep.request_in(_key(A))
    assert sent == [[WireStat("default", "a-00001", Stat("activator-0", 1.0, 0.0, 1.0, 0.0))]]
    rep.request_in(_key(A))  # second request: no second poke
    assert len(sent) == 1
    clock.advance(1.0)
    msgs = rep.tick()
    # 2 requests in flight the whole second: 2.0 - 1 (poke) = 1.0; count 2 - 1 = 1
    assert msgs == [WireStat("default", "a-00001", Stat("activator-0", 1.0, 0.0, 1.0, 0.0))]
    clock.advance(1.0)
    assert rep.tick()[0].stat.average_concurrent_requests == 2.0  # no adjustment after the first


def test_time_weighted_and_floored_at_zero() -> None:
    rep, _, clock = _make()
    rep.request_in(_key(A))
    clock.advance(0.25)
    rep.request_out(_key(A))
    clock.advance(0.75)
    msgs = rep.report()
    assert msgs[0].stat.average_concurrent_requests == 0.0  # 0.25 - 1 floored
    assert msgs[0].stat.request_count == 0.0


def test_idle_entries_dropped_and_poke_again() -> None:
    rep, sent, clock = _make()
    rep.request_in(_key(A))
    rep.request_in(_key(B))
    clock.advance(0.5)
    rep.request_out(_key(A))
    clock.advance(0.5)
    assert {m.name for m in rep.tick()} == {"a-00001", "b-00001"}
    clock.advance(1.0)
    msgs = rep.tick()  # A idle for the whole period: dropped, not reported
    assert [m.name for m in msgs] == ["b-00001"]
    assert rep.revisions == [_key(B)]
    rep.request_in(_key(A))
    assert sent[-1][0].stat.request_count == 1.0 and sent[-1][0].name == "a-00001"  # poked again


def test_entry_held_by_a_long_request_is_kept() -> None:
    rep, _, clock = _make()
    rep.request_in(_key(A))
    for _ in range(3):
        clock.advance(1.0)
        rep.tick()
    assert rep.revisions == [_key(A)]


async def test_run_forever_reports_every_interval() -> None:
    sent: list[list[WireStat]] = []
    rep = ConcurrencyReporter("act", CallbackSink(sent.append))
    rep.request_in(_key(A))
    task = asyncio.create_task(rep.run_forever(interval=0.05))
    try:
        await until(lambda: len(sent) >= 3, what="periodic reports")
    finally:
        task.cancel()
    assert all(batch[0].name == "a-00001" for batch in sent)


def test_callback_sink_swallows_errors() -> None:
    def boom(_: list[WireStat]) -> None:
        raise RuntimeError("x")

    CallbackSink(boom).send([])


@pytest.fixture
async def ws_server(
    unused_tcp_port: int,
) -> AsyncIterator[tuple[str, list[list[WireStat]], list[web.WebSocketResponse]]]:
    received: list[list[WireStat]] = []
    conns: list[web.WebSocketResponse] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conns.append(ws)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                received.append(decode_wire_stats(msg.data))
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{unused_tcp_port}/", received, conns
    finally:
        await runner.cleanup()


async def test_websocket_sink_sends_binary_and_reconnects(
    ws_server: tuple[str, list[list[WireStat]], list[web.WebSocketResponse]],
) -> None:
    url, received, conns = ws_server
    sink = WebsocketSink(url, retry_min=0.02, retry_max=0.1)
    one = [WireStat("ns", "r", Stat("act", 3.0, 0.0, 4.0, 0.0))]
    sink.send(one)  # queued before connecting
    sink.start()
    try:
        await until(lambda: received == [one], what="first batch")
        await conns[0].close()
        await until(lambda: not sink.connected or len(conns) > 1, what="disconnect noticed")
        two = [WireStat("ns", "r", Stat("act", 1.0, 0.0, 1.0, 0.0))]
        sink.send(two)
        await until(lambda: received[-1:] == [two], what="batch after reconnect")
        assert len(conns) == 2 and sink.sent == 2
    finally:
        await sink.close()


async def test_websocket_sink_queue_is_bounded() -> None:
    sink = WebsocketSink("ws://127.0.0.1:1/", max_batches=3)
    for i in range(10):
        sink.send([WireStat("ns", "r", Stat("act", float(i)))])
    assert len(sink._queue) == 3 and sink.dropped == 7
