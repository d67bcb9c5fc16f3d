"""Applying decisions as Knative's PA reconciler: bounds, scale to zero, activator in path, activators."""

from __future__ import annotations

import pytest

from autoscaler.config import defaults, from_mapping, resolve
from autoscaler.kpa import PAState, RevisionScaler, apply_bounds, num_activators

P = "autoscaling.knative.dev/"


def _scaler(
    annotations: dict[str, str] | None = None,
    cfg: dict[str, str] | None = None,
    now: float = 0.0,
    cc: int = 0,
) -> RevisionScaler:
    c = from_mapping(cfg or {})
    return RevisionScaler(resolve(c, annotations or {}, cc), now)


@pytest.mark.parametrize(
    ("lo", "hi", "x", "out"),
    [
        pytest.param(0, 0, 5, 5, id="unbounded"),
        pytest.param(2, 0, 1, 2, id="min"),
        pytest.param(0, 3, 5, 3, id="max"),
        pytest.param(0, 3, 0, 0, id="zero-inside"),
        pytest.param(1, 3, -1, 1, id="unknown-lifted-to-min"),
    ],
)
def test_apply_bounds(lo: int, hi: int, x: int, out: int) -> None:
    assert apply_bounds(lo, hi, x) == out


@pytest.mark.parametrize(
    ("ready", "total", "tbc", "capacity", "expected"),
    [
        pytest.param(20, 100, 211, 100, 23, id="20-pods-default"),
        pytest.param(1, 100, 211, 100, 4, id="1-pod"),
        pytest.param(0, 100, 211, 100, 3, id="0-pods-still-tbc"),
        pytest.param(20, 100, 0, 100, 2, id="tbc-0-two"),
        pytest.param(0, 100, -1, 100, 2, id="tbc-unlimited-min-two"),
        pytest.param(30, 100, -1, 100, 30, id="tbc-unlimited-covers-pods"),
    ],
)
def test_num_activators(ready: int, total: float, tbc: float, capacity: float, expected: int) -> None:
    assert num_activators(ready, total, tbc, capacity) == expected


def test_new_revision_idles_then_scales_to_zero_after_window_and_grace() -> None:
    s = _scaler()
    # No metrics yet, pod not ready: activating, keep the initial replica (no scaler call).
    a = s.reconcile(0.0, -1, -211, 0)
    assert (a.want, a.apply, a.state, a.activator_in_path) == (-1, False, PAState.ACTIVATING, True)
    # Pod ready, decider says 0 (no load): still activating in this pass (unknown, no call), active after.
    a = s.reconcile(4.0, 0, -111, 1)
    assert (a.want, a.apply, a.state) == (-1, False, PAState.ACTIVE)
    # Active: hold 1 for a stable window.
    a = s.reconcile(6.0, 0, -111, 1)
    assert (a.want, a.apply, a.state) == (1, True, PAState.ACTIVE)
    a = s.reconcile(62.0, 0, -111, 1)
    assert (a.want, a.apply, a.state) == (1, True, PAState.ACTIVE)
    # Active for 60 s: inactive, activator into the path, no scaling yet.
    a = s.reconcile(64.0, 0, -111, 1)
    assert (a.want, a.apply, a.state, a.activator_in_path) == (0, False, PAState.INACTIVE, True)
    # EBC was negative all along, so the activator has been in the path far longer than the grace
    # period: Knative's fast path scales to zero on the next pass.
    a = s.reconcile(66.0, 0, -111, 1)
    assert (a.want, a.apply) == (0, True)


def test_grace_period_counts_from_activator_entering_the_path() -> None:
    s = _scaler({P + "target-burst-capacity": "0"})  # EBC 0: activator out of the path while active
    s.reconcile(0.0, -1, 0, 0)
    s.reconcile(2.0, 1, 0, 1)
    assert not s.reconcile(4.0, 1, 0, 1).activator_in_path
    a = s.reconcile(62.0, 0, 0, 1)  # active since t = 2 for 60 s: inactive, activator in at t = 62
    assert (a.want, a.apply, a.state, a.activator_in_path) == (0, False, PAState.INACTIVE, True)
    assert not s.reconcile(90.0, 0, 0, 1).apply
    a = s.reconcile(92.0, 0, 0, 1)  # 30 s grace behind the activator
    assert (a.want, a.apply) == (0, True)


