"""Gradual rollout of a new latest revision, in Knative's steps (pure; times in seconds).

A configuration target with ``percent`` > 1 and ``serving.knative.dev/rollout-duration`` set does not
jump to a new revision: :func:`start_rollout` gives it 1 % (taken from the newest previous revision that
has traffic); once the route serves that, :func:`step_properties` turns the time that took into a step
size and a step duration; :func:`step_revisions` then moves one step at a time, draining the newest of
the older revisions first. 100 % over 5 s when the first 1 % took 1 s: 4 steps of 25 every second,
1 -> 26 -> 51 -> 76 -> 100.

Percentages are listed oldest to newest; the newest revision is the one being rolled out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "adjust_percentage",
    "go_round",
    "min_step_seconds",
    "start_rollout",
    "step_named",
    "step_properties",
    "step_revisions",
]


def go_round(x: float) -> int:
    """Go's math.Round: halves go away from zero (Python's round() goes to even)."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def min_step_seconds(now: float, start_time: float) -> float:
    """How long the first 1 % took, rounded up to whole seconds, at least 1."""
    return max(1.0, math.ceil(now - start_time))


def step_properties(percent: int, min_step_s: float, duration_s: float) -> tuple[int, float]:
    """``(step_size, step_duration_s)`` for moving a config target of ``percent`` over ``duration_s``.

    The first 1 % already used ``min_step_s``, so the rest of the time is ``max(1, duration - min_step)``,
    cut into at most ``percent - 1`` steps no shorter than ``min_step_s``. Step sizes round half away
    from zero (99 / 4 = 24.75 -> 25), so the last step may be smaller and is capped by the caller.
    """
    if percent <= 1:
        raise ValueError(f"percent: a rollout needs a target above 1 %, got {percent}")
    if min_step_s <= 0:
        raise ValueError(f"min_step_s: must be > 0 seconds, got {min_step_s}")
    duration = max(1.0, duration_s - min_step_s)
    steps = max(1.0, duration / min_step_s)
    remaining = float(percent - 1)
    steps = min(steps, remaining)
    return go_round(remaining / steps), duration / steps


def step_revisions(
    percents: Sequence[int],
    step_size: int,
    now: float,
    next_step_time: float | None,
    step_duration: float,
    config_percent: int,
) -> tuple[list[int], float | None]:
    """One rollout step at ``now``: ``(new_percents, next_step_time)``, None once done.

    ``step_size`` is taken from the older revisions, newest-old first; an older revision left with
    nothing is dropped from the list (the survivors keep their order, the newest stays last), and the
    newest gets the step, capped at ``config_percent``. Before ``next_step_time`` nothing changes.
    ``[60, 20, 20]`` with step 25 -> ``[55, 45]``: the middle revision gave its 20 and left.
    """
    out = list(percents)
    if len(out) < 2:
        return out, None
    if next_step_time is not None and now < next_step_time:
        return out, next_step_time
    remaining = step_size
    write = len(out) - 1
    read = len(out) - 2
    while remaining > 0 and read >= 0:
        if out[read] > remaining:
            out[read] -= remaining
            break
        remaining -= out[read]
        write -= 1
        read -= 1
    newest = min(out[-1] + step_size, config_percent)
    out = [*out[:write], newest]
    if len(out) > 1:
        return out, now + step_duration
    return out, None


def step_named(
    revisions: Sequence[tuple[str, int]],
    step_size: int,
    now: float,
    next_step_time: float | None,
    step_duration: float,
    config_percent: int,
) -> tuple[list[tuple[str, int]], float | None]:
    """:func:`step_revisions` over ``(revision, percent)`` pairs, keeping the names with the numbers."""
    new, nxt = step_revisions(
        [p for _, p in revisions], step_size, now, next_step_time, step_duration, config_percent
    )
    kept = [*revisions[: len(new) - 1], revisions[-1]] if revisions else []
    return [(name, pct) for (name, _), pct in zip(kept, new, strict=True)], nxt


def start_rollout(percents: Sequence[int]) -> list[int]:
    """A new newest revision appears: it gets 1 %, taken from the newest older revision with traffic.

    Returns the new list with the new revision last; revisions left at 0 % are dropped, so callers
    that track names should use the same rule (drop names whose percent became 0).
    """
    out = list(percents)
    for i in range(len(out) - 1, -1, -1):
        if out[i] > 0:
            out[i] -= 1
            break
    return [p for p in out if p > 0] + [1]


def adjust_percentage(percents: Sequence[int], goal: int) -> list[int]:
    """The config target's total changed to ``goal`` mid-rollout.

    More goes to the newest revision; less is taken from the oldest first (dropping revisions that reach
    0); a goal of 0 ends the rollout (empty list).
    """
    out = list(percents)
    if goal == 0:
        return []
    diff = goal - sum(out)
    if diff > 0 and out:
        out[-1] += diff
    elif diff < 0:
        take = -diff
        i = 0
        while take > 0 and i < len(out):
            if out[i] > take:
                out[i] -= take
                break
            take -= out[i]
            i += 1
        out = out[i:]
    return out
