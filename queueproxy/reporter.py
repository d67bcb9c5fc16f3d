"""What the autoscaler scrapes from a queue-proxy: one ``Stat`` per 1-second period.

Every second the request events recorded in :class:`serving.stats.RequestStats` are folded into a
snapshot: time-weighted average concurrency (all requests and those proxied by the activator) and
requests per second. ``GET :QUEUE_METRICS_PORT/metrics`` answers the latest snapshot as Knative's
protobuf ``Stat`` when the Accept header asks for ``application/protobuf`` (what Knative's autoscaler
sends), and otherwise as Prometheus text with Knative's series names.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.clock import Clock, MonotonicClock
from serving.stat import PROTOBUF_CONTENT_TYPE, Stat, encode_stat
from serving.stats import RequestStats

__all__ = ["StatsReporter", "metrics_app"]

REPORTING_PERIOD = 1.0


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
        self.latest = Stat(pod_name=pod_name)
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
        t = self._clock.now() if now is None else now
        r = self._stats.report(t)
        stat = Stat(
            pod_name=self._pod_name,
            average_concurrent_requests=r.average_concurrency,
            average_proxied_concurrent_requests=r.average_proxied_concurrency,
            request_count=r.request_count / self._period,
            proxied_request_count=r.proxied_request_count / self._period,
            process_uptime=t - self._started_at,
        )
        self.latest = stat
        self._g_conc.set(stat.average_concurrent_requests)
        self._g_rps.set(stat.request_count)
        self._g_pconc.set(stat.average_proxied_concurrent_requests)
        self._g_prps.set(stat.proxied_request_count)
        self._g_uptime.set(stat.process_uptime)
        return stat

    async def run(self, ticks: int) -> None:
        for _ in range(ticks):
            await asyncio.sleep(self._period)
            self.tick()

    async def run_forever(self) -> None:
        # Ticks are aligned to the start time so periods do not drift with scheduling delays.
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self._period
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self._period
            self.tick()

    def render_protobuf(self) -> bytes:
        return encode_stat(self.latest)

    def render_prometheus(self) -> bytes:
        return generate_latest(self.registry)


def wants_protobuf(accept: str) -> bool:
    return PROTOBUF_CONTENT_TYPE in accept.lower()


def metrics_app(reporter: StatsReporter) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        if wants_protobuf(request.headers.get("Accept", "")):
            return web.Response(body=reporter.render_protobuf(), content_type=PROTOBUF_CONTENT_TYPE)
        body = reporter.render_prometheus()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
