"""Scraping queue-proxies: ``GET http://<pod>:<metrics_port>/metrics`` as protobuf, sampled as Knative does.

Of N ready pods only n = sample_size(N) are asked (N <= 3: all; else ceil(N*X / (N + X - 1)) with
X = 1.96^2 * 100 / 5^2 = 15.3664, i.e. 95 % confidence within 5 %: 10 pods -> 7, 100 -> 14), preferring
pods that have existed for a whole stable window (a young pod's averages cover less time); if a pod
fails, its worker moves on to the next one. The n answers are summed and scaled by N / n into one
revision-wide Stat. A pod's age is the time since this scraper first saw it in the target list.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from typing import Protocol

import aiohttp

from serving.clock import Clock, MonotonicClock
from serving.errors import ZeroscaleError
from serving.stat import PROTOBUF_CONTENT_TYPE, Stat, decode_stat
from serving.types import Endpoint, RevisionKey

__all__ = ["PodScraper", "ScrapeError", "ScrapeTargets", "sample_size", "scale_stats"]

SCRAPE_TIMEOUT = 3.0
MAX_STAT_BYTES = 64 * 1024
_X = 1.96**2 * 100 / 5**2  # 15.3664
SCRAPER_POD_NAME = "service-scraper"


class ScrapeError(ZeroscaleError):
    """No (or too few) pods of a revision answered a scrape."""


class ScrapeTargets(Protocol):
    """The pods of a revision (any order); only ready, non-terminating ones are scraped."""

    def get(self, revision: RevisionKey) -> Sequence[Endpoint]: ...


def sample_size(pods: int) -> int:
    """How many of ``pods`` to scrape: 4 -> 4, 5 -> 4, 10 -> 7, 100 -> 14, 1000 -> 16."""
    if pods <= 3:
        return max(pods, 0)
    return math.ceil(pods * _X / (pods + _X - 1))


def scale_stats(stats: Sequence[Stat], sample: int, total: int) -> Stat:
    """Sum of ``sample`` pods' stats, scaled to ``total`` pods (Knative's computeAverages)."""
    return Stat(
        pod_name=SCRAPER_POD_NAME,
        average_concurrent_requests=sum(s.average_concurrent_requests for s in stats) / sample * total,
        average_proxied_concurrent_requests=sum(s.average_proxied_concurrent_requests for s in stats)
        / sample
        * total,
        request_count=sum(s.request_count for s in stats) / sample * total,
        proxied_request_count=sum(s.proxied_request_count for s in stats) / sample * total,
        process_uptime=sum(s.process_uptime for s in stats) / sample,
        timestamp=0,
    )


class PodScraper:
    def __init__(
        self,
        targets: ScrapeTargets,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        timeout: float = SCRAPE_TIMEOUT,
    ) -> None:
        self._targets = targets
        self._clock = clock or MonotonicClock()
        self._rng = rng or random.Random()
        self._timeout = timeout
        self._first_seen: dict[RevisionKey, dict[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=4),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self, revision: RevisionKey) -> None:
        self._first_seen.pop(revision, None)

    async def fetch(self, ep: Endpoint) -> Stat:
        url = f"http://{ep.host}:{ep.metrics_port}/metrics"
        try:
            async with self._session_now().get(url, headers={"Accept": PROTOBUF_CONTENT_TYPE}) as resp:
                if resp.status != 200:
                    raise ScrapeError(f"{url}: status {resp.status}")
                if resp.content_type != PROTOBUF_CONTENT_TYPE:
                    raise ScrapeError(
                        f"{url}: content type {resp.content_type!r}, want {PROTOBUF_CONTENT_TYPE}"
                    )
                body = await resp.content.read(MAX_STAT_BYTES + 1)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise ScrapeError(f"{url}: {type(e).__name__}: {e}") from e
        if len(body) > MAX_STAT_BYTES:
            raise ScrapeError(f"{url}: Stat larger than {MAX_STAT_BYTES} bytes")
        try:
            return decode_stat(body)
        except ValueError as e:
            raise ScrapeError(f"{url}: {e}") from e

    def _order(
        self, revision: RevisionKey, pods: list[Endpoint], stable_window: float, n: int
    ) -> list[Endpoint]:
        now = self._clock.now()
        seen = self._first_seen.setdefault(revision, {})
        names = {p.pod_name for p in pods}
        for gone in [name for name in seen if name not in names]:
            del seen[gone]
        old: list[Endpoint] = []
        young: list[Endpoint] = []
        for p in pods:
            first = seen.setdefault(p.pod_name, now)
            (old if now - first >= stable_window else young).append(p)
        # Enough old pods: a random n of them (young ones only as spares). Too few: all old, random young.
        self._rng.shuffle(young if len(old) < n else old)
        return old + young

    async def scrape(self, revision: RevisionKey, stable_window: float) -> Stat | None:
        pods = [e for e in self._targets.get(revision) if e.ready and not e.terminating]
        if not pods:
            self.forget(revision)
            return None
        total = len(pods)
        n = sample_size(total)
        order = self._order(revision, pods, stable_window, n)
        results: list[Stat] = []
        errors: list[str] = []
        next_idx = 0

        async def worker() -> bool:
            nonlocal next_idx
            while next_idx < len(order):
                ep = order[next_idx]
                next_idx += 1
                try:
                    results.append(await self.fetch(ep))
                    return True
                except ScrapeError as e:
                    errors.append(str(e))
            return False

        done = await asyncio.gather(*(worker() for _ in range(n)))
        if not all(done):
            if results:
                raise ScrapeError(
                    f"{revision}: only {len(results)} of {n} sampled pods answered ({errors[-1]})"
                )
            raise ScrapeError(
                f"{revision}: no pod answered a scrape ({errors[-1] if errors else 'none tried'})"
            )
        return scale_stats(results, n, total)
