"""Which pod gets the next request, by containerConcurrency, as Knative picks (pure).

cc = 0: power of two choices, the less loaded of two random pods (ties broken at random), since nothing
limits a pod. cc 1-3: the first pod in order with a free slot, which packs the few slots tightly.
cc >= 4: round robin from after the last pick, skipping pods without a free slot.
Each policy calls ``try_reserve()`` on the pod it returns; the caller releases that pod when done.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["FirstAvailable", "LbPolicy", "PodSlot", "PowerOfTwoChoices", "RoundRobin", "policy_for"]


class PodSlot(Protocol):
    @property
    def weight(self) -> int:
        """Requests in flight on this pod through this activator."""
        ...

    def try_reserve(self) -> bool:
        """Take a slot now if one is free; never waits."""
        ...


P = TypeVar("P", bound=PodSlot)


class LbPolicy(Protocol):
    def pick(self, pods: Sequence[P]) -> P | None: ...


class PowerOfTwoChoices:
    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, pods: Sequence[P]) -> P | None:
        n = len(pods)
        if n == 0:
            return None
        if n == 1:
            return pods[0] if pods[0].try_reserve() else None
        a = self._rng.randrange(n)
        b = self._rng.randrange(n - 1)
        if b >= a:
            b += 1
        pick, alt = pods[a], pods[b]
        if alt.weight < pick.weight or (alt.weight == pick.weight and self._rng.random() < 0.5):
            pick = alt
        return pick if pick.try_reserve() else None


class FirstAvailable:
    __slots__ = ()

    def pick(self, pods: Sequence[P]) -> P | None:
        for pod in pods:
            if pod.try_reserve():
                return pod
        return None


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, pods: Sequence[P]) -> P | None:
        n = len(pods)
        if n == 0:
            return None
        start = self._next % n
        for i in range(n):
            j = (start + i) % n
            if pods[j].try_reserve():
                self._next = j + 1
                return pods[j]
        return None


def policy_for(cc: int, rng: random.Random) -> PowerOfTwoChoices | FirstAvailable | RoundRobin:
    if cc == 0:
        return PowerOfTwoChoices(rng)
    if cc <= 3:
        return FirstAvailable()
    return RoundRobin()
