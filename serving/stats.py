"""Time-weighted in-flight and request-count accounting, shared by queue-proxy and activator.

Every request gives an *in* event on arrival and an *out* event when it is done; between events the
current concurrency is integrated over time. Two 500 ms requests, one after the other, in a 1 s
period average 1.0; ten requests in flight for the whole period average 10.0. Requests marked
``K-Proxy-Request: activator`` are also counted apart as *proxied*, so the autoscaler can subtract
what the activator already reported.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestStats", "StatsReport"]


@dataclass(frozen=True, slots=True)
class StatsReport:
    average_concurrency: float
    average_proxied_concurrency: float
    request_count: float
    proxied_request_count: float


class RequestStats:
    __slots__ = (
        "_computed",
        "_computed_proxied",
        "_last_change",
        "_seconds",
        "concurrency",
        "proxied_concurrency",
        "proxied_request_count",
        "request_count",
    )

    def __init__(self, now: float) -> None:
        self._last_change = now
        self._seconds = 0.0
        self._computed = 0.0
        self._computed_proxied = 0.0
        self.concurrency = 0
        self.proxied_concurrency = 0
        self.request_count = 0
        self.proxied_request_count = 0

    def _advance(self, now: float) -> None:
        dt = now - self._last_change
        if dt > 0:
            self._seconds += dt
            self._computed += self.concurrency * dt
            self._computed_proxied += self.proxied_concurrency * dt
            self._last_change = now

    def request_in(self, now: float, proxied: bool = False) -> None:
        self._advance(now)
        self.request_count += 1
        self.concurrency += 1
        if proxied:
            self.proxied_request_count += 1
            self.proxied_concurrency += 1

    def request_out(self, now: float, proxied: bool = False) -> None:
        self._advance(now)
        self.concurrency -= 1
        if proxied:
            self.proxied_concurrency -= 1

    def report(self, now: float) -> StatsReport:
        """Averages over the period since the last report; counters restart, concurrency is kept."""
        self._advance(now)
        seconds = self._seconds
        avg = self._computed / seconds if seconds > 0 else 0.0
        avg_proxied = self._computed_proxied / seconds if seconds > 0 else 0.0
        out = StatsReport(avg, avg_proxied, float(self.request_count), float(self.proxied_request_count))
        self._seconds = 0.0
        self._computed = 0.0
        self._computed_proxied = 0.0
        self.request_count = 0
        self.proxied_request_count = 0
        return out
