"""Flatten and validate a Knative ``spec.traffic`` list into per-route revision splits (pure).

Knative's rules: every target names a revision (``revisionName``) or the configuration's latest ready
revision (``latestRevision: true``); percentages of the default route sum to 100; the same revision and
tag given twice are merged by summing; a tagged target is also the only target of its tag route, at
100 % there; 0 % targets appear in no split. ``[{revisionName: a, percent: 40}, {latestRevision: true,
percent: 60, tag: next}]`` gives a default split a:40 / latest:60 and a route ``next`` -> latest:100.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.errors import SpecError

__all__ = ["Flattened", "Split", "Target", "TrafficTarget", "flatten", "parse_traffic"]

# A tag becomes the first label of a host name: a DNS-1123 label, leaving room for "-{name}".
_TAG = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_TAG = 63


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    """One entry of ``spec.traffic`` as written by the user."""

    revision_name: str | None = None
    latest_revision: bool = False
    percent: int = 0
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """One revision of a split and its share in percent."""

    revision: str
    percent: int
    latest: bool = False


@dataclass(frozen=True, slots=True)
class Split:
    """The revisions a route sends to, each with percent > 0, in spec order; shares sum to 100."""

    targets: tuple[Target, ...]

    def revisions(self) -> frozenset[str]:
        return frozenset(t.revision for t in self.targets)


@dataclass(frozen=True, slots=True)
class Flattened:
    default: Split
    tags: Mapping[str, Split]

    def revisions(self) -> frozenset[str]:
        """Every revision some route can reach."""
        out = set(self.default.revisions())
        for split in self.tags.values():
            out |= split.revisions()
        return frozenset(out)


def parse_traffic(raw: Any, path: str = "spec.traffic") -> list[TrafficTarget]:
    """Read the YAML/JSON form (camelCase keys); errors name the field path."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(f"{path}: expected a list of traffic targets, got {type(raw).__name__}")
    out: list[TrafficTarget] = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(f"{where}: expected a mapping, got {type(item).__name__}")
        unknown = set(item) - {"revisionName", "latestRevision", "percent", "tag", "configurationName", "url"}
        if unknown:
            raise SpecError(f"{where}: unknown field(s) {sorted(unknown)}")
        rev = item.get("revisionName")
        if rev is not None and (not isinstance(rev, str) or not rev):
            raise SpecError(f"{where}.revisionName: expected a non-empty string, got {rev!r}")
        latest = item.get("latestRevision")
        if latest is not None and not isinstance(latest, bool):
            raise SpecError(f"{where}.latestRevision: expected true or false, got {latest!r}")
        pct = item.get("percent", 0)
        if pct is None:
            pct = 0
        if isinstance(pct, bool) or not isinstance(pct, int):
            raise SpecError(f"{where}.percent: expected a whole number 0-100, got {pct!r}")
        tag = item.get("tag")
        if tag is not None and not isinstance(tag, str):
            raise SpecError(f"{where}.tag: expected a string, got {tag!r}")
        # Knative: latestRevision defaults to true when no revisionName is given.
        if latest is None:
            latest = rev is None
        out.append(TrafficTarget(revision_name=rev, latest_revision=latest, percent=pct, tag=tag or None))
    return out


def flatten(
    targets: Sequence[TrafficTarget],
    *,
    revisions: Collection[str],
    latest_ready: str | None,
    path: str = "spec.traffic",
) -> Flattened:
    """Resolve and check ``targets`` against the known ready ``revisions``.

    An empty list means Knative's default: 100 % to the latest ready revision.
    """
    if not targets:
        targets = [TrafficTarget(latest_revision=True, percent=100)]
    merged: dict[tuple[str, str | None], list[Any]] = {}  # (revision, tag) -> [percent, latest]
    seen_tags: dict[str, int] = {}
    total = 0
    for i, t in enumerate(targets):
        where = f"{path}[{i}]"
        if not 0 <= t.percent <= 100:
            raise SpecError(f"{where}.percent: must be between 0 and 100, got {t.percent}")
        if t.latest_revision and t.revision_name:
            raise SpecError(
                f"{where}: revisionName {t.revision_name!r} and latestRevision: true are exclusive"
            )
        if t.tag is not None:
            if len(t.tag) > _MAX_TAG or not _TAG.match(t.tag):
                raise SpecError(f"{where}.tag: {t.tag!r} is not a DNS label (lower-case letters, digits, -)")
            if t.tag in seen_tags:
                raise SpecError(f"{where}.tag: {t.tag!r} is already used by {path}[{seen_tags[t.tag]}]")
            seen_tags[t.tag] = i
        if t.latest_revision:
            if latest_ready is None:
                raise SpecError(f"{where}.latestRevision: the configuration has no ready revision yet")
            rev = latest_ready
        elif t.revision_name:
            rev = t.revision_name
            if rev not in revisions:
                raise SpecError(f"{where}.revisionName: revision {rev!r} is not a known ready revision")
        else:
            raise SpecError(f"{where}: needs revisionName or latestRevision: true")
        total += t.percent
        slot = merged.setdefault((rev, t.tag), [0, False])
        slot[0] += t.percent
        slot[1] = slot[1] or t.latest_revision
    if total != 100:
        raise SpecError(f"{path}: percentages of the default route must sum to 100, got {total}")

    default: dict[str, Target] = {}
    tags: dict[str, Split] = {}
    for (rev, tag), (pct, latest) in merged.items():
        if pct > 0:
            prev = default.get(rev)
            total_pct = pct + (prev.percent if prev is not None else 0)
            default[rev] = Target(rev, total_pct, latest or (prev is not None and prev.latest))
        if tag is not None:
            tags[tag] = Split((Target(rev, 100, latest),))
    return Flattened(Split(tuple(default.values())), tags)
