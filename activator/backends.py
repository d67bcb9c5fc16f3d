"""Which pods of a revision may get requests: endpoint lists in, probed healthy pods out.

Pods come from an :class:`EndpointSource` (the local runtime and Kubernetes implement it). A new pod
gets traffic only once its queue-proxy answers ``GET /healthz`` with ``K-Network-Probe: queue`` by
``200`` and the body ``queue`` (Knative's activator probe, 300 ms per round, again every 200 ms while
any known pod is still unhealthy). A new endpoint list starts the next round at once instead of at the
end of that pause: a pod the runtime has just seen ready must not wait up to 200 ms on a cold start.
A pod that disappears or turns terminating leaves the healthy set at once: it gets no new requests,
while those it already has finish (the throttler keeps them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from serving.headers import ACTIVATOR_PROBE_UA
from serving.probe import probe_queue
from serving.types import Endpoint, RevisionKey

__all__ = [
    "PROBE_FREQUENCY",
    "PROBE_TIMEOUT",
    "EndpointBoard",
    "EndpointSource",
    "HttpProber",
    "Prober",
    "RevisionBackends",
]

log = logging.getLogger("zeroscale.activator.backends")

PROBE_TIMEOUT = 0.3  # Knative's PROBE_TIMEOUT, per round
PROBE_FREQUENCY = 0.2  # Knative's PROBE_FREQUENCY, between rounds while some pod is unhealthy


class EndpointSource(Protocol):
    """Where a revision's pods come from.

    ``subscribe`` calls ``callback`` with the revision's whole endpoint list now (when known) and after
    every change, until the returned function is called.
    """

    def subscribe(
        self, revision: RevisionKey, callback: Callable[[Sequence[Endpoint]], None]
    ) -> Callable[[], None]: ...


class EndpointBoard:
    """An in-memory EndpointSource: whoever knows the pods ``publish``es them (the local runtime)."""

    def __init__(self) -> None:
        self._lists: dict[RevisionKey, tuple[Endpoint, ...]] = {}
        self._subs: dict[RevisionKey, list[Callable[[Sequence[Endpoint]], None]]] = {}

    def publish(self, revision: RevisionKey, endpoints: Sequence[Endpoint]) -> None:
        self._lists[revision] = tuple(endpoints)
        for cb in list(self._subs.get(revision, ())):
            cb(self._lists[revision])

    def forget(self, revision: RevisionKey) -> None:
        self.publish(revision, ())
        self._lists.pop(revision, None)

    def get(self, revision: RevisionKey) -> tuple[Endpoint, ...]:
        return self._lists.get(revision, ())

    def subscribe(
        self, revision: RevisionKey, callback: Callable[[Sequence[Endpoint]], None]
    ) -> Callable[[], None]:
        subs = self._subs.setdefault(revision, [])
        subs.append(callback)
        if revision in self._lists:
            callback(self._lists[revision])

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                subs.remove(callback)

        return unsubscribe


class Prober(Protocol):
    async def probe(self, endpoint: Endpoint) -> bool: ...


class HttpProber:
    """Knative's activator probe over a plain socket: one GET, Connection: close, tiny answer."""

    def __init__(self, timeout: float = PROBE_TIMEOUT) -> None:
        self.timeout = timeout

    async def probe(self, endpoint: Endpoint) -> bool:
        return await probe_queue(
            endpoint.host, endpoint.port, self.timeout, path=b"/healthz", user_agent=ACTIVATOR_PROBE_UA
        )


class RevisionBackends:
    """Probes one revision's pods and reports the healthy ones through ``on_healthy``."""

    def __init__(
        self,
        revision: RevisionKey,
        on_healthy: Callable[[list[Endpoint]], None],
        prober: Prober | None = None,
        *,
        frequency: float = PROBE_FREQUENCY,
    ) -> None:
        self.revision = revision
        self._on_healthy = on_healthy
        self._prober = prober or HttpProber()
        self._frequency = frequency
        self._known: dict[str, Endpoint] = {}
        self._healthy: dict[str, Endpoint] = {}
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None  # set: probe again without finishing the pause
        self._closed = False

    @property
    def healthy(self) -> list[Endpoint]:
        return list(self._healthy.values())

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """A new endpoint list from the source (the whole list, not a delta)."""
        if self._closed:
            return
        known = {ep.address: ep for ep in endpoints if not ep.terminating}
        changed = False
        for addr in list(self._healthy):
            ep = known.get(addr)
            prev = self._known.get(addr)
            # Gone, terminating, or ready -> not ready: no new requests until probed healthy again.
            if ep is None or (prev is not None and prev.ready and not ep.ready):
                del self._healthy[addr]
                changed = True
            elif ep != self._healthy[addr]:
                self._healthy[addr] = ep
        self._known = known
        if changed:
            self._publish()
        self._ensure_probing()

    def suspect(self, endpoint: Endpoint) -> None:
        """A pod refused a connection: no new requests until a probe passes again."""
        if self._healthy.pop(endpoint.address, None) is not None:
            self._publish()
            self._ensure_probing()

    def _publish(self) -> None:
        self._on_healthy(sorted(self._healthy.values(), key=lambda e: e.address))

    def _ensure_probing(self) -> None:
        if not any(a not in self._healthy for a in self._known):
            return
        if self._task is None or self._task.done():
            self._kick = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._probe_loop(self._kick))
        else:
            assert self._kick is not None
            self._kick.set()

    async def _probe_loop(self, kick: asyncio.Event) -> None:
        while not self._closed:
            kick.clear()
            pending = [ep for a, ep in self._known.items() if a not in self._healthy]
            if not pending:
                return
            probes = (self._prober.probe(ep) for ep in pending)
            results = await asyncio.gather(*probes, return_exceptions=True)
            added = False
            for ep, ok in zip(pending, results, strict=True):
                if isinstance(ok, BaseException):
                    log.debug("probe of %s failed: %r", ep.address, ok)
                    continue
                current = self._known.get(ep.address)
                if ok is True and current is not None and ep.address not in self._healthy:
                    self._healthy[ep.address] = current
                    added = True
            if added:
                self._publish()
            if all(a in self._healthy for a in self._known):
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._frequency):
                    await kick.wait()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
