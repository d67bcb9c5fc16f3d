"""Per-revision windows: proxied traffic subtracted, no data vs zero load, spec changes, scrape rounds."""

from __future__ import annotations

import pytest

from autoscaler.collector import Collector, RevisionMetrics
from autoscaler.config import defaults, resolve
from serving.clock import FakeClock
from serving.stat import Stat
from serving.types import RevisionKey

from .fakes import FakeScraper

REV = RevisionKey("default", "hello-00001")
P = "autoscaling.knative.dev/"


@pytest.mark.parametrize(
    ("metric", "stat", "expected"),
    [
        pytest.param("concurrency", Stat("p", 10.0, 4.0, 50.0, 20.0), 6.0, id="concurrency-minus-proxied"),
        pytest.param("rps", Stat("p", 10.0, 4.0, 50.0, 20.0), 30.0, id="rps-minus-proxied"),
    ],
)
def test_proxied_traffic_is_subtracted(metric: str, stat: Stat, expected: float) -> None:
    m = RevisionMetrics(60, 6, metric=metric)
    m.record(100.0, stat)
    assert m.observed(100.0) == (expected, expected)


def test_activator_and_pod_stats_in_one_second_add_up() -> None:
    m = RevisionMetrics(60, 6)
    m.record(100.2, Stat("qp", 3.0, 1.0))  # 1 of the 3 came through the activator...
    m.record(100.7, Stat("activator", 1.0))  # ...which reports it itself
    assert m.observed(100.9) == (3.0, 3.0)


def test_no_data_only_when_there_is_something_to_scrape() -> None:
    scraped = RevisionMetrics.for_scaling(resolve(defaults(), {}, 0))
    assert scraped.observed(100.0) is None
    unlimited = RevisionMetrics.for_scaling(resolve(defaults(), {P + "target-burst-capacity": "-1"}, 0))
    assert not unlimited.scrape
    assert unlimited.observed(100.0) == (0.0, 0.0)  # all traffic via activators: silence is zero load


def test_windows_follow_spec_changes() -> None:
    m = RevisionMetrics.for_scaling(resolve(defaults(), {}, 0))
    for t in range(60):
        m.record(float(t), Stat("p", float(t)))
    m.update(resolve(defaults(), {P + "window": "10s"}, 0), 59.0)
    assert (m.stable_window, m.panic_window) == (10, 1)
    assert m.observed(59.0) == (pytest.approx(sum(range(50, 60)) / 10), 59.0)
    m.update(resolve(defaults(), {P + "metric-aggregation-algorithm": "weighted-exponential"}, 0), 59.0)
    assert m.aggregation == "weighted-exponential" and m.observed(59.0) is None  # fresh windows


async def test_scrape_rounds_record_at_clock_time_and_keep_errors() -> None:
    clock = FakeClock(1000.0)
    scraper = FakeScraper()
    c = Collector(scraper, clock)
    c.upsert(REV, resolve(defaults(), {}, 0))
    scraper.stats[REV] = Stat("scraper", 7.0)
    await c.scrape_all()
    assert c.observed(REV, 1000.0) == (7.0, 7.0)
    scraper.fail = True
    clock.advance(1)
    await c.scrape_all()
    assert c.scrape_errors[REV] == "no pod answered"
    scraper.fail = False
    scraper.stats[REV] = None  # no pods: nothing recorded, not an error
    await c.scrape_all()
    assert REV not in c.scrape_errors
    assert not c.record(RevisionKey("x", "y"), 1000.0, Stat("a", 1.0))
    c.remove(REV)
    assert REV not in c and c.observed(REV, 1000.0) is None
