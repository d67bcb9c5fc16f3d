from __future__ import annotations

import pytest

from serving.stats import RequestStats


def test_two_half_second_requests_average_one() -> None:
    s = RequestStats(0.0)
    s.request_in(0.0)
    s.request_in(0.0)
    s.request_out(0.5)
    s.request_out(0.5)
    r = s.report(1.0)
    assert r.average_concurrency == pytest.approx(1.0)
    assert r.request_count == 2


def test_proxied_requests_are_counted_apart_and_counters_reset() -> None:
    s = RequestStats(10.0)
    s.request_in(10.0, proxied=True)
    s.request_in(10.5)
    r = s.report(11.0)
    assert r.average_concurrency == pytest.approx(1.5)
    assert r.average_proxied_concurrency == pytest.approx(1.0)
    assert (r.request_count, r.proxied_request_count) == (2, 1)
    r2 = s.report(12.0)  # both still in flight for the whole next period
    assert r2.average_concurrency == pytest.approx(2.0)
    assert r2.request_count == 0


def test_events_out_of_order_are_ignored_for_time() -> None:
    s = RequestStats(5.0)
    s.request_in(4.0)  # earlier than the last change: no time is credited backwards
    r = s.report(6.0)
    assert r.average_concurrency == pytest.approx(1.0)


def test_empty_period_reports_zero() -> None:
    assert RequestStats(1.0).report(1.0).average_concurrency == 0.0
