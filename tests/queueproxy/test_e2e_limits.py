"""A real queue-proxy under limits: the breaker (cc = 1), clients that go away, and the three timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets

from .procs import UserApp, queue_proxy, user_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def app() -> Iterator[UserApp]:
    with user_app() as a:
        yield a


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        yield c


async def concurrency(client: httpx.AsyncClient, app: UserApp, reset: bool = False) -> dict[str, int]:
    r = await client.get(app.url("/concurrency" + ("?reset=1" if reset else "")))
    return dict(r.json())


async def test_cc1_twelve_slow_requests(app: UserApp, client: httpx.AsyncClient) -> None:
    """cc = 1: one runs, ten wait in order, and exactly one is refused at once with a 503."""
    with queue_proxy(app.port, CONTAINER_CONCURRENCY="1") as qp:
        await client.get(qp.url("/"))  # warm the pool
        await concurrency(client, app, reset=True)
        t0 = time.monotonic()

        async def one() -> tuple[int, str, float]:
            r = await client.get(qp.url("/sleep?ms=300"))
            return r.status_code, r.text, time.monotonic() - t0

        results = await asyncio.gather(*(one() for _ in range(12)))
        ok = sorted(t for code, _, t in results if code == 200)
        refused = [(text, t) for code, text, t in results if code == 503]
        assert len(ok) == 11 and len(refused) == 1, results
        assert refused[0][0] == "pending request queue full"
        assert refused[0][1] < ok[0], "the 503 must not wait for a slot"
        # one at a time: the eleventh answer comes after eleven sleeps
        assert ok[-1] >= 11 * 0.3
        assert (await concurrency(client, app))["max"] == 1
        # the depth gauge saw the queue
        text = (await client.get(f"http://127.0.0.1:{qp.user_metrics_port}/metrics")).text
        depth = next(x for x in text.splitlines() if x.startswith("kn_serving_queue_depth{"))
        assert float(depth.rsplit(" ", 1)[1]) >= 1


async def _send_raw(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def test_clients_that_go_away_free_their_slot_at_once(client: httpx.AsyncClient) -> None:
    # its own app: the abandoned 20 s request keeps sleeping there after the proxy let go of it
    with user_app() as app, queue_proxy(app.port, CONTAINER_CONCURRENCY="1") as qp:
        running = await _send_raw(qp.port, "/sleep?ms=20000")
        await until_app_busy(client, app, 1)
        # eleven more: ten wait, exactly one is refused at once
        conns = [await _send_raw(qp.port, "/sleep?ms=1") for _ in range(11)]
        reads = [asyncio.ensure_future(r.read(200)) for r, _ in conns]
        done, pending = await asyncio.wait(reads, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "one request must be refused at once"
        assert next(iter(done)).result().startswith(b"HTTP/1.1 503 ")
        # the ten waiting clients go away; their places are free again at once, so the next request
        # waits instead of being refused
        for t in pending:
            t.cancel()
        for _, w in conns:
            w.close()
        nxt = asyncio.ensure_future(client.get(qp.url("/sleep?ms=1")))
        await until_app_busy(client, app, 1)
        assert not nxt.done() or nxt.result().status_code == 200
        # the running client goes away: its slot is freed at once and the waiting request runs
        t0 = time.monotonic()
        running[1].close()
        r = await asyncio.wait_for(nxt, 15)
        assert r.status_code == 200
        assert time.monotonic() - t0 < 5, "the slot was held by a client that had gone"


async def until_app_busy(client: httpx.AsyncClient, app: UserApp, n: int) -> None:
    deadline = time.monotonic() + 15
    while (await concurrency(client, app))["current"] < n:
        assert time.monotonic() < deadline, "the app never got the request"
        await asyncio.sleep(0.02)


async def test_total_timeout_is_504_request_timeout(app: UserApp, client: httpx.AsyncClient) -> None:
    with queue_proxy(app.port, REVISION_TIMEOUT_SECONDS="1") as qp:
        t0 = time.monotonic()
        r = await client.get(qp.url("/sleep?ms=5000"))
        took = time.monotonic() - t0
        assert (r.status_code, r.text) == (504, "request timeout")
        assert 0.9 <= took < 3
        assert r.headers["x-zeroscale-timeout"] == "total"
        # a response that started and runs past the total timeout is cut: it must not look complete
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", qp.url("/sse?n=30&interval_ms=100")) as s:
                assert s.status_code == 200
                async for _ in s.aiter_raw():
                    pass
        r = await client.get(qp.url("/sleep?ms=10"))
        assert r.status_code == 200


async def test_response_start_and_idle_timeouts(app: UserApp, client: httpx.AsyncClient) -> None:
    env = {
        "REVISION_TIMEOUT_SECONDS": "10",
        "REVISION_RESPONSE_START_TIMEOUT_SECONDS": "0.5",
        "REVISION_IDLE_TIMEOUT_SECONDS": "0.8",
    }
    with queue_proxy(app.port, **env) as qp:
        # nothing written for 0.5 s: 504
        t0 = time.monotonic()
        r = await client.get(qp.url("/sleep?ms=3000"))
        assert (r.status_code, r.text) == (504, "request timeout")
        assert r.headers["x-zeroscale-timeout"] == "response-start"
        assert time.monotonic() - t0 < 2
        # a stream that writes every 0.2 s for 1.6 s passes both
        async with client.stream("GET", qp.url("/sse?n=9&interval_ms=200")) as s:
            events = [line async for line in s.aiter_lines() if line.startswith("data:")]
        assert len(events) == 9
        # a stream silent for 1.5 s after its first event is cut by the idle timeout
        got: list[str] = []
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", qp.url("/sse?n=3&interval_ms=1500")) as s:
                async for line in s.aiter_lines():
                    if line.startswith("data:"):
                        got.append(line)
        assert got == ["data: 0"]
        # a websocket is not cut by the response-start or idle timeout after its 101
        async with websockets.connect(f"ws://127.0.0.1:{qp.port}/ws", open_timeout=10) as ws:
            await ws.send("first")
            assert await asyncio.wait_for(ws.recv(), 5) == "first"
            await asyncio.sleep(1.2)  # the point of the test: silence longer than both timeouts
            await ws.send("after silence")
            assert await asyncio.wait_for(ws.recv(), 5) == "after silence"
