"""Weighted choice of a revision for each request, with the randomness injected (pure).

Independent draws would put a 34 % target anywhere from 33 % to 35 % over 10,000 requests (two
standard deviations), and much further off over 100. So the picker deals from a shuffled deck instead:
weights reduced by their common divisor (40/60 -> 2/3) fill a deck of 5 cards that is reshuffled with
the injected ``random.Random`` each time it runs out. The order stays unpredictable, and after any
number of whole decks each share is exact: over 10,000 requests every target is within a point.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Generic, TypeVar

__all__ = ["WeightedPicker"]

T = TypeVar("T")

_MAX_DECK = 10_000  # weights are percentages in practice; bound the deck for arbitrary weights


class WeightedPicker(Generic[T]):
    """Deals ``items`` in proportion to their weights. Not shared across threads (asyncio: fine)."""

    __slots__ = ("_deck", "_items", "_next", "_rng", "_weights")

    def __init__(self, choices: Sequence[tuple[T, int]], rng: random.Random | None = None) -> None:
        items: list[T] = []
        weights: list[int] = []
        for item, weight in choices:
            if weight < 0:
                raise ValueError(f"weight of {item!r} must be >= 0, got {weight}")
            if weight > 0:  # 0 % gets nothing
                items.append(item)
                weights.append(weight)
        if not items:
            raise ValueError("at least one choice needs a weight > 0")
        g = math.gcd(*weights)
        weights = [w // g for w in weights]
        total = sum(weights)
        if total > _MAX_DECK:
            # Scale down (keeping every target at least one card); shares then stay within 1/_MAX_DECK.
            weights = [max(1, w * _MAX_DECK // total) for w in weights]
        self._items = tuple(items)
        self._weights = tuple(weights)
        self._rng = rng or random.Random()
        self._deck: list[T] = [item for item, w in zip(items, weights, strict=True) for _ in range(w)]
        self._next = len(self._deck)  # shuffle before the first deal

    @property
    def items(self) -> tuple[T, ...]:
        return self._items

    @property
    def deck_size(self) -> int:
        return len(self._deck)

    def pick(self) -> T:
        deck = self._deck
        if len(deck) == 1:
            return deck[0]
        if self._next >= len(deck):
            self._rng.shuffle(deck)
            self._next = 0
        item = deck[self._next]
        self._next += 1
        return item
