"""A revision scaled up, through panic, down and to zero, then poked awake: fake clock, real decisions."""

from __future__ import annotations

import itertools

import pytest

from autoscaler.collector import Collector
from autoscaler.config import defaults, from_mapping
from autoscaler.kpa import PAState
from autoscaler.multiscaler import Decision, MultiScaler
from serving.clock import FakeClock
from serving.stat import Stat, WireStat
from serving.types import RevisionKey

from .fakes import FakeCluster, FakeScraper

REV = RevisionKey("default", "hello-00001")
T0 = 1_700_000_000.0


class Rig:
    def __init__(self, config_data: dict[str, str] | None = None, start_delay: float = 0.0) -> None:
        self.clock = FakeClock(T0)
        self.cluster = FakeCluster(start_delay)
        self.cluster.now = T0
        self.scraper = FakeScraper()
        self.collector = Collector(self.scraper, self.clock)
        cfg = from_mapping(config_data) if config_data else defaults()
        self.ms = MultiScaler(self.cluster, self.cluster, self.collector, cfg, self.clock)
        self.decisions: list[Decision] = []
        self.ms.add_listener(self.decisions.append)

    def load(self, concurrency: float) -> None:
        """What the queue-proxies report: the revision-wide total while there are pods."""
        pods = self.cluster.ready.get(REV, 0)
        self.scraper.stats[REV] = Stat("scraper", concurrency, 0, concurrency, 0) if pods else None

    async def run(self, seconds: int, concurrency: float) -> None:
        """Advance one second at a time: scrape every second, decide every 2 s (even seconds)."""
        for _ in range(seconds):
            self.clock.advance(1.0)
            self.cluster.advance(self.clock.now())
            self.load(concurrency)
            await self.collector.scrape_all()
            if int(self.clock.now()) % 2 == 0:
                await self.ms.tick()

    @property
    def replicas(self) -> int:
        return self.cluster.replicas.get(REV, -1)


