from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from queueproxy.timeouts import Sweeper, Timeouts, expired, which_expired


@dataclass
class Resp:
    started: bool = False
    status: int | None = None
    last_write: float = 0.0


@pytest.mark.parametrize(
    ("timeouts", "resp", "now", "want"),
    [
        pytest.param(Timeouts(10), Resp(), 9.9, None, id="total-not-yet"),
        pytest.param(Timeouts(10), Resp(True, 200, 9.9), 10.0, "total", id="total-even-while-writing"),
        pytest.param(Timeouts(10), Resp(True, 101, 9.9), 10.0, "total", id="total-cuts-websockets"),
        pytest.param(Timeouts(0), Resp(), 1e6, None, id="all-off"),
        pytest.param(
            Timeouts(10, response_start=2), Resp(), 2.0, "response-start", id="start-fires-before-first-byte"
        ),
        pytest.param(
            Timeouts(10, response_start=2), Resp(True, 200, 1.0), 5.0, None, id="start-not-after-byte"
        ),
        pytest.param(
            Timeouts(10, response_start=2), Resp(True, 101, 0.5), 5.0, None, id="start-not-after-101"
        ),
        pytest.param(Timeouts(10, idle=1), Resp(True, 200, 3.5), 4.4, None, id="idle-since-last-write"),
        pytest.param(Timeouts(10, idle=1), Resp(True, 200, 3.5), 4.5, "idle", id="idle-fires"),
        pytest.param(Timeouts(10, idle=1), Resp(False, None, 0.0), 1.0, "idle", id="idle-before-any-write"),
        pytest.param(Timeouts(10, idle=1), Resp(True, 101, 0.0), 5.0, None, id="idle-not-on-websocket"),
    ],
)
def test_which_timeout_ran_out(timeouts: Timeouts, resp: Resp, now: float, want: str | None) -> None:
    assert which_expired(timeouts, 0.0, resp, now) == want
    assert expired(timeouts, 0.0, resp, now) is (want is not None)


@pytest.mark.parametrize(
    ("timeouts", "interval"),
    [(Timeouts(300), 0.1), (Timeouts(300, idle=0.5), 0.05), (Timeouts(0.01), 0.005)],
)
def test_interval_is_fine_enough(timeouts: Timeouts, interval: float) -> None:
    assert timeouts.interval() == pytest.approx(interval)


async def test_sweep_cancels_only_expired_requests_once() -> None:
    sweeper = Sweeper(Timeouts(10, response_start=1))
    never = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    entries = []

    async def request(resp: Resp) -> None:
        entries.append(sweeper.track(resp, 0.0))
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