def test_cold_start_and_serve_mode() -> None:
    s = _scaler()
    s.reconcile(0.0, 0, -111, 1)  # active
    s.reconcile(60.0, 0, -111, 1)  # inactive
    s.reconcile(90.0, 0, -111, 1)  # zero
    a = s.reconcile(100.0, 1, -212, 0)  # a request at the activator: want 1, activating
    assert (a.want, a.apply, a.state, a.activator_in_path) == (1, True, PAState.ACTIVATING, True)
    a = s.reconcile(102.0, 1, -111, 1)
    assert (a.state, a.activator_in_path) == (PAState.ACTIVE, True)  # EBC < 0: activator stays
    a = s.reconcile(104.0, 3, 0, 3)  # 3 pods, EBC 0: serve directly
    assert (a.want, a.activator_in_path) == (3, False)


def test_scale_to_zero_disabled_keeps_one() -> None:
    s = _scaler(cfg={"enable-scale-to-zero": "false"})
    for t in range(0, 200, 2):
        a = s.reconcile(float(t), 0, -111, 1)
        assert (a.want, a.apply) == (1, True)


def test_pod_retention_holds_the_last_pod() -> None:
    s = _scaler({P + "scale-to-zero-pod-retention-period": "50s"})
    s.reconcile(0.0, 0, -111, 1)
    s.reconcile(60.0, 0, -111, 1)  # inactive at 60
    assert not s.reconcile(100.0, 0, -111, 1).apply  # proxy for 40 s > grace, but retention is 50 s
    assert s.reconcile(110.0, 0, -111, 1).apply


def test_min_scale_and_initial_scale() -> None:
    s = _scaler({P + "min-scale": "2", P + "initial-scale": "4"})
    a = s.reconcile(0.0, -1, -211, 0)  # activating: initial scale is the floor until reached
    assert (a.want, a.apply) == (4, True)
    a = s.reconcile(2.0, 1, -111, 4)  # reaches 4 in this pass: still the floor here
    assert (a.want, a.apply, a.state) == (4, True, PAState.ACTIVE)
    a = s.reconcile(4.0, 1, -111, 4)  # reached once: now only min-scale binds
    assert (a.want, a.apply) == (2, True)
    assert s.reconcile(6.0, 0, -111, 2).want == 2


def test_max_scale_caps() -> None:
    s = _scaler({P + "max-scale": "3"})
    assert s.reconcile(0.0, 10, -1000, 1).want == 3


def test_unknown_decision_left_alone_when_active() -> None:
    s = _scaler()
    s.reconcile(0.0, 1, -111, 1)
    a = s.reconcile(2.0, -1, -111, 1)
    assert (a.want, a.apply) == (-1, False)


def test_activation_timeout_gives_up() -> None:
    s = _scaler()
    assert s.reconcile(0.0, 0, -211, 0).want == -1
    a = s.reconcile(630.0, 0, -211, 0)
    assert (a.want, a.apply) == (0, True)


def test_initial_scale_zero_starts_inactive() -> None:
    s = _scaler({P + "initial-scale": "0"}, cfg={"allow-zero-initial-scale": "true"})
    a = s.reconcile(0.0, -1, -211, 0)
    assert (a.state, a.activator_in_path) == (PAState.INACTIVE, True)


def test_unlimited_tbc_always_in_path_and_skips_probe() -> None:
    s = _scaler({P + "target-burst-capacity": "-1"})
    a = s.reconcile(0.0, 5, -1, 5)
    assert a.activator_in_path
    assert defaults().scale_to_zero_grace_period == 30
