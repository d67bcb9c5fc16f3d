"""Time as an injectable dependency, so decision logic and tests never read the wall clock directly."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "MonotonicClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    """Seconds from an arbitrary origin that never goes backwards: use for intervals and windows."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class SystemClock:
    """Unix seconds: use where a timestamp leaves the process (Stat.timestamp, logs)."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to."""

    __slots__ = ("t",)

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.t += seconds
        return self.t
