"""Request metrics for the user, served in Prometheus format on ``USER_METRICS_PORT`` (Knative 9091).

Knative's queue-proxy exports two OpenTelemetry instruments there; these are their Prometheus
translations (dots become underscores, the unit becomes a suffix):

* ``kn_serving_invocation_duration_seconds`` - histogram of request latency by
  ``http_response_status_code``, with Knative's bucket bounds (5 ms ... 10 s). Its ``_count`` series
  is the request count by response code.
* ``kn_serving_queue_depth`` - gauge of the breaker's in-flight requests (waiting plus executing) seen
  at the last request's arrival; only moves when ``CONTAINER_CONCURRENCY`` >= 1.

Every series carries Knative's resource attributes as labels: ``k8s_namespace_name``,
``kn_service_name``, ``kn_configuration_name``, ``kn_revision_name``. Probes are never recorded.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from serving.httpserver import Request, Responder

    from .sideports import Route

__all__ = ["DURATION_BUCKETS", "UserMetrics", "user_metrics_routes"]

_CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_IDENTITY = ["k8s_namespace_name", "kn_service_name", "kn_configuration_name", "kn_revision_name"]


class UserMetrics:
    """Counts kept in plain lists on the request path and turned into metric families at scrape time.

    prometheus-client's own Histogram takes a lock and walks the buckets on every observation
    (microseconds per request); here an observation is one bisect and two additions. Everything runs
    on the event loop's thread, so no lock is needed.
    """

    __slots__ = ("_counts", "_depth", "_identity", "_sums", "registry")

    def __init__(
        self, registry: CollectorRegistry, *, namespace: str, service: str, configuration: str, revision: str
    ) -> None:
        self.registry = registry
        self._identity = [namespace, service, configuration, revision]
        self._counts: dict[int, list[int]] = {}  # status -> per-bucket counts, the last one is +Inf
        self._sums: dict[int, float] = {}
        self._depth = 0
        registry.register(self)

    def observe(self, status: int, seconds: float) -> None:
        counts = self._counts.get(status)
        if counts is None:
            counts = self._counts[status] = [0] * (len(DURATION_BUCKETS) + 1)
            self._sums[status] = 0.0
        counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._sums[status] += seconds

    def queue_depth(self, depth: int) -> None:
        self._depth = depth

    def collect(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "kn_serving_invocation_duration_seconds",
            "Time from the request's arrival at the queue-proxy to the end of its response",
            labels=[*_IDENTITY, "http_response_status_code"],
        )
        for status in sorted(self._counts):
            cumulative = 0
            buckets = []
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), self._counts[status], strict=True):
                cumulative += n
                buckets.append((_bound(bound), float(cumulative)))
            hist.add_metric([*self._identity, str(status)], buckets, self._sums[status])
        yield hist
        depth = GaugeMetricFamily(
            "kn_serving_queue_depth",
            "Requests waiting for or holding a breaker slot, seen at the last request's arrival",
            labels=_IDENTITY,
        )
        depth.add_metric(self._identity, float(self._depth))
        yield depth

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


def user_metrics_routes(metrics: UserMetrics) -> dict[str, Route]:
    """The user-metrics port's paths (served by :func:`queueproxy.sideports.serve_side_port`)."""

    async def handle(request: Request, resp: Responder) -> None:
        await resp.send(200, metrics.render(), content_type=_CONTENT_TYPE)

    return {"/metrics": handle, "/": handle}
