"""Per-revision concurrency as the activator sees it, reported to the autoscaler every second.

The accounting is the queue-proxy's (:class:`serving.stats.RequestStats`) and covers the whole time a
request spends here, queued or proxied. The first request for a revision with no entry sends a poke at
once (concurrency 1, count 1) so a scaled-to-zero revision starts scaling without waiting for the next
tick; the first periodic report then subtracts that request so it is not counted twice. An entry whose
average concurrency was 0 over a whole period, with no request holding it, is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from serving.clock import Clock, MonotonicClock
from serving.stat import Stat, WireStat
from serving.stats import RequestStats
from serving.types import RevisionKey

__all__ = ["REPORT_INTERVAL", "CallbackSink", "ConcurrencyReporter", "StatSink"]

log = logging.getLogger("zeroscale.activator.reporter")

REPORT_INTERVAL = 1.0  # Knative's reportInterval


class StatSink(Protocol):
    """Where stats go: never blocks the caller (a websocket sink queues and sends on its own)."""

    def send(self, stats: list[WireStat]) -> None: ...


class CallbackSink:
    """In-process delivery (local mode: the autoscaler runs in the same process)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[list[WireStat]], None]) -> None:
        self._fn = fn

    def send(self, stats: list[WireStat]) -> None:
        try:
            self._fn(stats)
        except Exception:
            log.exception("stat callback failed")


class _Entry:
    __slots__ = ("first", "stats")

    def __init__(self, now: float) -> None:
        self.stats = RequestStats(now)
        self.first = True  # the poke already counted one request


class ConcurrencyReporter:
    def __init__(
        self,
        pod_name: str,
        sink: StatSink,
        clock: Clock | None = None,
    ) -> None:
        self.pod_name = pod_name
        self._sink = sink
        self._clock = clock or MonotonicClock()
        self._entries: dict[RevisionKey, _Entry] = {}

    @property
    def revisions(self) -> list[RevisionKey]:
        return list(self._entries)

    def request_in(self, key: RevisionKey, now: float | None = None) -> None:
        t = self._clock.now() if now is None else now
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(t)
            self._sink.send([WireStat(key.namespace, key.name, Stat(self.pod_name, 1.0, 0.0, 1.0, 0.0))])
        entry.stats.request_in(t)

    def request_out(self, key: RevisionKey, now: float | None = None) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.stats.request_out(self._clock.now() if now is None else now)

    def report(self, now: float | None = None) -> list[WireStat]:
        """One period's messages (the caller sends them); drops entries idle for the whole period."""
        t = self._clock.now() if now is None else now
        out: list[WireStat] = []
        for key, entry in list(self._entries.items()):
            r = entry.stats.report(t)
            if r.average_concurrency == 0 and entry.stats.concurrency == 0:
                del self._entries[key]
                continue
            concurrency, count = r.average_concurrency, r.request_count
            if entry.first:
                entry.first = False
                concurrency = max(0.0, concurrency - 1)
                count = max(0.0, count - 1)
            out.append(WireStat(key.namespace, key.name, Stat(self.pod_name, concurrency, 0.0, count, 0.0)))
        return out

    def tick(self, now: float | None = None) -> list[WireStat]:
        msgs = self.report(now)
        if msgs:
            self._sink.send(msgs)
        return msgs

    async def run_forever(self, interval: float = REPORT_INTERVAL) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            with contextlib.suppress(Exception):
                self.tick()
