"""The queue-proxy's composition root: config -> parts -> four listeners -> drain -> exit.

The serving port runs on the kernel's HTTP engine (asyncio protocols + httptools on uvloop) and takes
HTTP/1.1, h2c with prior knowledge and the ``Upgrade: h2c`` switch on the same port, as Knative's does;
toward the user container it speaks HTTP/1.1, or h2c when the revision's port is named ``h2c``
(QueueProxyConfig.user_protocol). The admin, autoscaler-metrics and user-metrics ports are tiny
path routers on the same engine (queueproxy.sideports), not aiohttp: a queue-proxy starts with every
pod, so its imports are on each cold start's critical path. The h2c upstream pool is imported only
for an h2c revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from serving import native
from serving.breaker import Breaker
from serving.clock import MonotonicClock
from serving.drain import Drainer
from serving.errors import ConfigError
from serving.gcpolicy import freeze_after_start
from serving.h2server import AutoServer, serve_auto
from serving.httpserver import HttpServer
from serving.logs import setup_logging
from serving.stats import RequestStats
from serving.timeouts import RequestTimeouts
from serving.upstream import Upstream

from .admin import DrainControl, admin_routes
from .config import QueueProxyConfig
from .handler import QueueHandler
from .health import H2cAttempt, Readiness
from .reporter import StatsReporter, metrics_routes
from .sideports import serve_side_port
from .usermetrics import UserMetrics, user_metrics_routes

if TYPE_CHECKING:
    from serving.h2upstream import H2Upstream

__all__ = ["QueueProxy", "run"]

log = logging.getLogger("queueproxy")

# Knative's largest revision timeout: the drain's cap when the revision sets none.
MAX_REVISION_TIMEOUT = 600.0
# How long stop() lets a side port's running handlers (a /wait-for-drain just answering) finish.
SIDE_PORT_SHUTDOWN = 5.0


class QueueProxy:
    def __init__(self, cfg: QueueProxyConfig) -> None:
        self.cfg = cfg
        clock = MonotonicClock()
        # 1. what the request path shares with the reporters
        self.stats = RequestStats(clock.now())
        self.drain = DrainControl(
            Drainer(cfg.drain_quiet_period, cfg.revision_timeout or MAX_REVISION_TIMEOUT, clock)
        )
        cc = cfg.container_concurrency
        self.breaker = Breaker(queue_depth=10 * cc, max_concurrency=cc) if cc >= 1 else None
        # 2. the request path's pools to the user container: keep-alive HTTP/1.1 (Knative keeps cc idle
        #    connections, or 1000 when cc is 0), and for an h2c container multiplexed h2c connections
        #    (at most cc streams each, 100 when cc is 0; the breaker admits cc at once anyway)
        self.upstream = Upstream("127.0.0.1", cfg.user_port, max_idle=cc or 1000)
        self.h2_upstream: H2Upstream | None = None
        self.h2_probes: H2cAttempt | None = None
        if cfg.h2c:
            from serving.h2upstream import H2Upstream

            self.h2_upstream = H2Upstream("127.0.0.1", cfg.user_port, max_streams_per_connection=cc or 100)
            self.h2_probes = H2cAttempt(self.h2_upstream)
        self.readiness = Readiness(cfg.readiness_probes, cfg.user_port, attempt=self.h2_probes)
        self.user_metrics = UserMetrics(
            CollectorRegistry(),
            namespace=cfg.namespace,
            service=cfg.service,
            configuration=cfg.configuration,
            revision=cfg.revision,
        )
        self.reporter = StatsReporter(
            self.stats,
            pod_name=cfg.pod,
            clock=clock,
            labels={
                "destination_namespace": cfg.namespace,
                "destination_configuration": cfg.configuration,
                "destination_revision": cfg.revision,
                "destination_pod": cfg.pod,
            },
        )
        # 3. the request path: the handler in front of the pools
        self.handler = QueueHandler(
            upstream=self.upstream,
            stats=self.stats,
            drain=self.drain,
            readiness=self.readiness,
            breaker=self.breaker,
            metrics=self.user_metrics,
            timeouts=RequestTimeouts(cfg.revision_timeout, cfg.response_start_timeout, cfg.idle_timeout),
            h2_upstream=self.h2_upstream,
        )
        self.server: AutoServer | None = None
        self._side_servers: list[HttpServer] = []
        self._reporter_task: asyncio.Task[None] | None = None
        self._terminated = asyncio.Event()

    async def start(self) -> None:
        cfg = self.cfg
        # 4. side ports first, so a scraper or preStop hook never finds them missing once serving
        for routes, port in (
            (admin_routes(self.drain), cfg.admin_port),
            (metrics_routes(self.reporter), cfg.metrics_port),
            (user_metrics_routes(self.user_metrics), cfg.user_metrics_port),
        ):
            self._side_servers.append(await serve_side_port(routes, cfg.bind_address, port))
        self._reporter_task = asyncio.get_running_loop().create_task(self.reporter.run_forever())
        # 5. the serving port: HTTP/1.1 and h2c
        self.server = await serve_auto(self.handler, cfg.bind_address, cfg.serving_port)
        if cfg.fast_path:
            self.server.http.fast = self.handler.fast
        log.info(
            "serving on %s:%d -> %s 127.0.0.1:%d (cc=%d, timeout=%.0fs); "
            "admin %d, metrics %d, user metrics %d; %s",
            cfg.bind_address,
            self.server.port,
            cfg.user_protocol,
            cfg.user_port,
            cfg.container_concurrency,
            cfg.revision_timeout,
            cfg.admin_port,
            cfg.metrics_port,
            cfg.user_metrics_port,
            native.status(),
        )

    def terminate(self) -> None:
        self.drain.terminate()
        self._terminated.set()

    async def run_until_drained(self) -> None:
        await self._terminated.wait()
        await self.drain.wait_drained()
        log.info("drained (%d in flight); shutting down", self.drain.drainer.in_flight)

    async def stop(self) -> None:
        # 6. ordered shutdown: serving port, then the side ports (a pending /wait-for-drain answers
        #    first), then the upstream pools (h2c connections close once their streams have ended)
        if self.server is not None:
            await self.server.shutdown(timeout=1.0)
        for side in reversed(self._side_servers):
            await side.shutdown(timeout=SIDE_PORT_SHUTDOWN)
        if self._reporter_task is not None:
            self._reporter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter_task
        await self.readiness.close()
        if self.h2_probes is not None:
            await self.h2_probes.close()
        if self.h2_upstream is not None:
            await self.h2_upstream.close()
        await self.upstream.close()


async def _amain(cfg: QueueProxyConfig) -> int:
    qp = QueueProxy(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qp.terminate)
    try:
        try:
            await qp.start()
        except OSError as e:
            log.error("cannot listen: %s", e)
            return 1
        freeze_after_start()
        await qp.run_until_drained()
    finally:
        await qp.stop()
    return 0


def run(env: Mapping[str, str]) -> int:
    try:
        cfg = QueueProxyConfig.from_env(env)
    except ConfigError as e:
        print(f"queue-proxy: {e}", file=sys.stderr)
        return 2
    setup_logging(
        "queue-proxy",
        extra={"knative.dev/key": f"{cfg.namespace}/{cfg.revision}", "knative.dev/pod": cfg.pod},
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
        return asyncio.run(_amain(cfg))
    return uvloop.run(_amain(cfg))
