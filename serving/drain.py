"""The drain state machine of Knative's Drainer, with time injected.

After ``start()`` (SIGTERM or a preStop call), the drain completes once ``quiet_period`` seconds pass
with no new request, and not before every in-flight request (websockets included) has finished,
unless ``hard_cap`` seconds have passed since the start: then it completes regardless. Each new
request during the drain restarts the quiet period.
"""

from __future__ import annotations

import asyncio

from .clock import Clock, MonotonicClock

__all__ = ["Drainer"]


class Drainer:
    __slots__ = ("_clock", "_done", "_hard_cap", "_in_flight", "_last_request", "_started", "quiet_period")

    def __init__(self, quiet_period: float, hard_cap: float, clock: Clock | None = None) -> None:
        self.quiet_period = quiet_period
        self._hard_cap = hard_cap
        self._clock = clock or MonotonicClock()
        self._started: float | None = None
        self._last_request = 0.0
        self._in_flight = 0
        self._done: asyncio.Event | None = None

    @property
    def draining(self) -> bool:
        return self._started is not None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        if self._started is None:
            now = self._clock.now()
            self._started = now
            self._last_request = now

    def reset(self) -> None:
        """Leave the draining state (Knative: a preStop call with no SIGTERM after it)."""
        self._started = None

    def request_started(self) -> None:
        self._in_flight += 1
        if self._started is not None:
            self._last_request = self._clock.now()

    def request_finished(self) -> None:
        self._in_flight -= 1

    def complete(self, now: float | None = None) -> bool:
        """True once the drain may end at ``now``."""
        if self._started is None:
            return False
        t = self._clock.now() if now is None else now
        if t - self._started >= self._hard_cap:
            return True
        return self._in_flight <= 0 and t - self._last_request >= self.quiet_period

    def remaining(self, now: float | None = None) -> float:
        """Seconds until complete() may first turn true if nothing else happens (0 once complete)."""
        if self._started is None:
            return self.quiet_period
        t = self._clock.now() if now is None else now
        cap_left = max(0.0, self._started + self._hard_cap - t)
        if self._in_flight > 0:
            return cap_left
        return min(cap_left, max(0.0, self._last_request + self.quiet_period - t))

    async def wait(self, poll: float = 0.05) -> None:
        """Return once the drain has started and completed."""
        # The condition is a function of time (the quiet period), not of an event: poll the clock.
        while not self.complete():  # noqa: ASYNC110
            await asyncio.sleep(poll)
