"""Real gRPC calls (grpcio client and server on 127.0.0.1) through a small proxy built from serve_auto and
forward_h2: the four call shapes with trailers intact, messages forwarded one by one, multiplexing, and
bounded buffering against a slow reader."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from serving.h2server import AutoServer, serve_auto
from serving.h2upstream import H2Upstream, forward_h2
from serving.httpserver import Request, Responder
from serving.upstream import UpstreamError
from tests.fakes.grpc_echo import SERVICE, EchoServer, channel, method
from tests.util import until


@dataclass
class Stack:
    echo: EchoServer
    upstream: H2Upstream
    proxy: AutoServer
    ch: grpc.Channel


async def _stack(max_streams: int = 100) -> Stack:
    echo = EchoServer().start()
    upstream = H2Upstream("127.0.0.1", echo.port, max_streams_per_connection=max_streams)

    async def handler(req: Request, resp: Responder) -> None:
        try:
            await forward_h2(req, resp, upstream, req.headers.items)
        except UpstreamError as e:
            if not resp.started:
                await resp.send(502, str(e))

    proxy = await serve_auto(handler, "127.0.0.1", 0)
    return Stack(echo, upstream, proxy, channel(proxy.port))


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await _stack()
    try:
        yield s
    finally:
        s.ch.close()
        await s.proxy.shutdown(1.0)
        await s.upstream.close()
        s.echo.stop()


async def test_unary_call_with_trailers(stack: Stack) -> None:
    call = method(stack.ch, "Unary")
    reply, info = await asyncio.to_thread(lambda: call.with_call(b"hello", timeout=10))
    assert reply == b"echo:hello"
    assert info.code() == grpc.StatusCode.OK
    assert ("x-trailer", "unary") in tuple(info.trailing_metadata())


async def test_error_status_is_relayed(stack: Stack) -> None:
    call = method(stack.ch, "Unary")
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(lambda: call(b"fail", timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "bad request"


async def test_server_stream_messages_arrive_one_by_one(stack: Stack) -> None:
    # Message i+1 is produced only after the client has received message i: a proxy that batched
    # would hold message 0 back and the server would give up after 20 s.
    gates = [threading.Event() for _ in range(4)]
    stack.echo.service.gates = gates

    def run() -> list[bytes]:
        got = []
        for msg in method(stack.ch, "ServerStream")(b"5x100", timeout=30):
            got.append(msg)
            if len(got) <= len(gates):
                gates[len(got) - 1].set()
        return got

    got = await asyncio.to_thread(run)
    assert [m.split(b":")[0] for m in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert all(len(m) == 100 for m in got)


async def test_client_stream(stack: Stack) -> None:
    reply = await asyncio.to_thread(
        lambda: method(stack.ch, "ClientStream")(iter([b"x" * 1000] * 50), timeout=10)
    )
    assert reply == b"50:50000"


async def test_bidi_first_answer_before_last_request(stack: Stack) -> None:
    log: list[str] = []
    first = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"m0"
        log.append("sent m0")
        first.wait(10)  # the answer to m0 must come through while the call is still open
        for i in range(1, 10):
            log.append(f"send m{i}")
            yield b"m%d" % i

    def run() -> list[bytes]:
        out = []
        for msg in method(stack.ch, "Bidi")(requests(), timeout=30):
            log.append(f"got {msg.decode()}")
            out.append(msg)
            first.set()
        return out

    out = await asyncio.to_thread(run)
    assert out == [b"echo:m%d" % i for i in range(10)]
    assert log.index("got echo:m0") < log.index("send m9")
    assert log.index("got echo:m0") < log.index("send m1")


async def test_calls_share_a_connection_and_overflow_to_another() -> None:
    s = await _stack(max_streams=2)
    release = threading.Event()
    try:

        def held(i: int) -> bytes:
            def requests() -> Iterator[bytes]:
                yield b"a%d" % i
                release.wait(20)

            return b"".join(method(s.ch, "Bidi")(requests(), timeout=30))

        calls = [asyncio.create_task(asyncio.to_thread(held, i)) for i in range(5)]
        await until(lambda: s.upstream.in_use == 5, what="five streams open upstream")
        assert s.upstream.connections == 3  # 2 + 2 + 1
        release.set()
        results = await asyncio.gather(*calls)
        assert sorted(results) == [b"echo:a%d" % i for i in range(5)]
        await until(lambda: s.upstream.in_use == 0, what="streams closed")
    finally:
        release.set()
        s.ch.close()
        await s.proxy.shutdown(1.0)
        await s.upstream.close()
        s.echo.stop()


def _grpc_frame(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


async def test_slow_reader_keeps_proxy_buffers_bounded(stack: Stack) -> None:
    """A client that stops granting window holds the whole chain: the proxy keeps at most its windows."""
    total = 8 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()  # default 65535-byte windows, which we do not credit back for a while
    path = f"/{SERVICE}/ServerStream".encode()
    conn.send_headers(
        1,
        [
            (b":method", b"POST"),
            (b":path", path),
            (b":scheme", b"http"),
            (b":authority", b"test"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ],
    )
    conn.send_data(1, _grpc_frame(b"512x16384"), end_stream=True)
    writer.write(conn.data_to_send())
    received = 0
    trailers: dict[bytes, bytes] = {}
    ended = False
    credit = False

    async def pump() -> None:
        nonlocal received, ended, trailers
        while not ended:
            data = await reader.read(65536)
            if not data:
                raise AssertionError("proxy closed the connection")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    received += ev.flow_controlled_length or 0
                    if credit:
                        conn.acknowledge_received_data(ev.flow_controlled_length or 0, 1)
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers = dict(ev.headers or [])
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
            writer.write(conn.data_to_send())

    task = asyncio.create_task(pump())
    try:
        await until(lambda: received >= 65535, what="client window filled")
        await until(
            lambda: stack.upstream.received >= stack.upstream.stream_window,
            what="proxy's upstream window filled",
        )
        peak = 0
        for _ in range(40):  # an invariant watched for a moment, not a wait: nothing grows past the windows
            peak = max(peak, stack.upstream.received)
            assert stack.upstream.buffered <= stack.upstream.stream_window
            await asyncio.sleep(0.02)
        # what the proxy took from the app = what the client got + at most one stream window unread
        # + one chunk being written: far below the 8 MiB the app wants to send
        assert peak - received <= stack.upstream.stream_window * 2, (peak, received)
        assert stack.echo.service.produced * 16384 < total
        credit = True
        conn.acknowledge_received_data(received, 1)
        conn.increment_flow_control_window(16 * 1024 * 1024)
        conn.increment_flow_control_window(16 * 1024 * 1024, 1)
        writer.write(conn.data_to_send())
        await asyncio.wait_for(task, 30)
        assert received == 512 * (16384 + 5)
        assert trailers.get(b"grpc-status") == b"0"
    finally:
        task.cancel()
        writer.close()


async def test_slow_clients_do_not_stall_other_calls_on_the_shared_upstream_connection(stack: Stack) -> None:
    """Five server streams nobody reads fill five upstream stream windows (more than one connection
    window) on the proxy's single upstream connection; a unary call on it still completes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    path = f"/{SERVICE}/ServerStream".encode()
    for sid in (1, 3, 5, 7, 9):
        conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":path", path),
                (b":scheme", b"http"),
                (b":authority", b"test"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        conn.send_data(sid, _grpc_frame(b"256x16384"), end_stream=True)
    writer.write(conn.data_to_send())

    async def drain_frames() -> None:  # read, never credit: the streams stay stalled
        while await reader.read(65536):
            pass

    task = asyncio.create_task(drain_frames())
    try:
        window = stack.upstream.stream_window
        await until(
            lambda: stack.upstream.received >= 5 * window - 5 * 65535, what="five upstream windows full"
        )
        reply = await asyncio.to_thread(lambda: method(stack.ch, "Unary")(b"still here", timeout=10))
        assert reply == b"echo:still here"
        assert stack.upstream.connections == 1
    finally:
        task.cancel()
        writer.close()
