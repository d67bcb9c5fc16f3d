"""Knative's three per-request timeouts, enforced by one sweeper instead of a timer per request.

* total (``REVISION_TIMEOUT_SECONDS``): a hard cap on the whole request, waiting included;
* response-start (``REVISION_RESPONSE_START_TIMEOUT_SECONDS``): only until the first byte of the
  response (a websocket's 101 is a first byte, so an open websocket is never cut by it);
* idle (``REVISION_IDLE_TIMEOUT_SECONDS``): time since the last byte written to the client; not
  applied after a 101, where the engine only sees one direction of the tunnel.

0 turns a timeout off. Arming a loop timer per request costs several microseconds (a TimerHandle in
the loop's heap, then its cancellation); registering in a set costs a fraction of one. The sweeper
checks every tracked request each ``interval`` (100 ms, finer only for sub-second timeouts), so a
timeout fires at most one interval late - far below the one-second resolution of Knative's settings.
It runs only while requests are tracked, so an idle queue-proxy does not wake up.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Sweeper", "Timeouts", "Tracked", "expired", "which_expired"]


class Progress(Protocol):
    """What the sweeper reads of a response (the engine's Responder has these)."""

    started: bool
    status: int | None
    last_write: float


class Timeouts:
    __slots__ = ("idle", "response_start", "total")

    def __init__(self, total: float = 300.0, response_start: float = 0.0, idle: float = 0.0) -> None:
        self.total = total
        self.response_start = response_start
        self.idle = idle

    @property
    def any(self) -> bool:
        return bool(self.total or self.response_start or self.idle)

    def interval(self) -> float:
        shortest = min(t for t in (self.total, self.response_start, self.idle) if t > 0)
        return max(0.005, min(0.1, shortest / 10))


def which_expired(t: Timeouts, start: float, resp: Progress, now: float) -> str | None:
    """The timeout that has run out at ``now`` ("total", "response-start" or "idle"), or None."""
    if t.total and now - start >= t.total:
        return "total"
    if t.response_start and not resp.started and now - start >= t.response_start:
        return "response-start"
    if t.idle and resp.status != 101 and now - resp.last_write >= t.idle:
        return "idle"
    return None


def expired(t: Timeouts, start: float, resp: Progress, now: float) -> bool:
    return which_expired(t, start, resp, now) is not None


class Tracked:
    __slots__ = ("fired", "resp", "start", "task")

    def __init__(self, task: asyncio.Task[object] | None, resp: Progress, start: float) -> None:
        self.task = task
        self.resp = resp
        self.start = start
        self.fired: str | None = None  # which timeout ran out


class Sweeper:
    __slots__ = ("_active", "_interval", "_task", "timeouts")

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._interval = timeouts.interval()
        self._active: set[Tracked] = set()
        self._task: asyncio.Task[None] | None = None

    def track(self, resp: Progress, start: float) -> Tracked:
        entry = Tracked(asyncio.current_task(), resp, start)
        self._active.add(entry)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return entry

    def untrack(self, entry: Tracked) -> None:
        self._active.discard(entry)

    def sweep(self, now: float) -> int:
        """Cancel the task of every tracked request past a timeout; returns how many."""
        t = self.timeouts
        hits = []
        for entry in self._active:
            if entry.fired is None:
                kind = which_expired(t, entry.start, entry.resp, now)
                if kind is not None:
                    entry.fired = kind
                    hits.append(entry)
        for entry in hits:
            self._active.discard(entry)
            if entry.task is not None:
                entry.task.cancel()
        return len(hits)

    async def _run(self) -> None:
        try:
            while self._active:
                await asyncio.sleep(self._interval)
                self.sweep(time.monotonic())
        finally:
            self._task = None
