"""A concurrency limiter with a bounded FIFO wait queue; it knows nothing of HTTP.

Knative's shape: ``max_concurrency`` execution slots of which ``capacity`` are usable right now, and
``queue_depth + max_concurrency`` pending slots in all (a request holds a pending slot from arrival
until release). With cc = 10 that is 110 requests admitted at once, 10 running and 100 waiting in
order; the 111th gets :class:`QueueFullError` at once, which the HTTP layer turns into a 503.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .errors import QueueFullError

__all__ = ["Breaker", "QueueFullError"]


class Breaker:
    __slots__ = ("_capacity", "_dead", "_in_use", "_max_concurrency", "_pending", "_total", "_waiters")

    def __init__(self, queue_depth: int, max_concurrency: int, initial_capacity: int | None = None) -> None:
        if queue_depth < 0:
            raise ValueError(f"queue_depth must be >= 0, got {queue_depth}")
        if max_concurrency < 0:
            raise ValueError(f"max_concurrency must be >= 0, got {max_concurrency}")
        capacity = max_concurrency if initial_capacity is None else initial_capacity
        if not 0 <= capacity <= max_concurrency:
            raise ValueError(f"initial_capacity must be in [0, {max_concurrency}], got {capacity}")
        self._max_concurrency = max_concurrency
        self._total = queue_depth + max_concurrency
        self._capacity = capacity
        self._in_use = 0
        self._pending = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Futures of waiters that gave up, still sitting in the deque; compacted when they dominate
        # so that clients giving up under overload cannot grow the deque past the pending bound.
        self._dead = 0

    # -- observation ---------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Execution slots usable now."""
        return self._capacity

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released: waiting plus executing (Knative's InFlight)."""
        return self._pending

    @property
    def executing(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return self._pending - self._in_use

    @property
    def has_free_slot(self) -> bool:
        return self._in_use < self._capacity and self._pending < self._total

    # -- admission -----------------------------------------------------------------------------
    async def acquire(self) -> None:
        """Wait in order for an execution slot; raise QueueFullError when no pending slot is left.

        Cancellation (a client that went away) gives the pending slot back at once.
        """
        if self._pending >= self._total:
            raise QueueFullError()
        self._pending += 1
        if self._in_use < self._capacity and len(self._waiters) == self._dead:
            self._in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            self._pending -= 1
            if fut.done() and not fut.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self._in_use -= 1
                self._wake()
            else:
                if not fut.done():
                    fut.cancel()
                self._dead += 1
                if self._dead > 64 and self._dead * 2 > len(self._waiters):
                    self._compact()
            raise

    def try_acquire(self) -> bool:
        """Take an execution slot only if one is free right now (Knative's Reserve)."""
        if self._pending >= self._total or self._in_use >= self._capacity or len(self._waiters) > self._dead:
            return False
        self._pending += 1
        self._in_use += 1
        return True

    def release(self) -> None:
        """Give back the slot taken by acquire() or try_acquire()."""
        if self._in_use <= 0:
            raise RuntimeError("Breaker.release() without a matching acquire")
        self._pending -= 1
        self._in_use -= 1
        self._wake()

    def update_capacity(self, capacity: int) -> None:
        """Change the usable slots, clamped to [0, max_concurrency]; waiters are woken in order."""
        self._capacity = max(0, min(capacity, self._max_concurrency))
        self._wake()

    # -- internals -----------------------------------------------------------------------------
    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._in_use < self._capacity:
            fut = waiters.popleft()
            if fut.done():
                self._dead -= 1
                continue
            self._in_use += 1
            fut.set_result(None)

    def _compact(self) -> None:
        self._waiters = deque(f for f in self._waiters if not f.done())
        self._dead = 0
