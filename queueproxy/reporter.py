"""What the autoscaler scrapes from a queue-proxy: one ``Stat`` per 1-second period.

Every second the request events recorded in :class:`serving.stats.RequestStats` are folded into a
snapshot: time-weighted average concurrency (all requests and those proxied by the activator) and
requests per second. ``GET :QUEUE_METRICS_PORT/metrics`` answers the latest snapshot as Knative's
protobuf ``Stat`` when the Accept header asks for ``application/protobuf`` (what Knative's autoscaler
sends), and otherwise as Prometheus text with Knative's series names.

protobuf (``serving.stat``) is imported only when a ``Stat`` is first asked for (``tick``, ``latest``,
a protobuf scrape): a scraper that reads Prometheus text never pays its ~25 ms import and its memory,
and the queue-proxy's start-up (on every cold start's path) never does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.clock import Clock, MonotonicClock
from serving.stats import RequestStats

if TYPE_CHECKING:
    from serving.httpserver import Request, Responder
    from serving.stat import Stat

    from .sideports import Route

__all__ = ["StatsReporter", "metrics_routes"]

REPORTING_PERIOD = 1.0

# serving.stat.PROTOBUF_CONTENT_TYPE, spelled here so that negotiating does not import protobuf
# (tests/queueproxy/test_sideports.py checks the two agree).
PROTOBUF_CONTENT_TYPE = "application/protobuf"
_PROTOBUF = PROTOBUF_CONTENT_TYPE.encode()
_PROMETHEUS = CONTENT_TYPE_LATEST.encode()

# (average concurrency, average proxied concurrency, requests/s, proxied requests/s, uptime)
_Numbers = tuple[float, float, float, float, float]


class StatsReporter:
    """Folds request events into a Stat every period; ``tick(now)`` is the whole step, for tests."""

    def __init__(
        self,
        stats: RequestStats,
        *,
        pod_name: str,
        labels: dict[str, str],
        clock: Clock | None = None,
        started_at: float | None = None,
        period: float = REPORTING_PERIOD,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._stats = stats
        self._clock = clock or MonotonicClock()
        self._started_at = self._clock.now() if started_at is None else started_at
        self._period = period
        self._pod_name = pod_name
        self._numbers: _Numbers | None = None  # the last period's, None before the first
        self.registry = registry or CollectorRegistry()
        names = list(labels)
        values = [labels[n] for n in names]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=self.registry).labels(*values)

        self._g_conc = gauge("queue_average_concurrent_requests", "Average in-flight requests per second")
        self._g_rps = gauge("queue_requests_per_second", "Requests per second")
        self._g_pconc = gauge(
            "queue_average_proxied_concurrent_requests",
            "Average in-flight requests that came through the activator",
        )
        self._g_prps = gauge(
            "queue_proxied_operations_per_second", "Requests per second that came through the activator"
        )
        self._g_uptime = gauge("process_uptime", "Seconds since the queue-proxy started")

    def tick(self, now: float | None = None) -> Stat:
        self._fold(now)
        return self.latest

    @property
    def latest(self) -> Stat:
        """The last period's Stat (all zeros but the pod name before the first period ends)."""
        from serving.stat import Stat

        if self._numbers is None:
            return Stat(pod_name=self._pod_name)
        conc, pconc, rps, prps, uptime = self._numbers
        return Stat(
            pod_name=self._pod_name,
            average_concurrent_requests=conc,
            average_proxied_concurrent_requests=pconc,
            request_count=rps,
            proxied_request_count=prps,
            process_uptime=uptime,
        )

    def _fold(self, now: float | None = None) -> None:
        t = self._clock.now() if now is None else now
        r = self._stats.report(t)
        n = self._numbers = (
            r.average_concurrency,
            r.average_proxied_concurrency,
            r.request_count / self._period,
            r.proxied_request_count / self._period,
            t - self._started_at,
        )
        self._g_conc.set(n[0])
        self._g_pconc.set(n[1])
        self._g_rps.set(n[2])
        self._g_prps.set(n[3])
        self._g_uptime.set(n[4])

    async def run(self, ticks: int) -> None:
        for _ in range(ticks):
            await asyncio.sleep(self._period)
            self._fold()

    async def run_forever(self) -> None:
        # Ticks are aligned to the start time so periods do not drift with scheduling delays.
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self._period
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self._period
            self._fold()

    def render_protobuf(self) -> bytes:
        from serving.stat import encode_stat

        return encode_stat(self.latest)

    def render_prometheus(self) -> bytes:
        return generate_latest(self.registry)


def wants_protobuf(accept: str) -> bool:
    return PROTOBUF_CONTENT_TYPE in accept.lower()


def metrics_routes(reporter: StatsReporter) -> dict[str, Route]:
    """The autoscaler-metrics port's path (served by :func:`queueproxy.sideports.serve_side_port`)."""

    async def metrics(request: Request, resp: Responder) -> None:
        accept = request.headers.get(b"accept", b"") or b""
        if wants_protobuf(accept.decode("latin-1")):
            await resp.send(200, reporter.render_protobuf(), content_type=_PROTOBUF)
        else:
            await resp.send(200, reporter.render_prometheus(), content_type=_PROMETHEUS)

    return {"/metrics": metrics}
