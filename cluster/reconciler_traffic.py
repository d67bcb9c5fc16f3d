"""One Service's traffic, resolved against its ready revisions, with a gradual rollout (pure, time passed in).

``spec.traffic`` names revisions or ``latestRevision: true``; what the route actually serves also
depends on which revisions are ready: a target naming a revision that is not ready yet leaves the
route as it was (Knative keeps the last ready traffic too), and ``latestRevision`` means the newest
revision that has been ready at least once. A Service whose revisions have never been ready routes to
its latest one, so the first requests wait in the activator instead of getting a 404.

A rollout moves the latest target from the previous latest revision to the new one in Knative's steps
(:mod:`routing.rollout`): 1 % at once, then ``step_size`` every ``step_duration`` seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from routing.rollout import min_step_seconds, step_named, step_properties
from serving.spec import Service

__all__ = [
    "ConfigTarget",
    "EffTarget",
    "Rollout",
    "adjust",
    "begin_rollout",
    "config_target",
    "resolve_targets",
]


@dataclass(frozen=True, slots=True)
class EffTarget:
    """One effective traffic entry: a concrete revision, its percent of the default route, a tag."""

    revision: str
    percent: int
    tag: str | None = None
    latest: bool = False


@dataclass(frozen=True, slots=True)
class ConfigTarget:
    """The one ``latestRevision: true`` target a rollout can move: its percent and tag."""

    index: int
    percent: int
    tag: str | None


@dataclass(slots=True)
class Rollout:
    """A gradual move of the config target's share; ``revisions`` oldest to newest, newest last."""

    revisions: list[tuple[str, int]]
    config_percent: int
    duration: float
    started: float
    step_size: int = 0
    step_duration: float = 0.0
    next_step: float | None = None
    observed: bool = False

    def observe(self, now: float) -> None:
        """The route now serves the first 1 %: the time that took sets the pace (Knative's ObserveReady)."""
        if self.observed:
            return
        self.observed = True
        self.step_size, self.step_duration = step_properties(
            self.config_percent, min_step_seconds(now, self.started), self.duration
        )
        self.next_step = now + self.step_duration

    def step(self, now: float) -> bool:
        """One step when due; True when the split changed. ``done`` once one revision is left."""
        if not self.observed or self.next_step is None or now < self.next_step:
            return False
        before = list(self.revisions)
        self.revisions, self.next_step = step_named(
            self.revisions, self.step_size, now, self.next_step, self.step_duration, self.config_percent
        )
        return self.revisions != before

    @property
    def done(self) -> bool:
        return len(self.revisions) <= 1


def config_target(service: Service) -> ConfigTarget | None:
    """The Service's single latestRevision target with a share, or None (no rollout possible)."""
    found = [(i, t) for i, t in enumerate(service.traffic) if t.latest_revision]
    if len(found) != 1:
        return None
    i, t = found[0]
    return ConfigTarget(i, t.percent or 0, t.tag)


def begin_rollout(
    current: Sequence[tuple[str, int]], new: str, config_percent: int, duration: float, now: float
) -> Rollout:
    """A new latest revision is ready: it takes 1 % from the newest older revision that has traffic."""
    out = list(current)
    for i in range(len(out) - 1, -1, -1):
        if out[i][1] > 0:
            out[i] = (out[i][0], out[i][1] - 1)
            break
    kept = [(name, pct) for name, pct in out if pct > 0 and name != new]
    return Rollout([*kept, (new, 1)], config_percent, duration, now)


def adjust(revisions: Sequence[tuple[str, int]], goal: int) -> list[tuple[str, int]]:
    """The config target's percent changed mid-rollout: more to the newest, less from the oldest."""
    out = list(revisions)
    diff = goal - sum(p for _, p in out)
    if diff > 0 and out:
        out[-1] = (out[-1][0], out[-1][1] + diff)
    take = -diff
    while take > 0 and out:
        name, pct = out[0]
        if pct > take:
            out[0] = (name, pct - take)
            break
        take -= pct
        out.pop(0)
    return out


def resolve_targets(
    service: Service,
    latest_ready: str,
    ready: frozenset[str],
    config_split: Sequence[tuple[str, int]] | None,
) -> tuple[EffTarget, ...] | None:
    """The effective targets, or None while a named revision is not ready (keep the old route).

    ``ready`` empty means nothing was ever ready: every target is taken as it is. ``config_split``
    replaces the config target by a rollout's revisions (the newest keeps the tag).
    """
    out: list[EffTarget] = []
    cfg = config_target(service)
    for i, t in enumerate(service.traffic):
        if t.latest_revision:
            if cfg is not None and cfg.index == i and config_split:
                *older, newest = config_split
                out.extend(EffTarget(name, pct) for name, pct in older)
                out.append(EffTarget(newest[0], newest[1], t.tag, latest=True))
                continue
            out.append(EffTarget(latest_ready, t.percent or 0, t.tag, latest=True))
            continue
        name = t.revision_name or ""
        if ready and name not in ready:
            return None
        out.append(EffTarget(name, t.percent or 0, t.tag))
    return tuple(out)
