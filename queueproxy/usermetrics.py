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

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["DURATION_BUCKETS", "UserMetrics", "user_metrics_app"]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_IDENTITY = ("k8s_namespace_name", "kn_service_name", "kn_configuration_name", "kn_revision_name")


class UserMetrics:
    __slots__ = ("_by_code", "_depth", "_duration", "_identity", "registry")

    def __init__(
        self, registry: CollectorRegistry, *, namespace: str, service: str, configuration: str, revision: str
    ) -> None:
        self.registry = registry
        self._identity = (namespace, service, configuration, revision)
        self._duration = Histogram(
            "kn_serving_invocation_duration_seconds",
            "Time from the request's arrival at the queue-proxy to the end of its response",
            [*_IDENTITY, "http_response_status_code"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._depth = Gauge(
            "kn_serving_queue_depth",
            "Requests waiting for or holding a breaker slot, seen at the last request's arrival",
            list(_IDENTITY),
            registry=registry,
        ).labels(*self._identity)
        # One labelled child per status code, found once: labels() costs a few microseconds per call.
        self._by_code: dict[int, Any] = {}

    def observe(self, status: int, seconds: float) -> None:
        child = self._by_code.get(status)
        if child is None:
            child = self._duration.labels(*self._identity, str(status))
            self._by_code[status] = child
        child.observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def user_metrics_app(metrics: UserMetrics) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/metrics", handle)
    app.router.add_get("/", handle)
    return app
