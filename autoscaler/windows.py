"""Time-bucketed averages of a metric, as Knative's autoscaler keeps them (pure, time passed in).

A window of W seconds with granularity g is a ring of ceil(W / g) buckets; a value recorded at t adds
to the bucket of floor(t / g). Two ways to average the ring:

* :class:`TimedBuckets` (Knative's "linear", the default): the plain mean, but over the seconds the
  series has existed only. Three values of 10 written at t = 0, 1, 2 into a 60 s window average 10.0
  at t = 2, not 0.5. A silence at the end is dropped from both sum and count: data at 0..9 then
  nothing, read at t = 14, averages the 10 seconds that were written.
* :class:`WeightedBuckets` ("weighted-exponential"): newest bucket weight m, the one before m(1-m), ...
  with m = :func:`smoothing_coefficient` of the bucket count; missing recent seconds count as zeros and
  a young series is not normalised, so it starts low.

Both reset when nothing was written for a whole window, drop writes a window older than the newest,
and add late writes inside the window to their own bucket. :class:`MaxTimeWindow` is the sliding
maximum the decider uses to delay scale-downs.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["MaxTimeWindow", "TimedBuckets", "WeightedBuckets", "smoothing_coefficient"]

# Knative: the weights of a weighted window must add up to at least this much...
_WEIGHT_PRECISION = 0.9999
# ...but the coefficient never drops below this, or long windows would decay too slowly to matter.
_MIN_SMOOTHING = 0.2
_PRECISION = 1e6  # linear averages keep 6 decimals, cut (not rounded) as Knative's roundToNDigits


def _cut(avg: float) -> float:
    # The running total is kept by adding and subtracting floats, so a window whose buckets are all
    # zero can come out at -1e-17; cut to 6 decimals that would read -0.000001. Treat float noise as 0.
    if -1e-9 < avg < 0:
        return 0.0
    return math.floor(avg * _PRECISION) / _PRECISION


def smoothing_coefficient(num_buckets: float) -> float:
    """m = max(1 - (1 - 0.9999)^(1/N), 0.2): 60 buckets -> 0.2, 6 buckets -> 0.78456..."""
    if num_buckets <= 0:
        raise ValueError(f"num_buckets must be positive, got {num_buckets}")
    return max(1 - math.pow(1 - _WEIGHT_PRECISION, 1 / num_buckets), _MIN_SMOOTHING)


def _num_buckets(window: float, granularity: float) -> int:
    if granularity <= 0:
        raise ValueError(f"granularity must be positive, got {granularity}")
    if window < granularity:
        raise ValueError(f"window ({window}s) must be at least one granularity ({granularity}s)")
    return math.ceil(window / granularity)


class TimedBuckets:
    """Linear window average over ``window`` seconds in buckets of ``granularity`` seconds."""

    __slots__ = ("_buckets", "_first", "_g", "_last", "_total", "_window")

    def __init__(self, window: float, granularity: float = 1.0) -> None:
        self._g = float(granularity)
        self._window = float(window)
        self._buckets = [0.0] * _num_buckets(window, granularity)
        self._first: int | None = None  # bucket index of the first write since the last reset
        self._last: int | None = None  # bucket index of the newest write
        self._total = 0.0  # sum of the ring, including buckets outside [first, last]

    @property
    def window(self) -> float:
        return self._window

    @property
    def num_buckets(self) -> int:
        return len(self._buckets)

    def _index(self, t: float) -> int:
        return math.floor(t / self._g)

    def record(self, t: float, value: float) -> None:
        idx = self._index(t)
        n = len(self._buckets)
        last = self._last
        if last != idx:
            if last is not None and (idx - last) * self._g + self._window <= 0:
                return  # a window or more older than the newest write: too late to count
            if self._first is None or idx < self._first:
                self._first = idx
            if last is None or idx > last:
                if last is None or (idx - last) * self._g >= self._window:
                    # Silent for a whole window: start over, so the average is of the new data only.
                    self._first = idx
                    self._buckets = [0.0] * n
                    self._total = 0.0
                else:
                    # Zero the seconds skipped since the newest write (and the slot we land on).
                    for i in range(last + 1, idx + 1):
                        self._total -= self._buckets[i % n]
                        self._buckets[i % n] = 0.0
                self._last = idx
            # else: a late write inside the window adds to its own (older) bucket.
        self._buckets[idx % n] += value
        self._total += value

    def is_empty(self, t: float) -> bool:
        """True when nothing was written in the window that ends at ``t``."""
        if self._last is None:
            return True
        return (self._index(t) - self._last) * self._g > self._window

    def window_average(self, t: float) -> float:
        last, first = self._last, self._first
        if last is None or first is None:
            return 0.0
        now = self._index(t)
        n = len(self._buckets)
        d = (now - last) * self._g
        if d <= 0:
            count = min(last - first + 1, n)
            return _cut(self._total / count)
        if d < self._window:
            total = self._total
            for i in range(last + 1, now + 1):
                total -= self._buckets[i % n]
            count = min(last - first + 1, n - (now - last))
            return _cut(total / count)
        return 0.0

    def resize_window(self, window: float, t: float) -> None:
        """Change the window length keeping the newest buckets (Knative's ResizeWindow)."""
        if window == self._window:
            return
        n_new = _num_buckets(window, self._g)
        new = [0.0] * n_new
        total = 0.0
        last = self._last
        if last is not None and not self.is_empty(t):
            n_old = len(self._buckets)
            idx = last
            for _ in range(min(n_new, n_old)):
                new[idx % n_new] = self._buckets[idx % n_old]
                total += self._buckets[idx % n_old]
                idx -= 1
            self._first = last - (n_old - 1)
        else:
            self._first = None
            self._last = None
        self._window = float(window)
        self._buckets = new
        self._total = total


class WeightedBuckets(TimedBuckets):
    """Weighted-exponential window average: recent seconds weigh more (Knative's weightedExponential)."""

    __slots__ = ("_m",)

    def __init__(self, window: float, granularity: float = 1.0) -> None:
        super().__init__(window, granularity)
        self._m = smoothing_coefficient(len(self._buckets))

    @property
    def smoothing(self) -> float:
        return self._m

    def window_average(self, t: float) -> float:
        last = self._last
        if last is None or self.is_empty(t):
            return 0.0
        n = len(self._buckets)
        m = self._m
        count = n
        weight = m
        now = self._index(t)
        if now > last:
            # Each silent second since the newest write is a zero, newest first.
            gap = now - last
            weight *= math.pow(1 - m, gap)
            count -= gap
        out = 0.0
        for i in range(count):
            out += self._buckets[(last - i) % n] * weight
            weight *= 1 - m
        return out

    def resize_window(self, window: float, t: float) -> None:
        super().resize_window(window, t)
        self._m = smoothing_coefficient(len(self._buckets))


class MaxTimeWindow:
    """The largest value recorded in the last ``ceil(duration / granularity)`` slots.

    Slot of t = whole unix seconds // granularity (2 s for the decider's ticks). A value recorded at
    slot i counts until a record at slot j with j - i >= capacity; two records in the same slot keep
    the larger. With a 10 s delay (5 slots), 8 pods recorded at t = 100 hold until t = 110.
    """

    __slots__ = ("_capacity", "_g", "_maxima")

    def __init__(self, duration: float, granularity: float = 2.0) -> None:
        if duration <= 0 or granularity <= 0:
            raise ValueError("duration and granularity must be positive")
        self._capacity = math.ceil(duration / granularity)
        self._g = int(granularity) if float(granularity).is_integer() else granularity
        # Descending values, ascending slots: the front is the maximum of the window.
        self._maxima: deque[tuple[int, int]] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    def _slot(self, t: float) -> int:
        secs = math.floor(t)
        if isinstance(self._g, int):
            q = abs(secs) // self._g  # Go integer division truncates toward zero
            return q if secs >= 0 else -q
        return int(secs / self._g)

    def record(self, t: float, value: int) -> None:
        slot = self._slot(t)
        maxima = self._maxima
        while maxima and maxima[-1][1] <= value:
            maxima.pop()  # smaller and older: can never be the maximum again
        while maxima and slot - maxima[0][0] >= self._capacity:
            maxima.popleft()
        if maxima and maxima[-1][0] == slot:
            value = max(value, maxima.pop()[1])
        maxima.append((slot, value))

    def current(self) -> int:
        return self._maxima[0][1] if self._maxima else 0
