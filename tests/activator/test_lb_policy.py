from __future__ import annotations

import random
from collections import Counter

import pytest

from activator.lb_policy import FirstAvailable, PowerOfTwoChoices, RoundRobin, policy_for


class Pod:
    def __init__(self, name: str, slots: int | None, weight: int = 0) -> None:
        self.name, self.slots, self._weight = name, slots, weight

    @property
    def weight(self) -> int:
        return self._weight

    def try_reserve(self) -> bool:
        if self.slots is not None and self._weight >= self.slots:
            return False
        self._weight += 1
        return True

    def release(self) -> None:
        self._weight -= 1


@pytest.mark.parametrize(
    ("cc", "kind"),
    [
        pytest.param(0, PowerOfTwoChoices, id="cc0-p2c"),
        pytest.param(1, FirstAvailable, id="cc1-first"),
        pytest.param(3, FirstAvailable, id="cc3-first"),
        pytest.param(4, RoundRobin, id="cc4-rr"),
        pytest.param(100, RoundRobin, id="cc100-rr"),
    ],
)
def test_policy_for(cc: int, kind: type) -> None:
    assert isinstance(policy_for(cc, random.Random(1)), kind)


@pytest.mark.parametrize(
    ("weights", "slots", "want"),
    [
        pytest.param([0, 0, 0], [1, 1, 1], "p0", id="first-free"),
        pytest.param([1, 0, 0], [1, 1, 1], "p1", id="skip-full"),
        pytest.param([1, 1, 1], [1, 1, 1], None, id="none-free"),
        pytest.param([2, 3, 0], [3, 3, 3], "p0", id="packs-first-pod"),
    ],
)
def test_first_available(weights: list[int], slots: list[int], want: str | None) -> None:
    pods = [Pod(f"p{i}", s, w) for i, (w, s) in enumerate(zip(weights, slots, strict=True))]
    got = FirstAvailable().pick(pods)
    assert (got.name if got else None) == want


def test_round_robin_rotates_and_skips_full() -> None:
    pods = [Pod("a", 4), Pod("b", 4, weight=4), Pod("c", 4)]
    rr = RoundRobin()
    names = []
    for _ in range(4):
        p = rr.pick(pods)
        assert p is not None
        names.append(p.name)
    assert names == ["a", "c", "a", "c"]  # b is full: skipped
    assert RoundRobin().pick([]) is None


def test_round_robin_none_when_all_full() -> None:
    assert RoundRobin().pick([Pod("a", 4, 4), Pod("b", 4, 4)]) is None


def test_p2c_prefers_less_loaded() -> None:
    pods = [Pod("busy", None, 10), Pod("idle", None, 0)]
    p2c = PowerOfTwoChoices(random.Random(4))
    assert all(p2c.pick(pods).name == "idle" for _ in range(5))  # type: ignore[union-attr]


def test_p2c_spreads_evenly_and_ties_are_random() -> None:
    pods = [Pod(str(i), None) for i in range(4)]
    p2c = PowerOfTwoChoices(random.Random(9))
    for _ in range(400):
        p2c.pick(pods)
    loads = [p.weight for p in pods]
    assert max(loads) - min(loads) <= 3  # least-loaded of two keeps them level (random would drift ~20)
    firsts: Counter[str] = Counter()
    for seed in range(200):
        two = [Pod("x", None), Pod("y", None)]
        got = PowerOfTwoChoices(random.Random(seed)).pick(two)
        assert got is not None
        firsts[got.name] += 1
    assert firsts["x"] > 50 and firsts["y"] > 50


def test_p2c_single_and_empty() -> None:
    p2c = PowerOfTwoChoices(random.Random(1))
    assert p2c.pick([]) is None
    one = Pod("only", None)
    assert p2c.pick([one]) is one and one.weight == 1
