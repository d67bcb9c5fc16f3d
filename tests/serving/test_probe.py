"""serving.probe: the queue-proxy readiness probe shared by the activator and the local runtime."""

from __future__ import annotations

import asyncio

import pytest

from serving.probe import probe_queue, queue_probe_healthy


@pytest.mark.parametrize(
    ("raw", "healthy"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nqueue", True, id="ok"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nqueue\r\n0\r\n\r\n",
            True,
            id="chunked",
        ),
        pytest.param(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nqueue", False, id="503"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", False, id="not-a-queue-proxy"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nnotqueue!", False, id="queue-inside-other-text"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", False, id="bad-chunk"),
        pytest.param(b"HTTP/1.1 200 OK\r\n", False, id="head-cut-short"),
        pytest.param(b"", False, id="nothing"),
    ],
)
def test_answer(raw: bytes, healthy: bool) -> None:
    assert queue_probe_healthy(raw) is healthy


async def test_probe_sends_the_header_and_reads_the_answer() -> None:
    seen: list[bytes] = []

    async def qp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        ok = b"k-network-probe: queue" in head.lower()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nqueue" if ok else b"HTTP/1.1 400 Bad\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(qp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await probe_queue("127.0.0.1", port, 2.0, path=b"/healthz", user_agent=b"test-probe")
        assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\n") and b"User-Agent: test-probe" in seen[0]
    finally:
        server.close()
    assert not await probe_queue("127.0.0.1", port, 2.0, path=b"/", user_agent=b"test-probe")  # refused
