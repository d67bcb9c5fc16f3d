"""Knative's bucketing: linear and weighted window averages, partial windows, gaps, late writes, resets."""

from __future__ import annotations

import math

import pytest

from autoscaler.windows import MaxTimeWindow, TimedBuckets, WeightedBuckets, smoothing_coefficient


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        pytest.param(60, 0.2, id="60-buckets-floor-0.2"),
        pytest.param(6, 0.7845565309968155, id="6-buckets"),
        pytest.param(1, 0.9999, id="1-bucket"),
        pytest.param(30, 0.26436, id="30-buckets"),
    ],
)
def test_smoothing_coefficient(buckets: int, expected: float) -> None:
    assert smoothing_coefficient(buckets) == pytest.approx(expected, abs=1e-4)


def _linear(window: float, writes: list[tuple[float, float]]) -> TimedBuckets:
    b = TimedBuckets(window, 1.0)
    for t, v in writes:
        b.record(t, v)
    return b


@pytest.mark.parametrize(
    ("window", "writes", "now", "expected"),
    [
        pytest.param(60, [], 10, 0.0, id="never-written"),
        pytest.param(60, [(0, 10), (1, 10), (2, 10)], 2, 10.0, id="young-series-averages-its-own-seconds"),
        pytest.param(60, [(0.2, 4), (0.9, 6)], 0.5, 10.0, id="same-second-adds-up"),
        pytest.param(60, [(t, 5) for t in range(10)], 14, 5.0, id="silence-at-end-not-counted"),
        pytest.param(60, [*((t, 10) for t in range(5)), (10, 10)], 10, 5.454545, id="gap-in-middle-is-zeros"),
        pytest.param(60, [(0, 2), (1, 0), (2, 0)], 2, 0.666666, id="six-decimals-cut-not-rounded"),
        pytest.param(6, [(0, 100), (6, 1)], 6, 1.0, id="silent-whole-window-resets"),
        pytest.param(6, [(0, 100), (5, 1)], 5, 16.833333, id="silent-less-than-window-keeps"),
        pytest.param(10, [(5, 1), (6, 1), (3, 4)], 6, 1.5, id="late-write-extends-first-write"),
        pytest.param(10, [(20, 3), (10, 100)], 20, 3.0, id="write-a-window-late-dropped"),
        pytest.param(10, [(20, 3), (11, 7)], 20, 1.0, id="write-just-inside-window-counted"),
        pytest.param(6, [(t, 6) for t in range(20)], 19, 6.0, id="full-ring-wraps"),
        pytest.param(6, [(0, 6)], 6, 0.0, id="a-window-after-last-write-is-zero"),
        pytest.param(6, [(0, 6)], 5.9, 6.0, id="inside-window-after-last-write"),
        pytest.param(60, [(t, 1) for t in range(60)] + [(60, 61)], 60, 2.0, id="oldest-bucket-drops-out"),
    ],
)
def test_linear_window_average(
    window: float, writes: list[tuple[float, float]], now: float, expected: float
) -> None:
    assert _linear(window, writes).window_average(now) == pytest.approx(expected, abs=1e-9)


def test_is_empty_after_more_than_a_window() -> None:
    b = _linear(6, [(10, 1)])
    assert not b.is_empty(16)
    assert b.is_empty(17)
    assert TimedBuckets(6).is_empty(0)


def test_weighted_not_normalised_for_partial_window() -> None:
    w = WeightedBuckets(6, 1.0)
    m = w.smoothing
    w.record(0, 10)
    assert w.window_average(0) == pytest.approx(10 * m)
    # one silent second counts as a zero in front of the data
    assert w.window_average(1) == pytest.approx(10 * m * (1 - m))


def test_weighted_newest_weighs_most() -> None:
    w = WeightedBuckets(60, 1.0)  # m = 0.2
    for t, v in enumerate([10, 10, 5, 5]):
        w.record(t, v)
    expected = 5 * 0.2 + 5 * 0.2 * 0.8 + 10 * 0.2 * 0.8**2 + 10 * 0.2 * 0.8**3
    assert w.window_average(3) == pytest.approx(expected)
    rev = WeightedBuckets(60, 1.0)
    for t, v in enumerate([5, 5, 10, 10]):
        rev.record(t, v)
    assert rev.window_average(3) > w.window_average(3)


def test_weighted_full_window_of_constant_approaches_value() -> None:
    w = WeightedBuckets(60, 1.0)
    for t in range(60):
        w.record(t, 10)
    assert w.window_average(59) == pytest.approx(10 * (1 - 0.8**60))


def test_resize_keeps_newest_buckets() -> None:
    b = _linear(10, [(t, t) for t in range(10)])
    b.resize_window(4, 9)
    assert b.num_buckets == 4
    assert b.window_average(9) == pytest.approx((6 + 7 + 8 + 9) / 4)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([(100, 8)], 8, id="single"),
        pytest.param([(100, 8), (102, 3)], 8, id="holds-larger"),
        pytest.param([(100, 8), (102, 3), (108, 3)], 8, id="still-inside-5-slots"),
        pytest.param([(100, 8), (102, 3), (110, 3)], 3, id="forgotten-after-5-slots"),
        pytest.param([(100, 3), (101, 8)], 8, id="same-slot-keeps-max"),
        pytest.param([(100, 8), (101, 3)], 8, id="same-slot-keeps-max-reverse"),
        pytest.param([(100, 2), (102, 5), (104, 1)], 5, id="newer-larger-replaces"),
    ],
)
def test_max_time_window(records: list[tuple[float, int]], expected: int) -> None:
    w = MaxTimeWindow(10, 2)  # ceil(10 / 2) = 5 slots of 2 s
    assert w.capacity == 5
    for t, v in records:
        w.record(t, v)
    assert w.current() == expected


def test_bad_window_arguments() -> None:
    with pytest.raises(ValueError, match="granularity"):
        TimedBuckets(6, 0)
    with pytest.raises(ValueError, match="num_buckets"):
        smoothing_coefficient(0)
    assert math.isfinite(smoothing_coefficient(3600))


def test_float_noise_of_the_running_total_does_not_read_negative() -> None:
    b = TimedBuckets(6.0, 1.0)
    for t, v in enumerate([0.403, 2.542, 2.291, 0.765, 1.486, 1.348]):
        b.record(float(t), v)
    # once every non-zero bucket has left the window, only the running total's float error remains
    for t in range(6, 12):
        b.record(float(t), 0.0)
    assert b._total < 0  # the float error this test is about (-1.3e-15 with these values)
    assert b.window_average(11.0) == 0.0
