"""Per-revision metric windows and the 1-second scrape loop (Knative's MetricCollector).

Every stat, scraped from queue-proxies or streamed by activators, is recorded as
``concurrency = average_concurrent - average_proxied`` and ``rps = request_count - proxied_count``
(requests that came through the activator are in the activator's own stats already) into a stable
and a panic window each. Activator stats land at their own timestamp, in the same buckets, and add up.

"No data" (the stable window is empty) is only reported when there is something to scrape; with
target-burst-capacity -1 all traffic goes through the activator, nothing is scraped, and an empty
window simply means zero load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Protocol

from serving.clock import Clock
from serving.stat import Stat
from serving.types import RevisionKey

from .config import RevisionScaling
from .windows import TimedBuckets, WeightedBuckets

__all__ = ["SCRAPE_INTERVAL", "Collector", "RevisionMetrics", "StatScraper"]

log = logging.getLogger("zeroscale.autoscaler.collector")

SCRAPE_INTERVAL = 1.0
BUCKET_SIZE = 1.0


class StatScraper(Protocol):
    """One revision-wide Stat (the sampled pods scaled up to all of them), or None if nothing to scrape.

    Raises on failure (no pod answered); the collector then records nothing for that second.
    """

    async def scrape(self, revision: RevisionKey, stable_window: float) -> Stat | None: ...


def _buckets(window: float, aggregation: str) -> TimedBuckets:
    if aggregation == "weighted-exponential":
        return WeightedBuckets(window, BUCKET_SIZE)
    return TimedBuckets(window, BUCKET_SIZE)


class RevisionMetrics:
    """Stable and panic windows of concurrency and RPS for one revision (pure)."""

    __slots__ = (
        "aggregation",
        "conc",
        "conc_panic",
        "metric",
        "panic_window",
        "rps",
        "rps_panic",
        "scrape",
        "stable_window",
    )

    def __init__(
        self,
        stable_window: float,
        panic_window: float,
        aggregation: str = "linear",
        metric: str = "concurrency",
        *,
        scrape: bool = True,
    ) -> None:
        self.stable_window = stable_window
        self.panic_window = panic_window
        self.aggregation = aggregation
        self.metric = metric
        self.scrape = scrape
        self.conc = _buckets(stable_window, aggregation)
        self.conc_panic = _buckets(panic_window, aggregation)
        self.rps = _buckets(stable_window, aggregation)
        self.rps_panic = _buckets(panic_window, aggregation)

    @classmethod
    def for_scaling(cls, s: RevisionScaling) -> RevisionMetrics:
        return cls(
            s.stable_window,
            s.panic_window,
            s.aggregation,
            s.spec.scaling_metric,
            scrape=s.spec.target_burst_capacity != -1,
        )

    def update(self, s: RevisionScaling, t: float) -> None:
        """Follow a changed spec: windows are resized keeping their newest data."""
        if s.aggregation != self.aggregation:
            fresh = RevisionMetrics.for_scaling(s)
            for name in ("conc", "conc_panic", "rps", "rps_panic", "aggregation"):
                setattr(self, name, getattr(fresh, name))
        else:
            for b in (self.conc, self.rps):
                b.resize_window(s.stable_window, t)
            for b in (self.conc_panic, self.rps_panic):
                b.resize_window(s.panic_window, t)
        self.stable_window, self.panic_window = s.stable_window, s.panic_window
        self.metric = s.spec.scaling_metric
        self.scrape = s.spec.target_burst_capacity != -1

    def record(self, t: float, stat: Stat) -> bool:
        """Record one stat; False (ignored) when it carries a NaN or infinity, which would stick in a sum."""
        concurrency = stat.average_concurrent_requests - stat.average_proxied_concurrent_requests
        rps = stat.request_count - stat.proxied_request_count
        if not (math.isfinite(concurrency) and math.isfinite(rps) and math.isfinite(t)):
            return False
        self.conc.record(t, concurrency)
        self.conc_panic.record(t, concurrency)
        self.rps.record(t, rps)
        self.rps_panic.record(t, rps)
        return True

    def observed(self, t: float) -> tuple[float, float] | None:
        """(stable, panic) averages of the scaling metric at t; None = no data to decide on."""
        stable, panic = (self.rps, self.rps_panic) if self.metric == "rps" else (self.conc, self.conc_panic)
        if self.scrape and stable.is_empty(t):
            return None
        return stable.window_average(t), panic.window_average(t)


class Collector:
    """Windows of every revision plus the scrape loop that feeds them."""

    def __init__(
        self, scraper: StatScraper | None, clock: Clock, *, interval: float = SCRAPE_INTERVAL
    ) -> None:
        self._scraper = scraper
        self._clock = clock
        self._interval = interval
        self._metrics: dict[RevisionKey, RevisionMetrics] = {}
        self._busy: dict[RevisionKey, asyncio.Task[None]] = {}
        self.scrape_errors: dict[RevisionKey, str] = {}

    def upsert(self, revision: RevisionKey, scaling: RevisionScaling) -> None:
        m = self._metrics.get(revision)
        if m is None:
            self._metrics[revision] = RevisionMetrics.for_scaling(scaling)
        else:
            m.update(scaling, self._clock.now())

    def remove(self, revision: RevisionKey) -> None:
        self._metrics.pop(revision, None)
        self.scrape_errors.pop(revision, None)
        task = self._busy.pop(revision, None)
        if task is not None:
            task.cancel()

    def __contains__(self, revision: object) -> bool:
        return revision in self._metrics

    def record(self, revision: RevisionKey, t: float, stat: Stat) -> bool:
        """Record a stat at t; False (ignored) for a revision that is not collected."""
        m = self._metrics.get(revision)
        if m is None:
            return False
        if not m.record(t, stat):
            log.warning("stat for %s with a non-finite value ignored: %s", revision, stat)
            return False
        return True

    def observed(self, revision: RevisionKey, t: float) -> tuple[float, float] | None:
        m = self._metrics.get(revision)
        return None if m is None else m.observed(t)

    async def scrape(self, revision: RevisionKey) -> None:
        """Scrape one revision once and record the result at the time the answer came."""
        m = self._metrics.get(revision)
        if m is None or not m.scrape or self._scraper is None:
            return
        try:
            stat = await self._scraper.scrape(revision, m.stable_window)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one revision's failure must not stop the others
            if self.scrape_errors.get(revision) != str(e):
                log.warning("scraping %s failed: %s", revision, e)
            self.scrape_errors[revision] = str(e)
            return
        self.scrape_errors.pop(revision, None)
        if stat is not None and self._metrics.get(revision) is m:
            m.record(self._clock.now(), stat)

    def tick(self) -> list[asyncio.Task[None]]:
        """Start a scrape for every revision whose previous one finished (a slow pod never piles up)."""
        started = []
        for rev in list(self._metrics):
            task = self._busy.get(rev)
            if task is not None and not task.done():
                continue
            task = asyncio.get_running_loop().create_task(self.scrape(rev))
            self._busy[rev] = task
            started.append(task)
        return started

    async def scrape_all(self) -> None:
        """One round for every revision, awaited (tests and the simulator of a single second)."""
        await asyncio.gather(*self.tick(), return_exceptions=True)

    async def run_forever(self) -> None:
        try:
            while True:
                self.tick()
                await asyncio.sleep(self._interval)
        finally:
            for task in self._busy.values():
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._busy.values(), return_exceptions=True)
