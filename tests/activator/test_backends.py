from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from activator.backends import EndpointBoard, HttpProber, RevisionBackends
from serving.types import Endpoint, RevisionKey

from .helpers import until

KEY = RevisionKey("default", "hello-00001")


class FakeProber:
    def __init__(self) -> None:
        self.healthy: set[str] = set()
        self.calls: list[str] = []

    async def probe(self, endpoint: Endpoint) -> bool:
        self.calls.append(endpoint.address)
        return endpoint.address in self.healthy


def ep(i: int, **kw: bool) -> Endpoint:
    return Endpoint(f"pod-{i}", "127.0.0.1", 9100 + i, **kw)


async def test_pod_gets_traffic_only_after_a_good_probe() -> None:
    prober = FakeProber()
    seen: list[list[str]] = []
    b = RevisionBackends(KEY, lambda eps: seen.append([e.pod_name for e in eps]), prober, frequency=0.001)
    try:
        b.update([ep(1), ep(2)])
        await until(lambda: len(prober.calls) >= 4, what="re-probing while unhealthy")
        assert seen == []
        prober.healthy.add("127.0.0.1:9101")
        await until(lambda: seen == [["pod-1"]], what="pod-1 healthy")
        prober.healthy.add("127.0.0.1:9102")
        await until(lambda: seen[-1] == ["pod-1", "pod-2"], what="pod-2 healthy")
        await until(lambda: b._task is not None and b._task.done(), what="probing stops once all healthy")
    finally:
        await b.close()


async def test_gone_and_terminating_pods_leave_at_once() -> None:
    prober = FakeProber()
    prober.healthy |= {"127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"}
    seen: list[list[str]] = []
    b = RevisionBackends(KEY, lambda eps: seen.append([e.pod_name for e in eps]), prober, frequency=0.001)
    try:
        b.update([ep(1), ep(2), ep(3)])
        await until(lambda: bool(seen) and seen[-1] == ["pod-1", "pod-2", "pod-3"])
        b.update([ep(1), ep(2, terminating=True)])  # 3 gone, 2 terminating: no probe needed to drop them
        assert seen[-1] == ["pod-1"]
    finally:
        await b.close()


async def test_ready_to_not_ready_is_reprobed() -> None:
    prober = FakeProber()
    prober.healthy.add("127.0.0.1:9101")
    seen: list[list[str]] = []
    b = RevisionBackends(KEY, lambda eps: seen.append([e.pod_name for e in eps]), prober, frequency=0.001)
    try:
        b.update([ep(1)])
        await until(lambda: seen == [["pod-1"]])
        prober.healthy.clear()
        b.update([ep(1, ready=False)])
        assert seen[-1] == []
        prober.healthy.add("127.0.0.1:9101")
        await until(lambda: seen[-1] == ["pod-1"], what="healthy again after probing")
    finally:
        await b.close()


def test_board_publishes_to_subscribers() -> None:
    board = EndpointBoard()
    got: list[Sequence[Endpoint]] = []
    board.publish(KEY, [ep(1)])
    unsub = board.subscribe(KEY, got.append)
    assert got == [(ep(1),)]  # current list at once
    board.publish(KEY, [ep(1), ep(2)])
    unsub()
    board.publish(KEY, [])
    assert len(got) == 2
    assert board.get(KEY) == ()


@pytest.mark.parametrize(
    ("answer", "healthy"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nqueue", True, id="200-queue"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nqueue\r\n0\r\n\r\n",
            True,
            id="chunked",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False, id="200-wrong-body"),
        pytest.param(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nqueue", False, id="503"),
        pytest.param(b"garbage", False, id="garbage"),
    ],
)
async def test_http_prober(answer: bytes, healthy: bool) -> None:
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ok = await HttpProber(timeout=5).probe(Endpoint("p", "127.0.0.1", port))
    finally:
        server.close()
        await server.wait_closed()
    assert ok is healthy
    head = requests[0].lower()
    assert head.startswith(b"get /healthz http/1.1")
    assert b"k-network-probe: queue" in head and b"user-agent: knative-activator-probe" in head


async def test_http_prober_refused_and_timeout() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert await HttpProber(timeout=1).probe(Endpoint("p", "127.0.0.1", port)) is False

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.Event().wait()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert (
            await HttpProber(timeout=0.3).probe(
                Endpoint("p", "127.0.0.1", server.sockets[0].getsockname()[1])
            )
            is False
        )
        assert loop.time() - t0 < 3
    finally:
        server.close()
