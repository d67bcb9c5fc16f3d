from __future__ import annotations

import pytest

from routing.rollout import (
    adjust_percentage,
    go_round,
    min_step_seconds,
    start_rollout,
    step_named,
    step_properties,
    step_revisions,
)


@pytest.mark.parametrize(
    ("x", "want"),
    [
        pytest.param(0.5, 1, id="half-up"),
        pytest.param(1.5, 2, id="one-and-half"),
        pytest.param(2.5, 3, id="two-and-half-not-even"),
        pytest.param(-2.5, -3, id="negative-half-away"),
        pytest.param(24.75, 25, id="24.75"),
        pytest.param(2.49, 2, id="below-half"),
    ],
)
def test_go_round(x: float, want: int) -> None:
    assert go_round(x) == want


@pytest.mark.parametrize(
    ("percent", "min_step", "duration", "want"),
    [
        pytest.param(100, 1, 5, (25, 1.0), id="100-in-4-steps"),
        pytest.param(100, 2, 240, (1, 238 / 99), id="many-steps-capped-at-99"),
        pytest.param(100, 10, 240, (4, 230 / 23), id="240s-10s-steps"),
        pytest.param(100, 300, 240, (99, 1.0), id="first-step-longer-than-duration"),
        pytest.param(50, 1, 3, (25, 1.0), id="50pct-49-over-2-half-away"),
        pytest.param(2, 1, 100, (1, 99.0), id="2pct-one-step"),
        pytest.param(100, 3, 10, (42, 3.0), id="fractional-steps-7-over-3"),
        pytest.param(100, 1, 1, (99, 1.0), id="duration-capped-at-1"),
        pytest.param(60, 1, 9, (7, 1.0), id="59-over-8-rounds-7.375"),
        pytest.param(30, 2, 10, (7, 2.0), id="29-over-4-rounds-7.25"),
        pytest.param(12, 2, 10, (3, 2.0), id="11-over-4-2.75-rounds-up"),
        pytest.param(10, 1, 3, (5, 1.0), id="half-rounds-away-9-over-2"),
    ],
)
def test_step_properties(percent: int, min_step: float, duration: float, want: tuple[int, float]) -> None:
    size, dur = step_properties(percent, min_step, duration)
    assert size == want[0]
    assert dur == pytest.approx(want[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((1, 1, 10), "percent: a rollout needs a target above 1 %", id="percent-1"),
        pytest.param((100, 0, 10), "min_step_s: must be > 0", id="min-step-0"),
    ],
)
def test_step_properties_errors(args: tuple[int, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        step_properties(*args)


def test_full_rollout_1_26_51_76_100() -> None:
    size, dur = step_properties(100, 1, 5)
    percents: list[int] = [99, 1]
    nxt: float | None = 10.0 + dur
    seen = [percents[-1]]
    now = 10.0
    while nxt is not None:
        now = nxt
        percents, nxt = step_revisions(percents, size, now, nxt, dur, 100)
        seen.append(percents[-1])
        assert sum(percents) == 100
    assert seen == [1, 26, 51, 76, 100]
    assert percents == [100]
    assert now == pytest.approx(14.0)


@pytest.mark.parametrize(
    ("percents", "step", "now", "next_time", "config", "want"),
    [
        pytest.param([99, 1], 25, 5.0, 10.0, 100, ([99, 1], 10.0), id="before-next-step-nothing"),
        pytest.param([99, 1], 25, 10.0, 10.0, 100, ([74, 26], 12.0), id="at-next-step"),
        pytest.param([60, 20, 20], 25, 10.0, 10.0, 100, ([55, 45], 12.0), id="drains-newest-old-first"),
        pytest.param([50, 25, 25], 25, 10.0, 10.0, 100, ([50, 50], 12.0), id="exact-drain-drops-revision"),
        pytest.param([24, 76], 25, 10.0, 10.0, 100, ([100], None), id="last-step-capped-done"),
        pytest.param([5, 10], 10, 10.0, 10.0, 15, ([15], None), id="step-past-total-capped-at-config"),
        pytest.param([100], 25, 10.0, 10.0, 100, ([100], None), id="single-revision-done"),
        pytest.param([40, 10, 1], 20, 10.0, 10.0, 51, ([30, 21], 12.0), id="three-to-two"),
    ],
)
def test_step_revisions(
    percents: list[int],
    step: int,
    now: float,
    next_time: float,
    config: int,
    want: tuple[list[int], float | None],
) -> None:
    assert step_revisions(percents, step, now, next_time, 2.0, config) == want


def test_step_named_keeps_names() -> None:
    out, nxt = step_named([("r1", 60), ("r2", 20), ("r3", 20)], 25, 1.0, 1.0, 2.0, 100)
    assert out == [("r1", 55), ("r3", 45)]
    assert nxt == 3.0


@pytest.mark.parametrize(
    ("percents", "want"),
    [
        pytest.param([100], [99, 1], id="first-rollout"),
        pytest.param([74, 26], [74, 25, 1], id="mid-rollout-takes-from-newest"),
        pytest.param([99, 1], [99, 1], id="newest-at-1-drops-out"),
    ],
)
def test_start_rollout(percents: list[int], want: list[int]) -> None:
    assert start_rollout(percents) == want


@pytest.mark.parametrize(
    ("percents", "goal", "want"),
    [
        pytest.param([40, 10], 60, [40, 20], id="increase-to-newest"),
        pytest.param([40, 10], 15, [5, 10], id="decrease-from-oldest"),
        pytest.param([40, 10, 5], 10, [5, 5], id="decrease-drops-oldest"),
        pytest.param([40, 10], 0, [], id="zero-ends"),
        pytest.param([40, 10], 50, [40, 10], id="same"),
    ],
)
def test_adjust_percentage(percents: list[int], goal: int, want: list[int]) -> None:
    assert adjust_percentage(percents, goal) == want


def test_min_step_seconds() -> None:
    assert min_step_seconds(10.2, 10.0) == 1.0
    assert min_step_seconds(13.1, 10.0) == 4.0
