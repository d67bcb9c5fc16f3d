"""Pure pieces of a Kubernetes informer: object keys, event application, list diffs, jittered back-off.

No I/O and no kubernetes_asyncio import: objects are the raw JSON dicts the API server sends.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Backoff",
    "Change",
    "Obj",
    "ObjKey",
    "apply_event",
    "diff_lists",
    "object_key",
    "resource_version",
]

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name)


def object_key(obj: Mapping[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"object has no metadata.name: {dict(obj)!r:.200}")
    return (str(meta.get("namespace") or ""), name)


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


@dataclass(frozen=True, slots=True)
class Change:
    """One change to the cache. ``old`` is None for an add, ``new`` is None for a delete."""

    key: ObjKey
    old: Obj | None
    new: Obj | None

    @property
    def kind(self) -> str:
        if self.old is None:
            return "ADDED"
        if self.new is None:
            return "DELETED"
        return "MODIFIED"


def apply_event(cache: dict[ObjKey, Obj], event_type: str, obj: Obj) -> Change | None:
    """Apply one ADDED/MODIFIED/DELETED watch event to ``cache``; return the change, or None if none.

    A MODIFIED for an unknown key counts as an add and an ADDED for a known key as a modify: after a
    re-list the stream and the cache can disagree on which came first, and the object is what matters.
    An event whose resourceVersion equals the cached one changes nothing (a replay after a re-watch).
    """
    key = object_key(obj)
    old = cache.get(key)
    if event_type == "DELETED":
        if old is None:
            return None
        del cache[key]
        return Change(key, old, None)
    if event_type not in ("ADDED", "MODIFIED"):
        raise ValueError(f"not an object event type: {event_type!r}")
    if old is not None and resource_version(old) == resource_version(obj) != "":
        return None
    cache[key] = obj
    return Change(key, old, obj)


def diff_lists(cache: Mapping[ObjKey, Obj], items: list[Obj]) -> list[Change]:
    """What turns ``cache`` into the freshly listed ``items``: adds, modifies (by resourceVersion), deletes.

    Used after a 410 Gone re-list, so that every update made while the watch was broken is seen once.
    """
    fresh = {object_key(o): o for o in items}
    changes: list[Change] = []
    for key, new in fresh.items():
        old = cache.get(key)
        if old is None or resource_version(old) != resource_version(new) or resource_version(new) == "":
            changes.append(Change(key, old, new))
    for key, old in cache.items():
        if key not in fresh:
            changes.append(Change(key, old, None))
    return changes


class Backoff:
    """Exponential back-off with jitter: the n-th consecutive failure waits about base * 2**(n-1).

    The delay is drawn uniformly from [d/2, d] ("equal jitter"), so that many clients failing together
    (an API server restart) do not come back together, and no client retries sooner than half the step.
    With base 1 s and cap 60 s: 0.5-1, 1-2, 2-4, ... and 30-60 s from the 7th failure on.
    """

    __slots__ = ("_rng", "base", "cap", "failures")

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, at_least: float = 0.0) -> float:
        """Count a failure and return how long to wait; ``at_least`` honours a server's Retry-After."""
        self.failures += 1
        step = min(self.cap, self.base * (2.0 ** min(self.failures - 1, 62)))
        return max(at_least, step / 2 + self._rng.uniform(0.0, step / 2))

    def reset(self) -> None:
        self.failures = 0
