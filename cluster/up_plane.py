"""The composition root of ``zeroscale up``: reconciler, gateway, autoscaler, local pods, control API.

Wired in this order: the local runtime runs pods and tells who is ready; the autoscaler (collector +
multiscaler, in this process) scrapes the queue-proxies, takes the gateway's activator stats directly,
and scales through the runtime; the gateway routes with the reconciler's table. Every reconciler
call returns its effects, applied here in a safe order: a new revision is started before a route
names it, the table is swapped in one assignment, and an old revision is stopped only after no
route names it. :class:`UpPlane` is also the control API's ``ControlPlane``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import yaml

from autoscaler.collector import Collector
from autoscaler.config import AutoscalerConfig, from_mapping, resolve
from autoscaler.multiscaler import Decision, MultiScaler
from autoscaler.scraper import PodScraper
from routing.table import RouteTable, TableHolder
from serving.clock import MonotonicClock, SystemClock
from serving.config import Configs, parse_configmaps, parse_configs
from serving.envconfig import env_bool
from serving.errors import ConfigError, SpecError
from serving.spec import Revision, Service, check_local, parse_services
from serving.types import Endpoint, RevisionKey

from .control import ControlServer
from .gateway_app import GatewayApp
from .local import LocalRuntime, PodSettings, PodState, UnknownRevisionError
from .reconciler import Effects, Reconciler

__all__ = ["UpPlane"]

log = logging.getLogger("zeroscale.up")

ROLLOUT_TICK = 0.25  # seconds between rollout checks (Knative steps are whole seconds)
ZYGOTE_WAIT = 3.0  # at most this long does start() wait for the queue-proxy zygote's imports


class _Targets:
    """The runtime as the scraper's ``ScrapeTargets``."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self._runtime = runtime

    def get(self, revision: RevisionKey) -> Sequence[Endpoint]:
        return self._runtime.endpoints(revision)


