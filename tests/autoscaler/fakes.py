"""Five-line fakes for the autoscaler's protocols: a cluster whose pods follow the scaler, a scraper."""

from __future__ import annotations

from serving.stat import Stat
from serving.types import RevisionKey


class FakeCluster:
    """Scaler + ReadyPodCounter: replicas become ready after ``start_delay`` seconds of ``advance``."""

    def __init__(self, start_delay: float = 0.0) -> None:
        self.replicas: dict[RevisionKey, int] = {}
        self.ready: dict[RevisionKey, int] = {}
        self.calls: list[tuple[RevisionKey, int]] = []
        self.start_delay = start_delay
        self._pending: list[tuple[float, RevisionKey]] = []
        self.now = 0.0
        self.fail_count = False

    async def scale(self, revision: RevisionKey, desired: int) -> None:
        self.calls.append((revision, desired))
        self.replicas[revision] = desired
        ready = self.ready.get(revision, 0)
        if desired < ready:
            self.ready[revision] = desired
        self._pending = [(t, r) for t, r in self._pending if r != revision]
        for _ in range(desired - ready):
            self._pending.append((self.now + self.start_delay, revision))
        self.advance(self.now)

    def advance(self, now: float) -> None:
        self.now = now
        keep = []
        for t, r in self._pending:
            if t <= now and self.ready.get(r, 0) < self.replicas.get(r, 0):
                self.ready[r] = self.ready.get(r, 0) + 1
            elif t > now:
                keep.append((t, r))
        self._pending = keep

    def ready_pods(self, revision: RevisionKey) -> int | None:
        if self.fail_count:
            raise RuntimeError("pod lister unavailable")
        return self.ready.get(revision, 0)


class FakeScraper:
    """Returns the revision-wide stat the test sets (None: no pods to scrape)."""

    def __init__(self) -> None:
        self.stats: dict[RevisionKey, Stat | None] = {}
        self.fail = False

    async def scrape(self, revision: RevisionKey, stable_window: float) -> Stat | None:
        if self.fail:
            raise RuntimeError("no pod answered")
        return self.stats.get(revision)
