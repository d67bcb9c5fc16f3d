from __future__ import annotations

import random
from collections import Counter

import pytest

from routing.picker import WeightedPicker


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param({"a": 40, "b": 60}, id="40-60"),
        pytest.param({"a": 1, "b": 99}, id="1-99"),
        pytest.param({"a": 10, "b": 20, "c": 30, "d": 40}, id="four-way"),
        pytest.param({"a": 33, "b": 33, "c": 34}, id="thirds"),
        pytest.param({"a": 7, "b": 93}, id="7-93"),
    ],
)
@pytest.mark.parametrize("seed", [1, 7, 2026, 31337])
def test_shares_within_one_point_over_10000_picks(weights: dict[str, int], seed: int) -> None:
    picker = WeightedPicker(list(weights.items()), random.Random(seed))
    counts = Counter(picker.pick() for _ in range(10_000))
    total = sum(weights.values())
    for name, w in weights.items():
        share = 100 * counts[name] / 10_000
        assert abs(share - 100 * w / total) <= 1.0, (name, share)


def test_any_window_is_close_even_mid_deck() -> None:
    picker = WeightedPicker([("a", 40), ("b", 60)], random.Random(11))
    assert picker.deck_size == 5  # 2 + 3 after the common divisor
    picks = [picker.pick() for _ in range(1003)]
    assert abs(picks.count("a") - 0.4 * 1003) <= 2


def test_order_is_random_not_alternating() -> None:
    picker = WeightedPicker([("a", 50), ("b", 50)], random.Random(2))
    picks = "".join(picker.pick() for _ in range(200))
    assert "aa" in picks and "bb" in picks  # a plain round robin would never repeat
    assert picks != "ab" * 100 and picks != "ba" * 100


def test_zero_weight_never_picked() -> None:
    picker = WeightedPicker([("a", 0), ("b", 100), ("c", 0)], random.Random(3))
    assert {picker.pick() for _ in range(1000)} == {"b"}
    assert picker.items == ("b",)


def test_huge_weights_are_scaled_into_a_bounded_deck() -> None:
    picker = WeightedPicker([("a", 1), ("b", 10**9)], random.Random(3))
    assert picker.deck_size <= 10_001
    assert "a" in {picker.pick() for _ in range(picker.deck_size)}


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        pytest.param([], "at least one choice", id="empty"),
        pytest.param([("a", 0)], "at least one choice", id="all-zero"),
        pytest.param([("a", -1), ("b", 101)], "weight of 'a' must be >= 0", id="negative"),
    ],
)
def test_bad_weights(choices: list[tuple[str, int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightedPicker(choices)


def test_same_seed_same_sequence() -> None:
    def seq() -> list[str]:
        p = WeightedPicker([("a", 30), ("b", 70)], random.Random(5))
        return [p.pick() for _ in range(50)]

    assert seq() == seq()
