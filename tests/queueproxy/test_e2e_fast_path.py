"""The queue-proxy's callback-only path (a GET over a pooled connection, no task) keeps every guarantee
of the task path: timeouts, a client going away, the breaker. Each test warms the pool first, so the
request under test takes that path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from .procs import UserApp, queue_proxy, user_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def app() -> Iterator[UserApp]:
    with user_app() as a:
        yield a


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as c:
        yield c


async def test_a_response_start_timeout_on_a_pooled_connection(
    app: UserApp, client: httpx.AsyncClient
) -> None:
    with queue_proxy(app.port, REVISION_RESPONSE_START_TIMEOUT_SECONDS="0.5") as qp:
        assert (await client.get(qp.url("/"))).status_code == 200  # warm the pool
        t0 = time.monotonic()
        r = await client.get(qp.url("/sleep?ms=3000"))
        assert (r.status_code, r.text) == (504, "request timeout")
        assert r.headers["x-zeroscale-timeout"] == "response-start"
        assert time.monotonic() - t0 < 2
        # the connection that timed out is not reused; the next request is answered as usual
        r = await client.get(qp.url("/sleep?ms=10"))
        assert (r.status_code, r.text) == (200, "slept 10")


async def test_a_total_timeout_cuts_a_started_response(app: UserApp, client: httpx.AsyncClient) -> None:
    with queue_proxy(app.port, REVISION_TIMEOUT_SECONDS="1") as qp:
        assert (await client.get(qp.url("/"))).status_code == 200
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", qp.url("/sse?n=30&interval_ms=100")) as s:
                assert s.status_code == 200
                async for _ in s.aiter_raw():
                    pass
        assert (await client.get(qp.url("/"))).status_code == 200


async def test_a_client_that_goes_away_frees_its_breaker_slot(
    app: UserApp, client: httpx.AsyncClient
) -> None:
    with queue_proxy(app.port, CONTAINER_CONCURRENCY="1") as qp:
        assert (await client.get(qp.url("/"))).status_code == 200
        _, writer = await asyncio.open_connection("127.0.0.1", qp.port)
        writer.write(b"GET /sleep?ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        deadline = time.monotonic() + 30
        while (await client.get(app.url("/concurrency"))).json()["current"] < 1:
            assert time.monotonic() < deadline, "the app never got the request"
            await asyncio.sleep(0.02)
        writer.close()  # gone while its request holds the only slot
        await writer.wait_closed()
        t0 = time.monotonic()
        r = await client.get(qp.url("/"))
        assert r.status_code == 200 and time.monotonic() - t0 < 5  # not after the 20 s sleep


async def test_a_large_answer_is_handed_to_the_streaming_path(
    app: UserApp, client: httpx.AsyncClient
) -> None:
    with queue_proxy(app.port) as qp:
        assert (await client.get(qp.url("/"))).status_code == 200
        total = 0
        async with client.stream("GET", qp.url("/download?mb=8")) as s:
            assert s.status_code == 200
            async for chunk in s.aiter_raw():
                total += len(chunk)
        assert total == 8 * 1024 * 1024
        assert (await client.get(qp.url("/"))).status_code == 200
