from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from activator.timeouts import RequestTimeouts, Sweeper, which_expired


@dataclass
class Resp:
    started: bool = False
    status: int | None = None
    last_write: float = 0.0


@pytest.mark.parametrize(
    ("t", "resp", "now", "want"),
    [
        pytest.param(RequestTimeouts(10, 5, 0), Resp(), 4.9, None, id="nothing-yet"),
        pytest.param(RequestTimeouts(10, 5, 0), Resp(), 5.0, "response-start", id="response-start"),
        pytest.param(
            RequestTimeouts(10, 5, 0), Resp(True, 200, 9), 9.5, None, id="started-no-response-start"
        ),
        pytest.param(RequestTimeouts(10, 5, 0), Resp(True, 200, 9), 10.0, "total", id="total"),
        pytest.param(RequestTimeouts(0, 0, 2), Resp(True, 200, 3), 4.9, None, id="idle-not-yet"),
        pytest.param(RequestTimeouts(0, 0, 2), Resp(True, 200, 3), 5.0, "idle", id="idle"),
        pytest.param(RequestTimeouts(0, 0, 2), Resp(True, 101, 0), 100, None, id="websocket-no-idle"),
        pytest.param(
            RequestTimeouts(0, 0, 2), Resp(False, None, -50), 1.0, None, id="idle-counts-from-start"
        ),
        pytest.param(RequestTimeouts(0, 0, 0), Resp(), 1e9, None, id="all-off"),
    ],
)
def test_which_expired(t: RequestTimeouts, resp: Resp, now: float, want: str | None) -> None:
    assert which_expired(t, 0.0, resp, now) == want


def test_negative_timeout_named() -> None:
    with pytest.raises(ValueError, match="timeout idle must be >= 0 seconds, got -1"):
        RequestTimeouts(1, 1, -1)


async def test_sweeper_cancels_only_expired_and_stops_when_empty() -> None:
    sweeper = Sweeper(interval=0.01)
    loop = asyncio.get_running_loop()
    entries = {}

    async def wait(name: str, t: RequestTimeouts) -> str:
        entries[name] = sweeper.track(Resp(), loop.time(), t)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return f"{name}:{entries[name].fired}"
        return "never"

    a = asyncio.create_task(wait("a", RequestTimeouts(0.05, 0, 0)))
    b = asyncio.create_task(wait("b", RequestTimeouts(60, 60, 0)))
    assert await asyncio.wait_for(a, 10) == "a:total"
    assert not b.done() and len(sweeper) == 1
    sweeper.untrack(entries["b"])
    b.cancel()
    assert len(sweeper) == 0


async def test_untimed_requests_are_not_tracked() -> None:
    sweeper = Sweeper()
    sweeper.track(Resp(), 0.0, RequestTimeouts(0, 0, 0))
    assert len(sweeper) == 0
