"""A real queue-proxy in front of a real user app: proxying, headers, streaming, websockets, bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psutil
import pytest
import websockets

from tests.conftest import free_port

from .procs import QP, UserApp, queue_proxy, user_app

pytestmark = pytest.mark.e2e

MB = 1024 * 1024


@pytest.fixture(scope="module")
def app() -> Iterator[UserApp]:
    with user_app() as a:
        yield a


@pytest.fixture(scope="module")
def qp(app: UserApp) -> Iterator[QP]:
    with queue_proxy(app.port) as q:
        yield q


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def test_hello_and_status_codes_pass_through(qp: QP, client: httpx.AsyncClient) -> None:
    r = await client.get(qp.url("/"))
    assert (r.status_code, r.text) == (200, "hello")
    r = await client.get(qp.url("/status?code=418"))
    assert (r.status_code, r.text) == (418, "status 418")
    r = await client.post(qp.url("/status?code=201"), content=b"abc")
    assert r.status_code == 201


async def test_knative_headers_are_rewritten(qp: QP, client: httpx.AsyncClient) -> None:
    r = await client.get(
        qp.url("/headers"),
        headers=[
            ("K-Original-Host", "hello.default.example.com"),
            ("Knative-Serving-Revision", "hello-00001"),
            ("Knative-Serving-Namespace", "default"),
            ("X-Forwarded-For", "203.0.113.7, 2001:db8::1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "hello.example.com"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "must not pass"),
            ("X-User", "kept"),
        ],
    )
    doc = r.json()
    got = {k.lower(): v for k, v in doc["headers"]}
    assert doc["host"] == "hello.default.example.com"
    assert "knative-serving-revision" not in got and "knative-serving-namespace" not in got
    assert "k-original-host" not in got
    assert got["forwarded"] == 'for=203.0.113.7;host=hello.example.com;proto=https, for="[2001:db8::1]"'
    assert "x-hop" not in got, "a field named in Connection is hop-by-hop (RFC 9110 7.6.1)"
    assert got["x-user"] == "kept"
    assert got["x-forwarded-for"] == "203.0.113.7, 2001:db8::1"


async def test_client_forwarded_header_is_kept(qp: QP, client: httpx.AsyncClient) -> None:
    r = await client.get(
        qp.url("/headers"), headers={"Forwarded": "for=1.1.1.1", "X-Forwarded-For": "2.2.2.2"}
    )
    got = {k.lower(): v for k, v in r.json()["headers"]}
    assert got["forwarded"] == "for=1.1.1.1"


async def test_sse_first_event_arrives_before_the_stream_ends(qp: QP, client: httpx.AsyncClient) -> None:
    t0 = time.monotonic()
    arrivals: list[float] = []
    async with client.stream("GET", qp.url("/sse?n=4&interval_ms=400")) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 4
    # The stream lasts >= 1.2 s; the first event must not wait for it.
    assert arrivals[-1] >= 1.2
    assert arrivals[0] <= arrivals[-1] - 0.8, arrivals


def _rss_sampler(pid: int, stop: threading.Event, out: list[int]) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        out.append(proc.memory_info().rss)
        stop.wait(0.02)


async def test_200mb_upload_and_download_stream_in_bounded_memory(qp: QP, client: httpx.AsyncClient) -> None:
    # warm up: code paths, pools and buffers that exist after the first requests belong to "idle"
    for _ in range(3):
        await client.post(qp.url("/upload"), content=b"x" * MB)
        await client.get(qp.url("/download?mb=1"))
    idle = psutil.Process(qp.pid).memory_info().rss
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(qp.pid, stop, samples), daemon=True)
    sampler.start()
    try:
        block = b"u" * (256 * 1024)

        async def body() -> AsyncIterator[bytes]:
            for _ in range(200 * 4):
                yield block

        r = await client.post(qp.url("/upload"), content=body())
        assert (r.status_code, r.text) == (200, str(200 * MB))
        got = 0
        async with client.stream("GET", qp.url("/download?mb=200")) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                got += len(chunk)
        assert got == 200 * MB
        got = 0
        async with client.stream("GET", qp.url("/download?mb=50&chunked=1")) as r:
            async for chunk in r.aiter_raw():
                got += len(chunk)
        assert got == 50 * MB
    finally:
        stop.set()
        sampler.join(5)
    peak = max(samples)
    print(f"qp rss idle {idle / MB:.1f} MB, peak {peak / MB:.1f} MB over {len(samples)} samples")
    assert peak - idle < 8 * MB, f"RSS grew by {(peak - idle) / MB:.1f} MB (idle {idle / MB:.1f} MB)"


async def test_full_duplex_echo(qp: QP, client: httpx.AsyncClient) -> None:
    parts = [bytes([65 + i % 26]) * 100_000 for i in range(30)]

    async def body() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    r = await client.post(qp.url("/echo"), content=body())
    assert r.content == b"".join(parts)


async def test_websocket_upgrades_and_echoes(qp: QP) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{qp.port}/ws", open_timeout=10) as ws:
        for i in range(20):
            await ws.send(f"msg {i}")
            assert await asyncio.wait_for(ws.recv(), 10) == f"msg {i}"
        await ws.send(b"\x00\x01" * 5000)
        assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x01" * 5000


async def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(65536)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400", id="header-without-colon"),
        pytest.param(b"NOT A REQUEST\r\n\r\n", b"400", id="garbage"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"400",
            id="cl-and-te",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", b"431", id="huge-header"
        ),
        pytest.param(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414", id="huge-url"),
    ],
)
async def test_malformed_requests_get_4xx_and_the_proxy_lives_on(
    qp: QP, client: httpx.AsyncClient, request_bytes: bytes, status: bytes
) -> None:
    answer = await _raw(qp.port, request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    assert qp.proc.proc.poll() is None
    r = await client.get(qp.url("/"))
    assert r.status_code == 200


async def test_upstream_down_is_502(client: httpx.AsyncClient) -> None:
    with queue_proxy(free_port()) as q:
        r = await client.get(q.url("/"))
        assert r.status_code == 502
        assert "127.0.0.1" in r.text
        assert q.proc.proc.poll() is None


async def test_user_metrics_count_by_response_code(qp: QP, client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.get(qp.url("/status?code=299"))
    await client.get(qp.url("/"), headers={"K-Network-Probe": "queue"})
    text = (await client.get(f"http://127.0.0.1:{qp.user_metrics_port}/metrics")).text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("kn_serving_invocation_duration_seconds_count")
        and 'http_response_status_code="299"' in x
    )
    assert line.endswith(" 3.0")
    assert 'kn_revision_name="svc-00001"' in line and 'k8s_namespace_name="ns"' in line
    assert 'kn_service_name="svc"' in line and 'kn_configuration_name="cfg"' in line
    assert 'le="0.005"' in text and 'le="7.5"' in text


async def test_one_date_header(qp: QP) -> None:
    """Date is a singleton field (RFC 9110 5.3): the upstream's is relayed, no second one added."""
    answer = await _raw(qp.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"\r\ndate:") == 1, head


async def test_head_and_http10(qp: QP) -> None:
    answer = await _raw(qp.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b""
    reader, writer = await asyncio.open_connection("127.0.0.1", qp.port)
    try:
        writer.write(b"GET /sse?n=2&interval_ms=10 HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: the stream ends with the connection
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"data: 0\n\ndata: 1\n\n"
