"""Per-revision throttling in the activator: hold requests while no pod has room, release them in order.

A revision breaker (queue 10,000, capacity from :func:`activator.slicing.revision_capacity`) admits
requests in arrival order; each admitted request then takes a slot on one pod through the revision's
load-balancing policy. With cc > 0 every pod has its own breaker of ``cc`` slots, so with cc = 1 a pod
never gets two requests at once. With cc = 0 the revision gate is either shut (no pod: everyone waits)
or open (any pod: everyone passes). A pod that leaves keeps its in-flight requests until they finish
but gets no new ones. Waiting is cancellation-safe: a client that goes away leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

from serving.breaker import Breaker
from serving.errors import QueueFullError
from serving.types import Endpoint, RevisionKey

from .lb_policy import policy_for
from .slicing import MAX_CAPACITY, assigned_indices, revision_capacity

__all__ = ["QUEUE_DEPTH", "InfiniteBreaker", "PodTracker", "QueueFullError", "RevisionThrottler"]

QUEUE_DEPTH = 10_000  # Knative's breakerQueueDepth


class InfiniteBreaker:
    """The cc = 0 revision gate: capacity 0 (everyone waits) or anything above (everyone passes).

    Waiters are bounded by ``queue_depth`` like the regular breaker's.
    """

    __slots__ = ("_capacity", "_in_flight", "_queue_depth", "_waiters")

    def __init__(self, queue_depth: int = QUEUE_DEPTH) -> None:
        self._queue_depth = queue_depth
        self._capacity = 0
        self._in_flight = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def executing(self) -> int:
        return self._in_flight - len(self._waiters)

    async def acquire(self) -> None:
        if self._capacity > 0:
            self._in_flight += 1
            return
        if len(self._waiters) >= self._queue_depth:
            raise QueueFullError()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        self._in_flight += 1
        try:
            await fut
        except BaseException:
            self._in_flight -= 1
            raise
        finally:
            self._waiters.discard(fut)

    def try_acquire(self) -> bool:
        """Pass at once if the gate is open and nobody waits; False: acquire() would wait."""
        if self._capacity <= 0 or self._waiters:
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("InfiniteBreaker.release() without a matching acquire")
        self._in_flight -= 1

    def update_capacity(self, capacity: int) -> None:
        self._capacity = 1 if capacity > 0 else 0
        if self._capacity:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(None)


class PodTracker:
    """One pod as this activator sees it: its address, its breaker (cc > 0) and its in-flight count."""

    __slots__ = ("_weight", "attachment", "breaker", "endpoint", "removed")

    def __init__(self, endpoint: Endpoint, cc: int) -> None:
        self.endpoint = endpoint
        self.attachment: Any = None  # the caller's per-pod state (the handler's connection pool)
        self.breaker = Breaker(QUEUE_DEPTH, cc, cc) if cc > 0 else None
        self._weight = 0
        self.removed = False

    @property
    def address(self) -> str:
        return self.endpoint.address

    @property
    def weight(self) -> int:
        return self._weight

    def try_reserve(self) -> bool:
        if self.removed:
            return False
        if self.breaker is not None and not self.breaker.try_acquire():
            return False
        self._weight += 1
        return True

    def release(self) -> None:
        self._weight -= 1
        if self.breaker is not None:
            self.breaker.release()

    def __repr__(self) -> str:
        return f"PodTracker({self.address}, in_flight={self._weight}, removed={self.removed})"


class RevisionThrottler:
    """Admission for one revision. ``acquire()`` returns the pod to use; ``release(pod)`` when done."""

    def __init__(
        self,
        key: RevisionKey,
        cc: int,
        *,
        rng: random.Random | None = None,
        queue_depth: int = QUEUE_DEPTH,
        on_pod_gone: Callable[[PodTracker], None] | None = None,
    ) -> None:
        if cc < 0:
            raise ValueError(f"containerConcurrency of {key} must be >= 0, got {cc}")
        self.key = key
        self.cc = cc
        self._rng = rng or random.Random()
        self._policy = policy_for(cc, self._rng)
        self.breaker: Breaker | InfiniteBreaker = (
            Breaker(queue_depth, MAX_CAPACITY, 0) if cc > 0 else InfiniteBreaker(queue_depth)
        )
        self._pods: dict[str, PodTracker] = {}
        # Pods that left with requests still running: those requests keep their revision slot, so the
        # capacity grows by their count until they end; otherwise one long request (a websocket) on a
        # pod that went away would take a slot from the pods that replaced it.
        self._draining: set[PodTracker] = set()
        self._assigned: list[PodTracker] = []
        self._num_activators = 1
        self._activator_index = 0
        self._changed: asyncio.Future[None] | None = None
        self._on_pod_gone = on_pod_gone
        # Knative's revision breaker allows 10,000 + 2**31-1 pending, which never fills; we bound the
        # requests that actually wait at ``queue_depth`` so a burst past it gets 503, not memory growth.
        self._queue_depth = queue_depth

    # -- observation ---------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.breaker.capacity

    @property
    def has_pods(self) -> bool:
        return bool(self._assigned)

    @property
    def pods(self) -> list[PodTracker]:
        return list(self._pods.values())

    @property
    def assigned(self) -> list[PodTracker]:
        return list(self._assigned)

    @property
    def in_flight(self) -> int:
        """Requests admitted here: queued plus proxied."""
        return self.breaker.in_flight

    @property
    def queued(self) -> int:
        return self.breaker.waiting

    # -- inputs --------------------------------------------------------------------------------
    def update_pods(self, healthy: Sequence[Endpoint]) -> None:
        """The pods that may get new requests now (probed healthy, not terminating)."""
        wanted = {ep.address: ep for ep in healthy}
        for addr, tracker in list(self._pods.items()):
            if addr not in wanted:
                del self._pods[addr]
                tracker.removed = True
                if tracker.weight > 0:
                    self._draining.add(tracker)
                elif self._on_pod_gone is not None:
                    self._on_pod_gone(tracker)
        for addr, ep in wanted.items():
            if addr in self._pods:
                self._pods[addr].endpoint = ep
            else:
                self._pods[addr] = PodTracker(ep, self.cc)
        self._recompute()

    def update_activators(self, count: int, index: int) -> None:
        """How many activators share this revision and where this one sits (-1: not listed yet)."""
        self._num_activators = max(1, count)
        self._activator_index = index
        self._recompute()

    def _recompute(self) -> None:
        ordered = [self._pods[a] for a in sorted(self._pods)]
        if self.cc > 0:
            idx = assigned_indices(len(ordered), self._activator_index, self._num_activators)
            self._assigned = [ordered[i] for i in idx]
            for t in ordered:
                if t.breaker is not None:
                    t.breaker.update_capacity(self.cc)
        else:
            self._assigned = ordered
        n = len(ordered)
        capacity = revision_capacity(self.cc, self._num_activators, self._activator_index, n, n)
        if self.cc > 0 and capacity > 0:
            capacity = min(MAX_CAPACITY, capacity + sum(t.weight for t in self._draining))
        self.breaker.update_capacity(capacity)
        self._notify()

    def _notify(self) -> None:
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _has_free_slot(self) -> bool:
        b = self.breaker
        return b.capacity > 0 if isinstance(b, InfiniteBreaker) else b.has_free_slot

    # -- admission -----------------------------------------------------------------------------
    async def acquire(self) -> PodTracker:
        """Wait in order for room, then reserve a slot on one pod; QueueFullError when the queue is full."""
        breaker = self.breaker
        if breaker.waiting >= self._queue_depth and not self._has_free_slot():
            raise QueueFullError()
        await breaker.acquire()
        try:
            while True:
                pod = self._policy.pick(self._assigned)
                if pod is not None:
                    return pod
                # Admitted while the pods' slots were just taken (a pod left, capacity shrank):
                # wait for the next release or pod change instead of spinning.
                if self._changed is None or self._changed.done():
                    self._changed = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._changed)
        except BaseException:
            self.breaker.release()
            raise

    def try_acquire(self) -> PodTracker | None:
        """A pod with room at once, or None where acquire() would wait (or refuse): nobody is passed
        in the queue. For callers that cannot wait (the engine's callback-only path)."""
        if not self.breaker.try_acquire():
            return None
        pod = self._policy.pick(self._assigned)
        if pod is None:
            self.breaker.release()
        return pod

    def release(self, pod: PodTracker) -> None:
        pod.release()
        if pod.removed:
            # Shrink the capacity first, so the slot this request leaves is not handed to a waiter.
            if pod.weight == 0:
                self._draining.discard(pod)
                if self._on_pod_gone is not None:
                    self._on_pod_gone(pod)
            self._recompute()
        self.breaker.release()
        if self._changed is not None:
            self._notify()
