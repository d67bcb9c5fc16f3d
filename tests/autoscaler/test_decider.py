"""Knative's KPA decision, table-driven: rate limits, panic, activation scale, delay, EBC, invalid input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.decider import Decider, DeciderSpec, ScaleResult

# Knative defaults for containerConcurrency 0: target 70 of 100, TBC 211, panic at 200 %.
DEFAULT = DeciderSpec()
CALM = replace(DEFAULT, panic_threshold=10.0)  # panic out of the way where a case is not about it


@pytest.mark.parametrize(
    ("spec", "ready", "stable", "panic", "desired", "ebc"),
    [
        pytest.param(CALM, 2, 150, 150, 3, -161, id="stable-scale-up"),
        pytest.param(CALM, 2, 140, 140, 2, -151, id="exactly-at-target"),
        pytest.param(replace(CALM, max_scale_up_rate=2.0), 2, 1000, 1000, 4, -1011, id="rate-limit-up"),
        pytest.param(CALM, 10, 0, 0, 5, 789, id="rate-limit-down-halves"),
        pytest.param(replace(CALM, max_scale_down_rate=4.0), 10, 0, 0, 2, 789, id="rate-limit-down-quarter"),
        pytest.param(replace(CALM, reachable=False), 10, 0, 0, 0, 789, id="unreachable-no-down-limit"),
        pytest.param(CALM, 1, 0, 0, 0, -111, id="one-pod-to-zero"),
        pytest.param(
            replace(CALM, max_scale_up_rate=2.0), 0, 700, 700, 2, -911, id="zero-ready-counts-as-one"
        ),
        pytest.param(replace(CALM, activation_scale=3), 1, 10, 10, 3, -121, id="activation-scale-lifts"),
        pytest.param(replace(CALM, activation_scale=3), 1, 0, 0, 0, -111, id="activation-scale-no-demand"),
        pytest.param(replace(CALM, activation_scale=3), 4, 700, 700, 10, -511, id="activation-scale-below"),
        pytest.param(replace(CALM, target_burst_capacity=-1), 5, 0, 0, 2, -1, id="ebc-unlimited-tbc"),
        pytest.param(replace(CALM, target_burst_capacity=0), 5, 0, 0, 2, 0, id="ebc-zero-tbc"),
        pytest.param(CALM, 3, 89, 89, 2, 0, id="worked-3-pods-89-ebc-0"),
        pytest.param(CALM, 3, 90, 90, 2, -1, id="worked-3-pods-90-ebc-negative"),
        pytest.param(CALM, 2, 0, 0, 1, -11, id="worked-2-pods-always-negative"),
        pytest.param(CALM, 0, 0, 0, 0, -211, id="ebc-uses-raw-zero-ready"),
        pytest.param(CALM, 3, 0, 88.5, 1, 0, id="ebc-floor"),
        pytest.param(
            replace(CALM, scaling_metric="rps", target_value=140, total_value=200),
            1,
            300,
            300,
            3,
            -311,
            id="rps-target-140",
        ),
    ],
)
def test_decision_table(
    spec: DeciderSpec, ready: int, stable: float, panic: float, desired: int, ebc: int
) -> None:
    d = Decider(spec, 0, now=0.0)
    assert d.scale(2.0, stable, panic, ready) == ScaleResult(desired, ebc, True)


@pytest.mark.parametrize(
    ("stable", "panic", "ready"),
    [
        pytest.param(None, 10.0, 1, id="no-stable-data"),
        pytest.param(10.0, None, 1, id="no-panic-data"),
        pytest.param(None, None, 1, id="no-data"),
        pytest.param(10.0, 10.0, None, id="ready-count-failed"),
    ],
)
def test_invalid_inputs(stable: float | None, panic: float | None, ready: int | None) -> None:
    d = Decider(DEFAULT, 0, 0.0)
    r = d.scale(2.0, stable, panic, ready)
    assert not r.scale_valid


def test_worked_example_section_3_5() -> None:
    """cc 0: target 70, total 100, TBC 211; 3 pods with <= 89 in flight may drop the activator."""
    d = Decider(DEFAULT, 3, 0.0)
    assert d.scale(2.0, 89, 89, 3).excess_burst_capacity == 0
    for ready in (1, 2):
        for load in (0.0, 10.0, 89.0):
            assert Decider(DEFAULT, 0, 0.0).scale(2.0, load, load, ready).excess_burst_capacity < 0


# (now, ready, stable, panic, expected desired, expected in_panic)
PANIC_EPISODE = [
    (0.0, 1, 10, 200, 3, True),  # ceil(200 / 70) = 3 pods on 1 -> 300 % >= 200 %: panic
    (2.0, 3, 20, 20, 3, True),  # load gone from the panic window, but no scale-down while panicking
    (30.0, 3, 20, 500, 8, True),  # over again: extends the episode to t = 30
    (90.0, 8, 20, 20, 8, True),  # 30 + 60 is not < 90: still panicking
    (92.0, 8, 20, 20, 4, False),  # a whole stable window since t = 30: back to stable, halving 8 -> 4
]


def test_panic_entry_extension_and_exit() -> None:
    d = Decider(DEFAULT, 0, 0.0)
    assert not d.in_panic
    for now, ready, stable, panic, desired, in_panic in PANIC_EPISODE:
        r = d.scale(now, stable, panic, ready)
        assert (r.desired_pod_count, d.in_panic) == (desired, in_panic), f"t={now}"


def test_panic_takes_larger_of_stable_and_panic() -> None:
    d = Decider(DEFAULT, 0, 0.0)
    # stable wants 20, panic wants 3 (3 / 1 >= 2 enters panic): provision for the stable view.
    assert d.scale(0.0, 1400, 200, 1).desired_pod_count == 20


@pytest.mark.parametrize(
    ("ready", "in_panic"),
    [
        pytest.param(0, False, id="zero"),
        pytest.param(1, False, id="one"),
        pytest.param(2, True, id="two"),
        pytest.param(None, False, id="count-failed"),
    ],
)
def test_new_decider_starts_in_panic_with_more_than_one_pod(ready: int | None, in_panic: bool) -> None:
    assert Decider(DEFAULT, ready, 100.0).in_panic is in_panic


def test_restart_keeps_pods_until_a_stable_window_passes() -> None:
    d = Decider(DEFAULT, 5, 0.0)
    assert d.scale(2.0, 0, 0, 5).desired_pod_count == 5  # max panic pods = 5 from creation
    assert d.scale(60.0, 0, 0, 5).desired_pod_count == 5
    r = d.scale(61.0, 0, 0, 5)
    assert (r.desired_pod_count, d.in_panic) == (2, False)  # floor(5 / 2)


DELAYED = replace(CALM, scale_down_delay=10.0)  # 5 slots of 2 s


@pytest.mark.parametrize(
    ("spec", "steps"),
    [
        pytest.param(
            DELAYED,
            [(100, 5, 560, 8), (102, 8, 70, 8), (108, 8, 70, 8), (110, 8, 70, 4)],
            id="delay-holds-for-window",
        ),
        pytest.param(DELAYED, [(100, 5, 560, 8), (102, 8, 1120, 16)], id="delay-never-holds-scale-up"),
        pytest.param(
            replace(DELAYED, reachable=False),
            [(100, 5, 560, 8), (102, 8, 70, 1)],
            id="unreachable-ignores-delay",
        ),
        pytest.param(CALM, [(100, 5, 560, 8), (102, 8, 70, 4)], id="no-delay"),
        pytest.param(
            replace(CALM, scale_down_delay=1.0),
            [(100, 5, 560, 8), (101, 8, 70, 8), (102, 8, 70, 4)],
            id="one-slot-same-slot-keeps-max",
        ),
    ],
)
def test_scale_down_delay(spec: DeciderSpec, steps: list[tuple[float, int, float, int]]) -> None:
    d = Decider(spec, 0, 0.0)
    for now, ready, stable, desired in steps:
        assert d.scale(now, stable, stable, ready).desired_pod_count == desired, f"t={now}"


def test_update_takes_new_spec() -> None:
    d = Decider(CALM, 0, 0.0)
    assert d.scale(2.0, 140, 140, 2).desired_pod_count == 2
    d.update(replace(CALM, target_value=10.0))
    assert d.scale(4.0, 140, 140, 14).desired_pod_count == 14
    d.update(replace(CALM, target_value=10.0, scale_down_delay=4.0))
    assert d.scale(6.0, 140, 140, 14).desired_pod_count == 14
    assert d.scale(8.0, 0, 0, 14).desired_pod_count == 14  # held by the new 4 s delay
    assert d.scale(10.0, 0, 0, 14).desired_pod_count == 7


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="target_value"):
        DeciderSpec(target_value=0)
    with pytest.raises(ValueError, match="scaling_metric"):
        DeciderSpec(scaling_metric="cpu")