async def test_scale_up_panic_down_to_zero_and_poke() -> None:
    rig = Rig()
    rig.ms.upsert(REV, {}, 0, created=True)
    await rig.ms.tick()
    assert rig.cluster.calls == [(REV, 1)]  # a new revision gets its initial scale
    await rig.run(10, 0.0)
    assert rig.replicas == 1 and rig.decisions[-1].state is PAState.ACTIVE

    # 350 in flight = 5 pods at target 70, seen by the panic window first: panic, 5 pods fast.
    await rig.run(6, 350.0)
    assert rig.replicas == 5
    assert any(d.in_panic for d in rig.decisions)
    assert rig.decisions[-1].activator_in_path  # 5 x 100 - 211 - 350 < 0
    await rig.run(60, 350.0)
    assert rig.replicas == 5

    # Five pods put the panic window at 5 / 5 = 100 %: panic ended a stable window after it last was over.
    assert not rig.decisions[-1].in_panic
    # Load gone: the stable window still remembers it; down in halving steps (at most /2 per tick).
    await rig.run(40, 0.0)
    assert 0 < rig.replicas < 5
    counts = [c for _, c in rig.cluster.calls]
    assert all(b >= a // 2 for a, b in itertools.pairwise(counts))
    await rig.run(100, 0.0)
    assert rig.replicas == 0
    counts = [c for _, c in rig.cluster.calls]
    assert counts[-1] == 0 and counts.index(0) > counts.index(5)
    assert rig.decisions[-1].activator_in_path
    assert rig.decisions[-1].state is PAState.INACTIVE

    # Cold start: a request at the activator; the stat pokes a decision at once, no tick needed.
    calls = len(rig.cluster.calls)
    rig.ms.send([WireStat(REV.namespace, REV.name, Stat("activator-0", 1.0, 0, 1.0, 0, 0, 0))])
    await rig.ms.settle()
    assert rig.cluster.calls[calls:] == [(REV, 1)]
    assert rig.decisions[-1].poke


async def test_new_revision_created_at_zero_is_poked_by_its_first_request() -> None:
    """initial-scale 0: no pod, no scrape, no valid decision yet (-1); the first request must not wait
    for the next 2 s tick (Knative would: it pokes only a revision whose last decision was 0)."""
    rig = Rig({"allow-zero-initial-scale": "true", "initial-scale": "0"})
    rig.ms.upsert(REV, {}, 0, created=True)
    await rig.ms.tick()
    await rig.run(3, 0.0)
    assert rig.replicas in (-1, 0) and rig.decisions[-1].decided == -1  # nothing to decide on yet
    rig.ms.send([WireStat(REV.namespace, REV.name, Stat("activator-0", 1.0, 0, 1.0, 0, 0, 0))])
    await rig.ms.settle()  # no tick in between
    assert rig.replicas == 1
    assert rig.decisions[-1].poke


async def test_stat_for_unknown_revision_is_ignored() -> None:
    rig = Rig()
    rig.ms.send([WireStat("default", "nobody", Stat("activator-0", 5.0))])
    await rig.ms.settle()
    assert rig.cluster.calls == []


async def test_no_data_and_failed_counts_keep_the_last_decision() -> None:
    rig = Rig()
    rig.ms.upsert(REV, {}, 0, created=True)
    await rig.run(20, 210.0)  # 3 pods
    assert rig.replicas == 3
    rig.scraper.fail = True
    await rig.run(120, 0.0)
    # The tick exactly one window after the last write sees Knative's average of 0 while the window is
    # not empty yet (IsEmpty is "> window", WindowAverage "< window"): one valid decision, 3 -> 1.
    # From then on there is no data: decisions are invalid and nothing changes.
    assert rig.replicas == 1
    assert not rig.decisions[-1].valid and rig.decisions[-1].want == 1
    rig.scraper.fail = False
    rig.cluster.fail_count = True
    await rig.run(10, 0.0)
    assert rig.replicas == 1 and rig.decisions[-1].ready_pods is None


async def test_adopted_revision_without_data_is_left_alone() -> None:
    rig = Rig()
    rig.cluster.replicas[REV] = rig.cluster.ready[REV] = 2
    rig.scraper.fail = True
    rig.ms.upsert(REV, {}, 0)
    await rig.run(100, 0.0)
    assert rig.cluster.calls == [] and rig.replicas == 2
    assert all(not d.valid and d.want == -1 for d in rig.decisions)


async def test_scale_to_zero_disabled_keeps_one() -> None:
    rig = Rig({"enable-scale-to-zero": "false"})
    rig.ms.upsert(REV, {}, 0, created=True)
    await rig.run(200, 0.0)
    assert rig.replicas == 1


async def test_min_scale_and_activation_scale() -> None:
    rig = Rig()
    rig.ms.upsert(REV, {"autoscaling.knative.dev/min-scale": "2"}, 0, created=True)
    await rig.run(200, 0.0)
    assert rig.replicas == 2
    rig.ms.upsert(REV, {"autoscaling.knative.dev/activation-scale": "3"}, 0)
    await rig.run(200, 0.0)
    assert rig.replicas == 0
    rig.ms.send([WireStat(REV.namespace, REV.name, Stat("activator-0", 1.0, 0, 1.0))])
    await rig.ms.settle()
    assert rig.replicas == 3


async def test_adopted_revision_starts_in_panic_and_keeps_its_pods() -> None:
    """An autoscaler restart: 4 pods running, empty windows; nothing is scaled down for a stable window."""
    rig = Rig()
    rig.cluster.replicas[REV] = rig.cluster.ready[REV] = 4
    rig.ms.upsert(REV, {}, 0)
    await rig.run(50, 10.0)
    assert rig.replicas == 4 and rig.cluster.calls == [(REV, 4)]
    assert rig.decisions[-1].in_panic


async def test_config_update_applies_to_running_revisions() -> None:
    rig = Rig()
    rig.ms.upsert(REV, {}, 10, created=True)  # containerConcurrency 10: target 7
    await rig.run(10, 21.0)
    assert rig.replicas == 3
    rig.ms.update_config(from_mapping({"container-concurrency-target-percentage": "100"}))
    await rig.run(70, 21.0)  # target 10 now: ceil(21 / 10) = 3 still; 30 would need 3, 31 needs 4
    await rig.run(70, 31.0)
    assert rig.replicas == 4
    assert rig.decisions[-1].target == pytest.approx(10.0)


async def test_adopted_revision_below_initial_scale_is_not_scaled_up() -> None:
    """initial-scale is a floor only for a new revision, not for one adopted after a restart."""
    rig = Rig()
    rig.cluster.replicas[REV] = rig.cluster.ready[REV] = 1
    rig.ms.upsert(REV, {"autoscaling.knative.dev/initial-scale": "3"}, 0)
    await rig.run(20, 10.0)
    assert rig.replicas == 1


async def test_new_revision_holds_initial_scale_until_reached() -> None:
    rig = Rig(start_delay=5.0)
    rig.ms.upsert(REV, {"autoscaling.knative.dev/initial-scale": "3"}, 0, created=True)
    await rig.run(4, 0.0)
    assert rig.cluster.calls[0] == (REV, 3) and rig.cluster.ready.get(REV, 0) == 0
    # Not yet ready: the decider already says 0 (no load), but initial-scale is the floor until reached.
    await rig.run(4, 0.0)
    assert rig.cluster.calls == [(REV, 3)] and rig.cluster.ready[REV] == 3
    # Reached once: from now on only the load counts, down at most by half per tick, then to zero.
    await rig.run(90, 0.0)
    assert [c for _, c in rig.cluster.calls] == [3, 1, 0]


class Probe:
    def __init__(self) -> None:
        self.ok = False
        self.calls = 0

    async def activator_in_path(self, revision: RevisionKey) -> bool:
        self.calls += 1
        return self.ok


async def test_last_pod_stays_until_the_activator_probe_succeeds() -> None:
    rig = Rig()
    probe = Probe()
    rig.ms = MultiScaler(rig.cluster, rig.cluster, rig.collector, defaults(), rig.clock, probe=probe)
    rig.ms.upsert(REV, {}, 0, created=True)
    await rig.run(200, 0.0)
    assert rig.replicas == 1 and probe.calls > 0  # inactive, but the activator is not serving it yet
    probe.ok = True
    await rig.run(4, 0.0)
    assert rig.replicas == 0


async def test_bad_activator_stats_do_not_poison_the_windows() -> None:
    rig = Rig()
    rig.ms.upsert(REV, {}, 0, created=True)
    await rig.run(10, 140.0)
    nan = float("nan")
    rig.ms.send(
        [
            WireStat(REV.namespace, REV.name, Stat("activator-0", nan, 0, 1.0)),
            WireStat(REV.namespace, REV.name, Stat("activator-0", 0.0, 0, 0.0, 0, 0, int(T0) + 10_000)),
        ]
    )
    await rig.run(4, 140.0)
    d = rig.decisions[-1]
    assert d.time == rig.clock.now()  # decisions go on (a NaN in the sums would make them fail)
    assert d.valid and d.observed_stable == pytest.approx(140.0)
