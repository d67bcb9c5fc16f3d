"""The autoscaler's composition root: windows + scraper -> collector -> multiscaler -> scaler, and servers.

Wired in this order: the scraper reads pods from the ``ScrapeTargets`` backend; the collector keeps
every revision's windows; the multiscaler decides every 2 s and asks the ``Scaler`` backend; the
metrics listener and any other listener see each decision; the stat server feeds activator stats
into the multiscaler. The backends (local processes or Kubernetes) are plugged in by ``cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from serving.clock import Clock, MonotonicClock, SystemClock
from serving.errors import ConfigError

from .collector import Collector
from .config import AutoscalerConfig, defaults, from_mapping
from .metrics import AutoscalerMetrics
from .multiscaler import ActivatorProbe, MultiScaler, ReadyPodCounter, Scaler
from .scraper import SCRAPE_TIMEOUT, PodScraper, ScrapeTargets
from .server import metrics_app, stat_app

__all__ = ["AutoscalerApp", "AutoscalerSettings", "Backend", "load_config_file"]

log = logging.getLogger("zeroscale.autoscaler")


@dataclass(frozen=True, slots=True)
class AutoscalerSettings:
    host: str = "0.0.0.0"
    stat_port: int = 8080  # Knative: the activators' websocket
    metrics_port: int = 9090  # Knative: the autoscaler's Prometheus port; -1 = not served
    scrape_timeout: float = SCRAPE_TIMEOUT


class Backend(Protocol):
    """Where pods come from (local processes, Kubernetes): what ``cluster`` hands the binary.

    It may also carry ``probe`` (an :class:`ActivatorProbe`) to confirm the activator before the last
    pod of a revision goes.
    """

    scaler: Scaler
    pods: ReadyPodCounter
    targets: ScrapeTargets

    async def run(self, app: AutoscalerApp) -> None:
        """Keep caches current and register revisions (app.multiscaler.upsert/remove) until cancelled."""
        ...


def load_config_file(path: str | Path) -> AutoscalerConfig:
    """config-autoscaler from YAML: a ConfigMap (its ``data``) or a plain key: value mapping."""
    p = Path(path)
    try:
        doc: Any = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not YAML: {e}") from None
    if doc is None:
        return defaults()
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{p}: expected a ConfigMap or a mapping of config-autoscaler keys")
    data = doc.get("data", {}) if doc.get("kind") == "ConfigMap" else doc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: data: expected a mapping of config-autoscaler keys")
    try:
        return from_mapping(
            {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in data.items()}
        )
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


class AutoscalerApp:
    def __init__(
        self,
        *,
        scaler: Scaler,
        pods: ReadyPodCounter,
        targets: ScrapeTargets,
        config: AutoscalerConfig | None = None,
        settings: AutoscalerSettings | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
        probe: ActivatorProbe | None = None,
    ) -> None:
        self.settings = settings or AutoscalerSettings()
        # Unix time: activator stats carry unix-second timestamps and land in the same buckets.
        self.clock = clock or SystemClock()
        self.registry = registry or CollectorRegistry()
        self.scraper = PodScraper(
            targets, clock=MonotonicClock(), rng=rng, timeout=self.settings.scrape_timeout
        )
        self.collector = Collector(self.scraper, self.clock)
        self.multiscaler = MultiScaler(
            scaler, pods, self.collector, config or defaults(), self.clock, probe=probe
        )
        self.metrics = AutoscalerMetrics(self.registry)
        self.multiscaler.add_listener(self.metrics.observe)
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.stat_port = 0
        self.metrics_port = 0

    def remove(self, revision: Any) -> None:
        """Stop scaling a revision and drop its series."""
        self.multiscaler.remove(revision)
        self.scraper.forget(revision)
        self.metrics.forget(revision)

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.settings.host, port)
        await site.start()
        return int(runner.addresses[-1][1])

    async def start(self) -> None:
        s = self.settings
        self.stat_port = await self._serve(stat_app(self.multiscaler), s.stat_port)
        if s.metrics_port >= 0:
            self.metrics_port = await self._serve(metrics_app(self.registry), s.metrics_port)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.collector.run_forever(), name="autoscaler-scrape"),
            loop.create_task(self.multiscaler.run_forever(), name="autoscaler-decide"),
        ]
        log.info("autoscaler: stats on %s:%d, metrics on %d", s.host, self.stat_port, self.metrics_port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners = []
        await self.scraper.close()
