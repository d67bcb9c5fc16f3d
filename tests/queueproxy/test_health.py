from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from queueproxy.config import ProbeSpec
from queueproxy.health import (
    AGGRESSIVE_FIRST_INTERVAL,
    AGGRESSIVE_FIRST_PERIOD,
    AGGRESSIVE_INTERVAL,
    Readiness,
    http_attempt,
    tcp_attempt,
)
from serving.clock import FakeClock
from tests.conftest import free_port


class Script:
    """An attempt function that answers from a list, then repeats the last answer."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, float]] = []

    async def __call__(self, spec: ProbeSpec, port: int, timeout: float) -> bool:
        self.calls.append((port, timeout))
        i = min(len(self.calls) - 1, len(self.answers) - 1)
        return self.answers[i]


def fake_time() -> tuple[FakeClock, object]:
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return clock, sleep


async def test_aggressive_attempts_are_10ms_apart_for_a_second_then_knatives_50ms() -> None:
    clock, sleep = fake_time()
    fast = round(AGGRESSIVE_FIRST_PERIOD / AGGRESSIVE_FIRST_INTERVAL)
    script = Script([False] * (fast + 3) + [True])
    r = Readiness([ProbeSpec("tcp")], 8080, attempt=script, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    assert await r.check()
    assert len(script.calls) == fast + 4
    # fast attempts cover the first second; the three after it are 50 ms apart
    assert clock.now() == pytest.approx(AGGRESSIVE_FIRST_PERIOD + 3 * AGGRESSIVE_INTERVAL, abs=0.011)


async def test_aggressive_until_first_ready_then_single_attempts() -> None:
    clock, sleep = fake_time()
    script = Script([False, False, False, True])
    r = Readiness([ProbeSpec("tcp")], 8080, attempt=script, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    assert await r.check()
    assert len(script.calls) == 4
    assert all(t == 0.1 for _, t in script.calls) and script.calls[0][0] == 8080
    assert clock.now() == pytest.approx(3 * AGGRESSIVE_FIRST_INTERVAL)
    # Ready once: the next checks are one attempt each, so a crash shows at once and a restart recovers.
    script.answers = [False]
    script.calls.clear()
    assert not await r.check()
    assert len(script.calls) == 1
    script.answers = [True]
    assert await r.check()


async def test_aggressive_gives_up_after_ten_seconds() -> None:
    clock, sleep = fake_time()
    script = Script([False])
    r = Readiness([ProbeSpec("tcp")], 8080, attempt=script, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    assert not await r.check()
    assert 275 <= len(script.calls) <= 283  # 1 s / 10 ms + 9 s / 50 ms
    assert not r.ever_ready


async def test_success_threshold_needs_consecutive_successes() -> None:
    clock, sleep = fake_time()
    script = Script([True, False, True, True, True])
    spec = ProbeSpec("tcp", success_threshold=3)
    r = Readiness([spec], 8080, attempt=script, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    assert await r.check()
    assert len(script.calls) == 5


async def test_periodic_probe_is_one_attempt_with_its_timeout() -> None:
    script = Script([False, True])
    r = Readiness([ProbeSpec("http", port=9000, period_seconds=5, timeout_seconds=2)], 8080, attempt=script)
    assert not await r.check()
    assert await r.check()
    assert script.calls == [(9000, 2), (9000, 2)]


async def test_concurrent_checks_share_one_probe() -> None:
    gate = asyncio.Event()
    calls = 0

    async def attempt(spec: ProbeSpec, port: int, timeout: float) -> bool:
        nonlocal calls
        calls += 1
        await gate.wait()
        return True

    r = Readiness([ProbeSpec("tcp")], 8080, attempt=attempt)
    tasks = [asyncio.ensure_future(r.check()) for _ in range(5)]
    while calls == 0:
        await asyncio.sleep(0)
    tasks[0].cancel()  # one caller going away does not cancel the probe the others wait on
    gate.set()
    results = await asyncio.gather(*tasks[1:])
    assert results == [True] * 4 and calls == 1


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[bytes], dict[str, bytes]]]:
    seen: list[bytes] = []
    answer = {"status": b"200"}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(b"HTTP/1.1 " + answer["status"] + b" X\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, seen, answer
    finally:
        server.close()
        await server.wait_closed()


async def test_real_tcp_attempt(http_server: tuple[int, list[bytes], dict[str, bytes]]) -> None:
    port, _, _ = http_server
    assert await tcp_attempt("127.0.0.1", port, 1.0)
    assert not await tcp_attempt("127.0.0.1", free_port(), 1.0)


@pytest.mark.parametrize(
    ("status", "ok"),
    [("200", True), ("302", True), ("399", True), ("400", False), ("503", False)],
)
async def test_real_http_attempt(
    http_server: tuple[int, list[bytes], dict[str, bytes]], status: str, ok: bool
) -> None:
    port, seen, answer = http_server
    answer["status"] = status.encode()
    spec = ProbeSpec("http", path="/healthz", headers=(("X-Probe", "yes"),))
    assert await http_attempt(spec, port, 1.0) is ok
    head = seen[-1].decode()
    assert head.startswith("GET /healthz HTTP/1.1\r\n")
    assert "User-Agent: kube-probe/" in head and "X-Probe: yes" in head


async def test_close_stops_a_running_probe() -> None:
    started = asyncio.Event()

    async def attempt(spec: ProbeSpec, port: int, timeout: float) -> bool:
        started.set()
        await asyncio.Event().wait()
        return True

    r = Readiness([ProbeSpec("tcp")], 8080, attempt=attempt)
    waiter = asyncio.ensure_future(r.check())
    await started.wait()
    await r.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert r._inflight is None
