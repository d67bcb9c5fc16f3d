"""serving.timeouts: which of Knative's three timeouts ran out, and the sweeper that enforces them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from serving.timeouts import RequestTimeouts as T
from serving.timeouts import Sweeper, which_expired


@dataclass
class Resp:
    started: bool = False
    status: int | None = None
    last_write: float = 0.0


@pytest.mark.parametrize(
    ("t", "resp", "now", "want"),
    [
        pytest.param(T(10, 0, 0), Resp(), 9.9, None, id="total-not-yet"),
        pytest.param(T(10, 0, 0), Resp(True, 200, 9.9), 10.0, "total", id="total-even-while-writing"),
        pytest.param(T(10, 0, 0), Resp(True, 101, 9.9), 10.0, "total", id="total-cuts-websockets"),
        pytest.param(T(0, 0, 0), Resp(), 1e9, None, id="all-off"),
        pytest.param(T(10, 2, 0), Resp(), 1.9, None, id="start-not-yet"),
        pytest.param(T(10, 2, 0), Resp(), 2.0, "response-start", id="start-fires-before-first-byte"),
        pytest.param(T(10, 2, 0), Resp(True, 200, 1.0), 5.0, None, id="start-not-after-byte"),
        pytest.param(T(10, 2, 0), Resp(True, 101, 0.5), 5.0, None, id="start-not-after-101"),
        pytest.param(T(10, 0, 1), Resp(True, 200, 3.5), 4.4, None, id="idle-since-last-write"),
        pytest.param(T(10, 0, 1), Resp(True, 200, 3.5), 4.5, "idle", id="idle-fires"),
        pytest.param(T(10, 0, 1), Resp(False, None, 0.0), 1.0, "idle", id="idle-before-any-write"),
        pytest.param(T(0, 0, 2), Resp(False, None, -50), 1.0, None, id="idle-counts-from-start"),
        pytest.param(T(10, 0, 1), Resp(True, 101, 0.0), 5.0, None, id="idle-not-on-websocket"),
    ],
)
def test_which_timeout_ran_out(t: T, resp: Resp, now: float, want: str | None) -> None:
    assert which_expired(t, 0.0, resp, now) == want


@pytest.mark.parametrize(
    ("t", "interval"),
    [(T(300, 0, 0), 0.1), (T(300, 0, 0.5), 0.05), (T(0.01, 0, 0), 0.005), (T(0, 0, 0), 0.1)],
)
def test_interval_is_fine_enough(t: T, interval: float) -> None:
    assert t.interval() == pytest.approx(interval)


def test_negative_timeout_named() -> None:
    with pytest.raises(ValueError, match="timeout idle must be >= 0 seconds, got -1"):
        T(1, 1, -1)


async def test_sweep_cancels_only_expired_requests_once() -> None:
    sweeper = Sweeper()
    never = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    entries = []

    async def request(resp: Resp) -> None:
        entries.append(sweeper.track(resp, 0.0, T(10, 1, 0)))
        await never.wait()

    for resp in (Resp(), Resp(True, 200, 0.5)):
        tasks.append(asyncio.ensure_future(request(resp)))
    while len(entries) < 2:
        await asyncio.sleep(0)
    assert sweeper.sweep(0.5) == 0
    assert sweeper.sweep(1.0) == 1  # the one without a first byte
    assert sweeper.sweep(1.0) == 0  # fired once only
    await asyncio.sleep(0)
    assert tasks[0].cancelled() and not tasks[1].done()
    assert entries[0].fired == "response-start" and entries[1].fired is None
    sweeper.untrack(entries[1])
    tasks[1].cancel()


async def test_sweeper_runs_by_itself_and_stops_when_empty() -> None:
    sweeper = Sweeper(interval=0.01)
    entries = {}

    async def wait(name: str, t: T) -> str:
        entries[name] = sweeper.track(Resp(), asyncio.get_running_loop().time(), t)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return f"{name}:{entries[name].fired}"
        return "never"

    a = asyncio.create_task(wait("a", T(0.05, 0, 0)))
    b = asyncio.create_task(wait("b", T(60, 60, 0)))
    assert await asyncio.wait_for(a, 10) == "a:total"
    assert not b.done() and len(sweeper) == 1
    sweeper.untrack(entries["b"])
    b.cancel()
    assert len(sweeper) == 0


async def test_untimed_requests_are_not_tracked() -> None:
    sweeper = Sweeper()
    sweeper.track(Resp(), 0.0, T(0, 0, 0))
    assert len(sweeper) == 0
