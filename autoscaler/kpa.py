"""Applying a decision as Knative's PodAutoscaler reconciler does (pure, time passed in).

The decider says how many pods the load wants; this decides what to actually ask the scaler for and
whether the activator sits in the request path:

* bounds: min-scale (0 when unreachable), max-scale (0 = no cap), and initial-scale as a floor until
  the revision first reached it; an unknown decision (-1, no metrics yet) is left alone unless the
  revision is activating.
* scale to zero, only when the bounded decision is 0: with enable-scale-to-zero=false keep 1; an
  *active* revision first holds 1 pod until it has been active for a stable window, then turns
  *inactive* (activator in path) without scaling; an *inactive* one scales to 0 once inactive for
  max(grace period, pod retention), or once the activator has been in the path for the grace period
  (but never before pod retention). Activation stuck for longer than the activation timeout gives up.
* activator in path (Knative's SKS Proxy mode) unless want > 0 and excess burst capacity >= 0; an
  unknown decision on an inactive revision also keeps it in the path.
* activators needed: 2 with TBC 0, else max(2, ceil((ready * total + max(TBC, 0)) / capacity)).
  20 pods of 100 with TBC 211 need ceil(2211 / 100) = 23 activators of capacity 100.

Knative re-queues its reconciler for the exact moment a wait ends; here :meth:`RevisionScaler.reconcile`
runs at every decision tick (2 s), so a wait can end up to one tick late.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .config import RevisionScaling

__all__ = ["MIN_ACTIVATORS", "Applied", "PAState", "RevisionScaler", "apply_bounds", "num_activators"]

MIN_ACTIVATORS = 2
UNKNOWN = -1


class PAState(enum.Enum):
    ACTIVATING = "activating"  # pods asked for, not ready yet (Knative: Active=Unknown)
    ACTIVE = "active"
    INACTIVE = "inactive"  # activator in path, on the way to (or at) zero


@dataclass(frozen=True, slots=True)
class Applied:
    want: int  # the scale the revision should have; -1 = unknown
    apply: bool  # True: ask the Scaler for ``want`` now; False: leave the replica count alone
    activator_in_path: bool
    num_activators: int
    state: PAState


def apply_bounds(lo: int, hi: int, x: int) -> int:
    if x < lo:
        return lo
    if hi > 0 and x > hi:
        return hi
    return x


def num_activators(ready: int, total_value: float, tbc: float, activator_capacity: float) -> int:
    if tbc == 0:
        return MIN_ACTIVATORS
    cover = ready * total_value + max(tbc, 0.0)
    return max(MIN_ACTIVATORS, math.ceil(cover / activator_capacity))


class RevisionScaler:
    """The PodAutoscaler status of one revision and the scale-to-zero state machine around it."""

    __slots__ = ("_initialized", "_proxy_since", "_scaling", "_state", "_state_since")

    def __init__(
        self,
        scaling: RevisionScaling,
        now: float,
        state: PAState = PAState.ACTIVATING,
        *,
        initialized: bool = False,
    ) -> None:
        """A new revision starts activating and not yet initialized (initial-scale is its floor).

        After an autoscaler restart a running revision is adopted ``initialized`` (it reached its initial
        scale long ago; Knative keeps that in the PA status), and ``INACTIVE`` when it has no pods.
        """
        self._scaling = scaling
        self._state = state
        self._state_since = now
        self._initialized = initialized  # the revision reached its initial scale once
        self._proxy_since: float | None = now  # a new revision starts behind the activator

    @property
    def state(self) -> PAState:
        return self._state

    @property
    def scaling(self) -> RevisionScaling:
        return self._scaling

    def update(self, scaling: RevisionScaling) -> None:
        self._scaling = scaling

    def _bounds(self) -> tuple[int, int]:
        s = self._scaling
        lo, hi = s.min_scale, s.max_scale
        if s.initial_scale > 1 and not self._initialized:
            lo = max(lo, s.initial_scale)
        return lo, hi

    def _active_threshold(self) -> int:
        s = self._scaling
        if not self._initialized:
            return max(s.min_scale, s.initial_scale)
        return max(s.min_scale, 1)

    def _scale_to_zero(self, now: float, activator_ready: bool) -> tuple[int, bool]:
        """(want, apply) for a bounded decision of 0 (Knative's handleScaleToZero)."""
        s = self._scaling
        cfg = s.config
        if not cfg.enable_scale_to_zero:
            return 1, True
        if self._state is PAState.ACTIVATING:
            if now - self._state_since >= cfg.activation_timeout:
                return 0, True  # activation failed: give up
            return UNKNOWN, False
        if self._state is PAState.ACTIVE:
            if now - self._state_since >= s.stable_window:
                return 0, False  # turns inactive below: activator into the path, no scaling yet
            return 1, True  # hold one pod for the rest of the stable window
        # Inactive. With TBC -1 the activator is always in the path; otherwise Knative probes it. Here it
        # is in the path once we said so on an earlier tick and (if the caller probes) the probe agrees.
        in_path = s.spec.target_burst_capacity == -1 or (self._proxy_since is not None and activator_ready)
        if not in_path:
            return 0, False
        inactive_for = now - self._state_since
        retention = s.scale_to_zero_pod_retention_period
        if inactive_for >= max(cfg.scale_to_zero_grace_period, retention):
            return 0, True
        if retention > 0 and inactive_for < retention:
            return 0, False
        proxy_for = now - self._proxy_since if self._proxy_since is not None else 0.0
        if cfg.scale_to_zero_grace_period - proxy_for <= 0:
            return 0, True
        return 0, False

    def reconcile(
        self, now: float, desired: int, ebc: int, ready: int, *, activator_ready: bool = True
    ) -> Applied:
        """One pass: the latest valid decision (``desired`` -1 if none yet) and the ready pod count.

        ``activator_ready``: a probe says the activator really serves the revision (Knative probes it
        before the last pod goes); without a probe, saying so is enough (the switch is in-process).
        """
        s = self._scaling
        apply = True
        if desired < 0 and self._state is not PAState.ACTIVATING:
            want, apply = desired, False
        else:
            lo, hi = self._bounds()
            want = apply_bounds(lo, hi, desired)
            if want == 0:
                want, apply = self._scale_to_zero(now, activator_ready)
            elif want < 0:
                apply = False

        proxy = want == 0 or ebc < 0 or (want == UNKNOWN and self._state is PAState.INACTIVE)
        if proxy and self._proxy_since is None:
            self._proxy_since = now
        elif not proxy:
            self._proxy_since = None

        self._update_state(now, want, ready)
        n = num_activators(ready, s.spec.total_value, s.spec.target_burst_capacity, s.spec.activator_capacity)
        return Applied(want, apply, proxy, n, self._state)

    def _update_state(self, now: float, want: int, ready: int) -> None:
        """Knative's computeActiveCondition."""
        min_ready = self._active_threshold()
        if ready >= min_ready:
            self._initialized = True
        state = self._state
        if want == 0 or min_ready == 0:
            new = PAState.INACTIVE
        elif ready < min_ready:
            new = PAState.ACTIVATING if (want > 0 or state is not PAState.INACTIVE) else PAState.INACTIVE
        elif want > 0 or state is not PAState.INACTIVE:
            new = PAState.ACTIVE
        else:
            new = state
        if new is not state:
            self._state = new
            self._state_since = now
