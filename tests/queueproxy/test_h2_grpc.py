"""gRPC through a real queue-proxy process in front of a real grpcio server (QUEUE_USER_PROTOCOL=h2c):
the call shapes with trailers intact, each HTTP/2 stream one request for the breaker and the stats,
and the h2c listener's answers to abusive frames while it keeps serving the others."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from serving.h2_guard import ENHANCE_YOUR_CALM, FRAME_SIZE_ERROR, PROTOCOL_ERROR
from serving.stat import PROTOBUF_CONTENT_TYPE, Stat, decode_stat
from tests.fakes.grpc_echo import EchoServer, channel, method
from tests.fakes.grpc_frames import (
    CONTINUATION,
    DATA,
    HEADERS,
    PING,
    RST_STREAM,
    RawH2,
    frame,
    settings_frame,
)
from tests.queueproxy.procs import QP, queue_proxy
from tests.util import until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def qp(echo: EchoServer) -> Iterator[QP]:
    with queue_proxy(echo.port, QUEUE_USER_PROTOCOL="h2c") as q:
        yield q


@pytest.fixture(scope="module")
def ch(qp: QP) -> Iterator[grpc.Channel]:
    c = channel(qp.port)
    try:
        yield c
    finally:
        c.close()


def test_unary_call_with_trailing_metadata(ch: grpc.Channel) -> None:
    reply, info = method(ch, "Unary").with_call(b"hello", timeout=20)
    assert reply == b"echo:hello"
    assert info.code() == grpc.StatusCode.OK
    assert ("x-trailer", "unary") in tuple(info.trailing_metadata())


def test_error_status_and_message_in_trailers_only_response(ch: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        method(ch, "Unary")(b"fail", timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "bad request"


def test_server_stream_messages_pass_one_by_one(ch: grpc.Channel, echo: EchoServer) -> None:
    # Message i+1 is produced only once the client holds message i: a batching hop would stall it.
    gates = [threading.Event() for _ in range(3)]
    echo.service.gates = gates
    try:
        got = []
        for msg in method(ch, "ServerStream")(b"4x64", timeout=30):
            got.append(msg)
            if len(got) <= len(gates):
                gates[len(got) - 1].set()
    finally:
        echo.service.gates = []
        for g in gates:
            g.set()
    assert [m.split(b":")[0] for m in got] == [b"0", b"1", b"2", b"3"]


def test_client_stream(ch: grpc.Channel) -> None:
    assert method(ch, "ClientStream")(iter([b"y" * 5000] * 40), timeout=20) == b"40:200000"


def test_bidi_answers_come_while_the_call_is_open(ch: grpc.Channel) -> None:
    log: list[str] = []
    first = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"m0"
        first.wait(20)  # the answer to m0 must cross the queue-proxy before m1 is sent
        for i in range(1, 5):
            log.append(f"send m{i}")
            yield b"m%d" % i

    out = []
    for msg in method(ch, "Bidi")(requests(), timeout=30):
        log.append(f"got {msg.decode()}")
        out.append(msg)
        first.set()
    assert out == [b"echo:m%d" % i for i in range(5)]
    assert log.index("got echo:m0") < log.index("send m1")


# -- each stream is one request for the breaker and the stats -------------------------------------


class HoldServer:
    """A grpcio server whose ``Hold`` calls wait for the test's release, counting calls at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.done = 0
        self.release = threading.Semaphore(0)
        handler = grpc.unary_unary_rpc_method_handler(self._hold)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("zeroscale.test.Hold", {"Hold": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _hold(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if not self.release.acquire(timeout=20):
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "never released")
            return b"held:" + request
        finally:
            with self.lock:
                self.running -= 1
                self.done += 1


async def _stats_until(port: int, cond: Callable[[dict[float, Stat]], bool], what: str) -> dict[float, Stat]:
    """Scrape the protobuf Stat every 0.05 s (it changes once a second), keyed by uptime, until cond."""
    seen: dict[float, Stat] = {}
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
        while True:
            r = await c.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept": PROTOBUF_CONTENT_TYPE})
            stat = decode_stat(r.content)
            seen[stat.process_uptime] = stat
            if cond(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"no such stats within 20 s: {what}; got {list(seen.values())}")
            await asyncio.sleep(0.05)


async def test_cc1_three_streams_on_one_connection_reach_the_app_one_at_a_time() -> None:
    hold = HoldServer()
    hold.server.start()
    try:
        with queue_proxy(hold.port, QUEUE_USER_PROTOCOL="h2c", CONTAINER_CONCURRENCY="1") as q:
            ch = channel(q.port)  # one channel: one HTTP/2 connection carrying the three calls
            try:
                call = ch.unary_unary("/zeroscale.test.Hold/Hold")
                calls = [call.future(b"%d" % i, timeout=30) for i in range(3)]
                await until(lambda: hold.running == 1, timeout=20, what="first call at the app")
                # a whole stats period with the three streams in flight at the queue-proxy, one at the app
                seen = await _stats_until(
                    q.metrics_port,
                    lambda s: (
                        sum(x.request_count for x in s.values()) == 3
                        and any(x.average_concurrent_requests > 2.99 for x in s.values())
                    ),
                    "three requests counted, three in flight",
                )
                assert hold.running == 1
                for i in range(3):
                    await until(lambda: hold.running == 1, timeout=20, what=f"call {i} at the app")
                    hold.release.release()
                    await until(lambda: hold.done == i + 1, timeout=20, what=f"call {i} done")  # noqa: B023
                replies = [await asyncio.to_thread(c.result, 20) for c in calls]
                assert sorted(replies) == [b"held:0", b"held:1", b"held:2"]
                assert hold.max_running == 1
                assert sum(x.request_count for x in seen.values()) == 3
            finally:
                ch.close()
    finally:
        for _ in range(3):
            hold.release.release()
        hold.server.stop(grace=None)


# -- abusive frames on the queue-proxy's h2c listener ----------------------------------------------


def _rst(sid: int) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", 8))


ABUSE = [
    pytest.param(lambda r: r.request(2), PROTOCOL_ERROR, id="even-stream-id"),
    pytest.param(lambda r: r.request(5) + r.request(3), PROTOCOL_ERROR, id="stream-id-going-down"),
    pytest.param(lambda r: frame(DATA, 0, 1, b"", length=16385), FRAME_SIZE_ERROR, id="frame-over-max-size"),
    pytest.param(lambda r: settings_frame() * 3000, ENHANCE_YOUR_CALM, id="settings-flood"),
    pytest.param(lambda r: frame(PING, 0, 0, b"12345678") * 3000, ENHANCE_YOUR_CALM, id="ping-flood"),
    pytest.param(
        lambda r: b"".join(r.request(s, b"/hold", end_stream=False) + _rst(s) for s in range(1, 4001, 2)),
        ENHANCE_YOUR_CALM,
        id="rst-stream-flood",
    ),
    pytest.param(
        lambda r: (
            frame(HEADERS, 0, 1, r.header_block(extra=[(b"x-big", b"v" * 16000)]))
            + frame(CONTINUATION, 0, 1, b"\x00" * 16000) * 4
        ),
        ENHANCE_YOUR_CALM,
        id="header-block-past-limit",
    ),
]


@pytest.mark.parametrize(("attack", "code"), ABUSE)
async def test_abusive_connection_gets_goaway_and_others_keep_their_calls(
    qp: QP, ch: grpc.Channel, attack: Callable[[RawH2], bytes], code: int
) -> None:
    unary = method(ch, "Unary")
    assert await asyncio.to_thread(unary, b"before", timeout=20) == b"echo:before"  # ch is connected
    raw = await RawH2.connect(qp.port)
    try:
        raw.send(attack(raw))
        got = await raw.goaway()
        assert got is not None, "connection closed without GOAWAY"
        assert got[1] == code
        assert await raw.closed()
    finally:
        raw.close()
    # the connection opened before the attack and a new one are both served
    assert await asyncio.to_thread(unary, b"after", timeout=20) == b"echo:after"
    fresh = channel(qp.port)
    try:
        assert await asyncio.to_thread(method(fresh, "Unary"), b"new", timeout=20) == b"echo:new"
    finally:
        fresh.close()


# -- flow control through the queue-proxy process -------------------------------------------------


def _grpc_message(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


async def test_a_client_that_stops_reading_stops_the_app(qp: QP, echo: EchoServer) -> None:
    """16 MiB asked of a server stream by a client that grants no window: the app is held back after
    a few windows' worth (client + queue-proxy + socket buffers), not after the whole stream."""
    count, size = 1024, 16384
    reader, writer = await asyncio.open_connection("127.0.0.1", qp.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()  # the default 65,535-byte windows, not credited back for now
    conn.send_headers(
        1,
        [
            (b":method", b"POST"),
            (b":path", b"/zeroscale.test.Echo/ServerStream"),
            (b":scheme", b"http"),
            (b":authority", b"qp"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ],
    )
    conn.send_data(1, _grpc_message(b"%dx%d" % (count, size)), end_stream=True)
    writer.write(conn.data_to_send())
    received = 0
    credit = False
    ended = False
    trailers: dict[bytes, bytes] = {}

    async def pump() -> None:
        nonlocal received, ended, trailers
        while not ended:
            data = await reader.read(65536)
            if not data:
                raise AssertionError("queue-proxy closed the connection")
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

    before = echo.service.produced
    task = asyncio.create_task(pump())
    try:
        await until(lambda: received >= 65535, timeout=20, what="client window filled")
        # wait until the app has stopped producing (unchanged for half a second), then compare
        last, still_since = -1, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() - still_since < 0.5:
            now = echo.service.produced
            if now != last:
                last, still_since = now, time.monotonic()
            assert time.monotonic() < deadline, "the app never stopped producing"
            await asyncio.sleep(0.02)
        held_back = (echo.service.produced - before) * size
        # measured: about 0.4 MiB (64 KiB client window + the queue-proxy's 256 KiB stream window + grpc's)
        assert held_back < 4 * 1024 * 1024, f"{held_back} bytes produced for a stalled client"
        credit = True
        conn.acknowledge_received_data(received, 1)
        conn.increment_flow_control_window(64 * 1024 * 1024)
        conn.increment_flow_control_window(64 * 1024 * 1024, 1)
        writer.write(conn.data_to_send())
        await asyncio.wait_for(task, 30)
        assert received == count * (size + 5)
        assert trailers.get(b"grpc-status") == b"0"
    finally:
        task.cancel()
        writer.close()
