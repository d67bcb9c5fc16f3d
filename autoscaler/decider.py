"""Knative's KPA scaling decision for one revision: stable and panic modes, rate limits, burst capacity.

Pure: the caller passes ``now`` and the observed window averages. Each tick (every 2 s)::

    ready'  = max(1, ready)                      # zero ready pods count as one
    up      = ceil(max_scale_up_rate * ready')   # 1000 x
    down    = floor(ready' / max_scale_down_rate) if reachable else 0
    stable  = clamp(ceil(observed_stable / target), down, up)
    panic   = clamp(ceil(observed_panic / target), down, up)

Panic starts (or is extended) whenever ceil(observed_panic / target) / ready' >= panic_threshold and
ends once a whole stable window has passed since it was last over the threshold; while panicking the
count never goes down. Worked numbers, target 70: 2 pods and a panic-window average of 300 give
ceil(300 / 70) = 5 pods wanted, 5 / 2 = 2.5 >= 2.0, so panic, and 5 pods at once instead of the stable
window's slower view.

Excess burst capacity (EBC) = floor(ready * total - target_burst_capacity - observed_panic), with the
raw ready count: 3 pods of capacity 100 with TBC 211 and 89 in flight leave exactly 0, enough to take
the activator out of the path; 1 or 2 pods never do. TBC 0 gives 0, TBC -1 (unlimited) gives -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .windows import MaxTimeWindow

__all__ = ["INVALID", "Decider", "DeciderSpec", "ScaleResult"]

SCALING_METRICS = ("concurrency", "rps")
TICK_INTERVAL = 2.0  # seconds between decisions; also the slot of the scale-down-delay window


@dataclass(frozen=True, slots=True)
class DeciderSpec:
    """Per-revision knobs of the decision; defaults are Knative's for containerConcurrency 0."""

    target_value: float = 70.0
    total_value: float = 100.0
    target_burst_capacity: float = 211.0
    panic_threshold: float = 2.0  # 2.0 = 200 %
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    activator_capacity: float = 100.0
    stable_window: float = 60.0  # seconds
    scale_down_delay: float = 0.0  # seconds
    reachable: bool = True
    activation_scale: int = 1
    scaling_metric: str = "concurrency"

    def __post_init__(self) -> None:
        if not self.target_value > 0:
            raise ValueError(f"target_value must be positive, got {self.target_value}")
        if self.scaling_metric not in SCALING_METRICS:
            raise ValueError(f"scaling_metric must be one of {SCALING_METRICS}, got {self.scaling_metric!r}")
        if self.scale_down_delay < 0:
            raise ValueError(f"scale_down_delay must be >= 0, got {self.scale_down_delay}")
        if not self.max_scale_down_rate > 0:
            raise ValueError(f"max_scale_down_rate must be positive, got {self.max_scale_down_rate}")


@dataclass(frozen=True, slots=True)
class ScaleResult:
    desired_pod_count: int
    excess_burst_capacity: int
    scale_valid: bool


INVALID = ScaleResult(0, 0, False)


def excess_burst_capacity(ready: int, total_value: float, tbc: float, observed_panic: float) -> int:
    if tbc == 0:
        return 0
    if tbc < 0:
        return -1
    return math.floor(ready * total_value - tbc - observed_panic)


class Decider:
    """One revision's scaler state: the spec, the panic episode and the scale-down-delay window."""

    __slots__ = ("_delay", "_max_panic_pods", "_panic_time", "_spec")

    def __init__(self, spec: DeciderSpec, ready_pods: int | None, now: float) -> None:
        # After an autoscaler restart the windows are empty; starting in panic with the current pod
        # count as the floor keeps a running revision from being scaled down on no history.
        ready = ready_pods if ready_pods is not None and ready_pods > 0 else 0
        self._spec = spec
        self._panic_time: float | None = now if ready > 1 else None
        self._max_panic_pods = ready
        self._delay: MaxTimeWindow | None = (
            MaxTimeWindow(spec.scale_down_delay, TICK_INTERVAL) if spec.scale_down_delay > 0 else None
        )

    @property
    def spec(self) -> DeciderSpec:
        return self._spec

    @property
    def in_panic(self) -> bool:
        return self._panic_time is not None

    @property
    def panic_time(self) -> float | None:
        return self._panic_time

    def update(self, spec: DeciderSpec) -> None:
        """Take a changed spec; the panic episode carries over, a changed delay starts a fresh window."""
        if spec.scale_down_delay != self._spec.scale_down_delay:
            self._delay = (
                MaxTimeWindow(spec.scale_down_delay, TICK_INTERVAL) if spec.scale_down_delay > 0 else None
            )
        self._spec = spec

    def scale(
        self,
        now: float,
        observed_stable: float | None,
        observed_panic: float | None,
        ready_pods: int | None,
    ) -> ScaleResult:
        """One decision. ``None`` observed values (no data) or ``ready_pods`` (count failed): invalid."""
        if ready_pods is None or observed_stable is None or observed_panic is None:
            return INVALID
        spec = self._spec
        ready_f = float(max(1, ready_pods))
        max_up = math.ceil(spec.max_scale_up_rate * ready_f)
        max_down = math.floor(ready_f / spec.max_scale_down_rate) if spec.reachable else 0
        dspc = math.ceil(observed_stable / spec.target_value)
        dppc = math.ceil(observed_panic / spec.target_value)
        desired_stable = min(max(dspc, max_down), max_up)
        desired_panic = min(max(dppc, max_down), max_up)
        if spec.activation_scale > 1:
            # Once there is any demand, never fewer than activation-scale pods.
            if dspc > 0 and desired_stable < spec.activation_scale:
                desired_stable = spec.activation_scale
            if dppc > 0 and desired_panic < spec.activation_scale:
                desired_panic = spec.activation_scale

        over_threshold = dppc / ready_f >= spec.panic_threshold
        if over_threshold:
            self._panic_time = now  # enter, or extend the episode
        elif self._panic_time is not None and self._panic_time + spec.stable_window < now:
            # The surge has had a whole stable window to show up in the stable average.
            self._panic_time = None
            self._max_panic_pods = 0

        desired = desired_stable
        if self._panic_time is not None:
            desired = max(desired, desired_panic)
            self._max_panic_pods = max(self._max_panic_pods, desired)  # never scale down in panic
            desired = self._max_panic_pods

        if spec.reachable and self._delay is not None:
            self._delay.record(now, desired)
            desired = self._delay.current()

        ebc = excess_burst_capacity(ready_pods, spec.total_value, spec.target_burst_capacity, observed_panic)
        return ScaleResult(int(desired), ebc, True)
