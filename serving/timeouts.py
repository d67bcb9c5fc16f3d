"""Knative's three per-request timeouts, enforced by one sweeper instead of a loop timer per request.

Used by the queue-proxy (``REVISION_*_TIMEOUT_SECONDS``) and the activator (the revision's
``timeoutSeconds``, ``responseStartTimeoutSeconds``, ``idleTimeoutSeconds``, falling back to
300 / 300 / 0 s there); 0 turns one off:

* total: a hard cap on the whole request, time waiting in a queue included;
* response-start: only until the first byte of the response (a websocket's 101 is a first byte, so
  an open websocket is never cut by it);
* idle: time since the last byte written to the client; not applied after a 101, where the engine
  sees only one direction of the tunnel.

Arming a loop timer per request costs several microseconds (a TimerHandle in the loop's heap, then
its cancellation); adding to a set costs a fraction of one, and with 10,000 requests queued for a
cold revision one sweep every 100 ms is cheaper than 10,000 timers. A timeout fires at most one
interval late, far below the one-second resolution of Knative's settings. The sweeper runs only
while requests are tracked, so an idle process does not wake up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Progress", "RequestTimeouts", "Sweeper", "Tracked", "which_expired"]


@dataclass(frozen=True, slots=True)
class RequestTimeouts:
    total: float = 300.0
    response_start: float = 300.0
    idle: float = 0.0

    def __post_init__(self) -> None:
        for name in ("total", "response_start", "idle"):
            if getattr(self, name) < 0:
                raise ValueError(f"timeout {name} must be >= 0 seconds, got {getattr(self, name)}")

    @property
    def any(self) -> bool:
        return bool(self.total or self.response_start or self.idle)

    def interval(self) -> float:
        """A sweep interval fine enough for these timeouts: 100 ms, finer only below a second."""
        live = [t for t in (self.total, self.response_start, self.idle) if t > 0]
        return max(0.005, min(0.1, min(live) / 10)) if live else 0.1


class Progress(Protocol):
    started: bool
    status: int | None
    last_write: float


def which_expired(t: RequestTimeouts, start: float, resp: Progress, now: float) -> str | None:
    """Which timeout has run out at ``now``: "total", "response-start", "idle" or None."""
    if t.total and now - start >= t.total:
        return "total"
    if t.response_start and not resp.started and now - start >= t.response_start:
        return "response-start"
    # After a 101 the engine sees one direction of the tunnel only: no idle timeout on websockets.
    if t.idle and resp.status != 101 and now - max(start, resp.last_write) >= t.idle:
        return "idle"
    return None


class Tracked:
    __slots__ = ("fired", "resp", "start", "task", "timeouts")

    def __init__(self, task: asyncio.Task[object] | None, resp: Progress, start: float, t: RequestTimeouts):
        self.task = task
        self.resp = resp
        self.start = start
        self.timeouts = t
        self.fired: str | None = None


class Sweeper:
    """Cancels the task of every tracked request past one of its timeouts; runs only while needed."""

    __slots__ = ("_active", "_task", "interval")

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._active: set[Tracked] = set()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._active)

    def track(
        self, resp: Progress, start: float, t: RequestTimeouts, task: asyncio.Task[object] | None = None
    ) -> Tracked:
        """``task`` (default: the current one) is cancelled when a timeout fires."""
        if task is None:
            # The engine's responder knows its handler task: asyncio.current_task() would ask
            # get_running_loop(), a getpid() system call per request on Python 3.11.
            task = getattr(resp, "_task", None) or asyncio.current_task()
        entry = Tracked(task, resp, start, t)
        if t.total or t.response_start or t.idle:
            self._active.add(entry)
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run())
        return entry

    def untrack(self, entry: Tracked) -> None:
        self._active.discard(entry)

    def sweep(self, now: float) -> int:
        hits = []
        for entry in self._active:
            kind = which_expired(entry.timeouts, entry.start, entry.resp, now)
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
                await asyncio.sleep(self.interval)
                self.sweep(time.monotonic())
        finally:
            self._task = None