class _LoggingScaler:
    """The runtime as the autoscaler's ``Scaler``, saying each change of scale in one line."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self._runtime = runtime

    async def scale(self, revision: RevisionKey, desired: int) -> None:
        try:
            before = self._runtime.desired(revision)
        except UnknownRevisionError:
            return  # removed meanwhile
        await self._runtime.scale(revision, desired)
        if before != desired:
            what = "scaled to zero" if desired == 0 else f"scaling {before} -> {desired}"
            log.info("revision %s: %s", revision, what)


class UpPlane:
    def __init__(
        self,
        configs: Configs,
        *,
        maps: dict[str, dict[str, str]] | None = None,
        domain: str | None = None,
    ) -> None:
        self.configs = configs
        self._maps = dict(maps or {})  # the ConfigMaps' data as given: `apply` replaces one map at a time
        self._domain_flag = domain
        self.domain = domain or configs.domain.domain
        self.reconciler = Reconciler(configs.network, self.domain)
        self.holder = TableHolder(self.reconciler.table())
        self.runtime = LocalRuntime(PodSettings())
        self.autoscaler_config: AutoscalerConfig | None = None
        self.multiscaler: MultiScaler | None = None
        self.scraper: PodScraper | None = None
        self.gateway: GatewayApp | None = None
        self.control: ControlServer | None = None
        self.port = 0
        self.admin_port = 0
        self._clock = SystemClock()
        self._unsubscribe: dict[RevisionKey, Any] = {}
        self._ready_count: dict[RevisionKey, int] = {}
        self._panic: dict[RevisionKey, bool] = {}
        self._draining: dict[tuple[str, str], int] = {}  # deleted Services whose pods still drain
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()

    # -- life --------------------------------------------------------------------------------------

    async def start(self, services: Sequence[Service], host: str, port: int, admin_port: int) -> None:
        self.autoscaler_config = from_mapping(self.configs.autoscaler)
        for svc in services:
            self._validate(svc)
        # The queue-proxy zygote imports while the rest starts; start() returns once it is ready (or
        # ZYGOTE_WAIT has passed), so the first cold start after `up` says it serves is not slower.
        zygote = asyncio.get_running_loop().create_task(self.runtime.warm(ZYGOTE_WAIT))
        try:
            self.scraper = PodScraper(_Targets(self.runtime), clock=MonotonicClock())
            collector = Collector(self.scraper, self._clock)
            self.multiscaler = ms = MultiScaler(
                _LoggingScaler(self.runtime), self.runtime, collector, self.autoscaler_config, self._clock
            )
            ms.add_listener(self._on_decision)
            _, fx = self.reconciler.apply(services, _now())
            # ZEROSCALE_FAST_PATH=false: a handler task per request (the queue-proxies read it too)
            fast = env_bool(os.environ, "ZEROSCALE_FAST_PATH", True)
            env_bool(os.environ, "ZEROSCALE_NATIVE", True)  # serving.native reads it; a typo stops here
            self.gateway = GatewayApp(self.holder, self.runtime, ms.send, fast_path=fast)
            self.port = await self.gateway.start(host, port)
            self.control = ControlServer(self, host, admin_port)
            self.admin_port = await self.control.start()
            self._effects(fx)
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(collector.run_forever(), name="autoscaler-scrape"),
                loop.create_task(ms.run_forever(), name="autoscaler-decide"),
                loop.create_task(self._rollouts_forever(), name="rollout-ticks"),
            ]
        except BaseException:
            zygote.cancel()  # the zygote itself is stopped with the runtime
            raise
        await zygote

    async def stop(self, drain_timeout: float) -> None:
        """Stop taking changes, stop scaling, drain requests, stop pods; leaves no child process."""
        if self.control is not None:
            await self.control.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.gateway is not None:
            await self.gateway.shutdown(drain_timeout)
        for task in list(self._background):
            task.cancel()
        await self.close_runtime(drain_timeout)
        if self.scraper is not None:
            await self.scraper.close()

    async def close_runtime(self, timeout: float, *, kill_first: bool = False) -> None:
        """Stop every pod: drained within ``timeout``, or at once with ``kill_first`` (a second Ctrl-C).

        LocalRuntime.close() kills whatever a drain cut short leaves, so nothing outlives this call.
        """
        if kill_first:
            for key in self.runtime.revisions():
                for pod in self.runtime.pods(key):
                    pod.user.kill_now()
                    pod.queue.kill_now()
        await self.runtime.close(timeout=timeout)

    # -- the ControlPlane ------------------------------------------------------------------------

    async def apply(self, text: str, source: str) -> list[dict[str, Any]]:
        kinds = _kinds(text)
        if kinds and all(k == "ConfigMap" for k in kinds):
            return self._apply_configmaps(text, source)
        if "ConfigMap" in kinds:
            raise SpecError(f"{source}: holds both ConfigMaps and Services; apply them as separate files")
        src = Path(source)
        base_dir = src.parent if src.is_absolute() else Path.cwd()
        services = parse_services(text, source, base_dir=base_dir, defaults=self.configs.defaults)
        if not services:
            raise SpecError(f"{source}: no Service document found")
        for svc in services:
            self._validate(svc)
            if self._draining.get((svc.namespace, svc.name)):
                # Its revisions would take the names of the deleted ones, whose pods still drain.
                raise ConfigError(
                    f"{source}, Service {svc.name}: metadata.name: the deleted Service "
                    f"{svc.namespace}/{svc.name} is still draining its pods (requests in flight finish "
                    "first, up to its timeoutSeconds); apply again once they are gone"
                )
        changes, fx = self.reconciler.apply(services, _now())
        self._effects(fx)
        return [
            {
                "namespace": c.namespace,
                "service": c.service,
                "revision": c.revision,
                "created": c.created,
                "message": c.message,
            }
            for c in changes
        ]

    def _apply_configmaps(self, text: str, source: str) -> list[dict[str, Any]]:
        """New config-autoscaler / -network / -domain / -defaults data: checked whole, then swapped in."""
        given = parse_configmaps(text, source)
        maps = {**self._maps, **given}
        configs = parse_configs(maps)
        as_config = from_mapping(configs.autoscaler)
        for svc in self.reconciler.services():
            for rev in self.reconciler.revisions(svc.namespace, svc.name):
                t = rev.template
                try:
                    resolve(as_config, t.annotations, t.container_concurrency)
                except ConfigError as e:
                    raise ConfigError(f"{source}: revision {rev.key} would be invalid: {e}") from None
        domain = self._domain_flag or configs.domain.domain
        if domain != self.domain:
            try:
                RouteTable(self.reconciler.routes(), domain)
            except ValueError as e:
                raise ConfigError(f"{source}: config-domain: {e}") from None
        self._maps, self.configs, self.autoscaler_config = maps, configs, as_config
        self.reconciler.network = configs.network
        if self.multiscaler is not None:
            self.multiscaler.update_config(as_config)
        if domain != self.domain:
            self.domain = self.reconciler.domain = domain
            self.holder.swap(self.reconciler.table())
        out = []
        for name in given:
            msg = f"configmap {name} applied"
            log.info("%s (from %s)", msg, source)
            out.append({"configmap": name, "message": msg})
        return out

    async def delete(self, name: str, namespace: str) -> bool:
        fx = self.reconciler.delete(namespace, name, _now())
        if fx is None:
            return False
        self._effects(fx)
        return True

    def status(self) -> dict[str, Any]:
        from .up_status import service_status

        return {
            "services": [service_status(self, svc) for svc in self.reconciler.services()],
            "gateway": f"http://127.0.0.1:{self.port}",
        }

    # -- effects ----------------------------------------------------------------------------------

    def _validate(self, svc: Service) -> None:
        check_local(svc)
        assert self.autoscaler_config is not None
        t = svc.template
        try:
            resolve(self.autoscaler_config, t.annotations, t.container_concurrency)
        except ConfigError as e:
            raise ConfigError(
                f"{svc.source}, Service {svc.name}: spec.template.metadata.annotations: {e}"
            ) from None

    def _effects(self, fx: Effects) -> None:
        for line in fx.events:
            log.info("%s", line)
        reachable = self.reconciler.reachable()
        added = {r.key for r in fx.added}
        for rev in fx.added:
            self._start_revision(rev, rev.key in reachable)
        ms = self.multiscaler
        for key, reach in fx.reachable.items():
            known = self.reconciler.revision(key)
            if key not in added and known is not None and ms is not None:
                t = known.template
                ms.upsert(key, t.annotations, t.container_concurrency, reachable=reach)
        if fx.routes_changed:
            self.holder.swap(self.reconciler.table())
        for rev in fx.removed:
            self._stop_revision(rev)
        if fx.routes_changed:
            self._effects(self.reconciler.tick(_now()))  # a rollout's first 1 % is served now

    def _start_revision(self, rev: Revision, reachable: bool) -> None:
        key, t = rev.key, rev.template
        assert self.multiscaler is not None and self.gateway is not None
        self.runtime.add_revision(rev)
        self.gateway.add_revision(
            key,
            t.container_concurrency,
            timeout_seconds=t.timeout_seconds,
            response_start_timeout_seconds=t.response_start_timeout_seconds or None,
            idle_timeout_seconds=t.idle_timeout_seconds,
            protocol=t.container.protocol,
        )
        self._unsubscribe[key] = self.runtime.subscribe(key, functools.partial(self._on_endpoints, key))
        scaling = self.multiscaler.upsert(
            key, t.annotations, t.container_concurrency, reachable=reachable, created=True
        )
        if scaling.initial_scale == 0:  # allow-zero-initial-scale: ready with no pod, the activator holds
            self._effects(self.reconciler.revision_ready(key, _now()))
        self._spawn(self.multiscaler.decide(key, self._clock.now()))  # start pods now, not at the next tick

    def _stop_revision(self, rev: Revision) -> None:
        key = rev.key
        unsubscribe = self._unsubscribe.pop(key, None)
        if unsubscribe is not None:
            unsubscribe()
        if self.multiscaler is not None:
            self.multiscaler.remove(key)
        if self.scraper is not None:
            self.scraper.forget(key)
        self._ready_count.pop(key, None)
        self._panic.pop(key, None)

        sk = (rev.namespace, rev.service)
        self._draining[sk] = self._draining.get(sk, 0) + 1

        async def drain() -> None:
            try:
                await self.runtime.remove_revision(key)
                if self.gateway is not None:
                    await self.gateway.remove_revision(key)
                log.info("revision %s: removed", key)
            finally:
                left = self._draining[sk] - 1
                if left:
                    self._draining[sk] = left
                else:
                    del self._draining[sk]

        self._spawn(drain())

    def _on_endpoints(self, key: RevisionKey, endpoints: Sequence[Endpoint]) -> None:
        ready = sum(1 for e in endpoints if e.ready and not e.terminating)
        if self._ready_count.get(key, 0) != ready:
            self._ready_count[key] = ready
            log.info("revision %s: %d pod%s ready", key, ready, "" if ready == 1 else "s")
        if ready and not self.reconciler.is_ready(key):
            self._effects(self.reconciler.revision_ready(key, _now()))

    def _on_decision(self, d: Decision) -> None:
        if self.gateway is not None:
            self.gateway.set_activator_in_path(d.revision, d.activator_in_path)
        was = self._panic.get(d.revision, False)
        if d.in_panic != was:
            self._panic[d.revision] = d.in_panic
            value = d.observed_panic if d.in_panic else d.observed_stable
            obs = "-" if value is None else f"{value:.1f}"
            state = "on" if d.in_panic else "off"
            log.info(
                "revision %s: panic mode %s (concurrency %s, target %g per pod)",
                d.revision,
                state,
                obs,
                d.target,
            )

    async def _rollouts_forever(self) -> None:
        while True:
            await asyncio.sleep(ROLLOUT_TICK)
            try:
                self._effects(self.reconciler.tick(_now()))
            except Exception:
                log.exception("rollout tick failed")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- for status ---------------------------------------------------------------------------------

    def pod_counts(self, key: RevisionKey) -> tuple[int | None, int, int]:
        """(desired, ready, all) pods of a revision."""
        try:
            desired: int | None = self.runtime.desired(key)
        except UnknownRevisionError:
            desired = None
        pods = self.runtime.pods(key)
        return desired, sum(1 for p in pods if p.state is PodState.READY), len(pods)


def _kinds(text: str) -> list[str]:
    """The ``kind`` of each document (YAML errors are left to the parser that reports them well)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return []
    return [str(d.get("kind")) if isinstance(d, dict) else "" for d in docs if d is not None]


def _now() -> float:
    return time.monotonic()
