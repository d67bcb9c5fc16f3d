"""The gateway and the activator in one process: what ``zeroscale up`` and the Kubernetes deployment run.

The chain on the main port, outermost first: kubelet health probes (200, or 500 once draining) ->
:class:`routing.gateway.Gateway` (Host/tag -> route -> revision; unknown host 404; internal headers
dropped) -> the dispatcher below -> :class:`activator.handler.Activator` (count, time out, hold until a
pod has room, forward) or, when the autoscaler has taken the activator out of the revision's path,
straight to a healthy pod. A small aiohttp side port serves ``/healthz`` and Prometheus ``/metrics``.
SIGTERM: health fails at once, in-flight requests finish (up to the drain timeout), then exit.

Drop-in for ``cluster.up_gateway.LocalGateway``: same constructor and revision calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from activator.app import ActivatorConfig, admin_app, is_kubelet_probe, run_until_signal
from activator.backends import EndpointBoard, EndpointSource, Prober
from activator.handler import Activator, RevisionSettings
from activator.reporter import CallbackSink, ConcurrencyReporter, StatSink
from activator.stat_sink import WebsocketSink
from activator.throttler import QUEUE_DEPTH
from routing.gateway import Gateway
from routing.table import RouteSpec, RouteTable, TableHolder
from routing.traffic import flatten, parse_traffic
from serving import native
from serving.errors import ConfigError, SpecError
from serving.gcpolicy import freeze_after_start
from serving.h2server import AutoServer, serve_auto
from serving.httpserver import FastRequest, Request, Responder
from serving.logs import setup_logging
from serving.stat import WireStat
from serving.timeouts import RequestTimeouts
from serving.types import Endpoint, RevisionKey

__all__ = [
    "FileBackend",
    "GatewayApp",
    "apply_snapshot",
    "main",
    "parse_routes_configmap",
    "parse_routes_file",
]

log = logging.getLogger("zeroscale.gateway")


class _Dispatch:
    """Per revision: through the activator (proxy mode, the default) or straight to a pod (serve)."""

    def __init__(self, activator: Activator) -> None:
        self.activator = activator
        self.direct: set[RevisionKey] = set()

    async def dispatch(
        self, revision: RevisionKey, req: Request, resp: Responder, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        if revision in self.direct:
            await self.activator.forward_direct(revision, req, resp, headers)
        else:
            await self.activator.dispatch(revision, req, resp, headers)

    def dispatch_fast(
        self,
        revision: RevisionKey,
        req: Request,
        resp: Responder,
        headers: Sequence[tuple[bytes, bytes]],
        marker: FastRequest,
    ) -> bool | Awaitable[None]:
        if revision in self.direct:
            return self.activator.forward_direct_fast(revision, req, resp, headers, marker)
        return self.activator.dispatch_fast(revision, req, resp, headers, marker)


class GatewayApp:
    def __init__(
        self,
        holder: TableHolder,
        source: EndpointSource,
        send_stats: Callable[[list[WireStat]], None] | StatSink,
        *,
        pod_name: str = "activator-local",
        registry: CollectorRegistry | None = None,
        prober: Prober | None = None,
        queue_depth: int = QUEUE_DEPTH,
        stats_connected: Callable[[], bool] | None = None,
        fast_path: bool = True,
    ) -> None:
        self.holder = holder
        sink: StatSink = CallbackSink(send_stats) if callable(send_stats) else send_stats
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reporter = ConcurrencyReporter(pod_name, sink)
        self.activator = Activator(
            source, self.reporter, registry=self.registry, prober=prober, queue_depth=queue_depth
        )
        self._dispatch = _Dispatch(self.activator)
        self.gateway = Gateway(holder, self._dispatch)
        self._stats_connected = stats_connected
        self.fast_path = fast_path  # the engine's callback-only path for simple GETs (ZEROSCALE_FAST_PATH)
        self.draining = False
        self.routes_loaded = True
        self.server: AutoServer | None = None
        self.h2c_server: AutoServer | None = None
        self.port = 0
        self.admin_port = 0
        self._admin: web.AppRunner | None = None
        self._reporter_task: asyncio.Task[None] | None = None

    # -- revisions (the LocalGateway interface) --------------------------------------------------
    def add_revision(
        self,
        key: RevisionKey,
        container_concurrency: int = 0,
        *,
        timeout_seconds: float = 300.0,
        response_start_timeout_seconds: float | None = None,
        idle_timeout_seconds: float = 0.0,
        protocol: str = "http1",
    ) -> None:
        rs = timeout_seconds if response_start_timeout_seconds is None else response_start_timeout_seconds
        timeouts = RequestTimeouts(timeout_seconds, rs, idle_timeout_seconds)
        self.activator.add_revision(key, RevisionSettings(container_concurrency, timeouts, protocol))

    async def remove_revision(self, key: RevisionKey) -> None:
        self._dispatch.direct.discard(key)
        await self.activator.remove_revision(key)

    def set_activator_in_path(self, key: RevisionKey, in_path: bool) -> None:
        if in_path:
            self._dispatch.direct.discard(key)
        elif self.activator.has_revision(key):
            self._dispatch.direct.add(key)

    def activator_in_path(self, key: RevisionKey) -> bool:
        return key not in self._dispatch.direct or not self.activator.healthy(key)

    def set_activators(self, count: int, index: int) -> None:
        self.activator.set_activators(count, index)

    def report(self) -> list[WireStat]:
        return self.reporter.report()

    # -- health ------------------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.routes_loaded:
            return False, "routes not loaded yet"
        if self._stats_connected is not None and not self._stats_connected():
            return False, "stat stream to the autoscaler is not connected"
        return True, "ok"

    async def handle(self, req: Request, resp: Responder) -> None:
        if is_kubelet_probe(req):
            ok, why = self.health()
            await resp.send(200 if ok else 500, why)
            return
        await self.gateway(req, resp)

    def fast(self, req: Request, resp: Responder, marker: FastRequest) -> bool | Awaitable[None]:
        """handle() in the engine's callbacks for the common request; False: handle() takes it."""
        if is_kubelet_probe(req):
            return False
        return self.gateway.fast(req, resp, marker)

    # -- life --------------------------------------------------------------------------------------
    async def start(
        self,
        host: str,
        port: int,
        *,
        admin_host: str | None = None,
        admin_port: int | None = None,
        h2c_port: int | None = None,
    ) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port. ``admin_port`` None: no side port."""
        self.server = await serve_auto(self.handle, host, port)  # HTTP/1.1 and h2c, as Knative's
        self.port = self.server.port
        if h2c_port is not None:  # Knative's activator also listens on 8013 (same handler, same protocols)
            self.h2c_server = await serve_auto(self.handle, host, h2c_port)
        if self.fast_path:
            for server in (self.server, self.h2c_server):
                if server is not None:
                    server.http.fast = self.fast
        if admin_port is not None:
            runner = web.AppRunner(admin_app(self.health, self.registry), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, admin_host or host, admin_port)
            await site.start()
            self._admin = runner
            sockets = getattr(site._server, "sockets", None) or ()
            self.admin_port = int(sockets[0].getsockname()[1]) if sockets else admin_port
        self._reporter_task = asyncio.get_running_loop().create_task(self.reporter.run_forever())
        return self.port

    def begin_drain(self) -> None:
        self.draining = True

    async def shutdown(self, timeout: float) -> None:
        self.draining = True
        servers = [s for s in (self.server, self.h2c_server) if s is not None]
        await asyncio.gather(*(s.shutdown(timeout) for s in servers))
        if self._reporter_task is not None:
            self._reporter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter_task
        await self.activator.close()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None


# -- where routes, revisions and pods come from ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevisionEntry:
    key: RevisionKey
    settings: dict[str, Any]  # add_revision keyword arguments
    endpoints: tuple[Endpoint, ...] | None  # None: the backend's EndpointSource knows them


@dataclass(frozen=True, slots=True)
class Snapshot:
    table: RouteTable
    revisions: dict[RevisionKey, RevisionEntry]


def _num(d: Mapping[str, Any], key: str, where: str, default: float, *, integer: bool = False) -> Any:
    v = d.get(key, default)
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok or v < 0:
        kind = "a whole number >= 0" if integer else "a number >= 0"
        raise SpecError(f"{where}.{key}: expected {kind}, got {v!r}")
    return v


def _revision_entry(r: Any, where: str, with_endpoints: bool) -> RevisionEntry:
    if not isinstance(r, Mapping) or not isinstance(r.get("name"), str) or not r["name"]:
        raise SpecError(f"{where}: expected a mapping with a name")
    key = RevisionKey(str(r.get("namespace") or "default"), r["name"])
    settings = {
        "container_concurrency": _num(r, "containerConcurrency", where, 0, integer=True),
        "timeout_seconds": _num(r, "timeoutSeconds", where, 300),
        "response_start_timeout_seconds": _num(
            r, "responseStartTimeoutSeconds", where, r.get("timeoutSeconds") or 300
        ),
        "idle_timeout_seconds": _num(r, "idleTimeoutSeconds", where, 0),
        "protocol": r.get("protocol") or "http1",
    }
    if settings["protocol"] not in ("http1", "h2c"):
        raise SpecError(f"{where}.protocol: expected http1 or h2c, got {settings['protocol']!r}")
    eps: tuple[Endpoint, ...] | None = None
    if with_endpoints:
        out = []
        for j, e in enumerate(r.get("endpoints") or []):
            ew = f"{where}.endpoints[{j}]"
            if not isinstance(e, Mapping) or not isinstance(e.get("port"), int):
                raise SpecError(f"{ew}: expected a mapping with host and an integer port")
            out.append(
                Endpoint(
                    str(e.get("pod") or f"{key.name}-{j}"),
                    str(e.get("host") or "127.0.0.1"),
                    e["port"],
                    ready=bool(e.get("ready", True)),
                    terminating=bool(e.get("terminating", False)),
                )
            )
        eps = tuple(out)
    return RevisionEntry(key, settings, eps)


def build_snapshot(
    services: list[tuple[str, str, Any, str | None]],
    revisions: list[RevisionEntry],
    domain: str,
    where: str,
) -> Snapshot:
    """``services``: (name, namespace, raw spec.traffic, latest ready revision) per Service."""
    revs = {r.key: r for r in revisions}
    specs = []
    for i, (name, ns, traffic, latest) in enumerate(services):
        known = {k.name for k in revs if k.namespace == ns}
        path = f"{where}[{i}] ({ns}/{name}).traffic"
        flat = flatten(parse_traffic(traffic, path), revisions=known, latest_ready=latest, path=path)
        specs.append(RouteSpec(name, ns, flat))
    try:
        table = RouteTable(specs, domain=domain)
    except ValueError as e:
        raise SpecError(f"{where}: {e}") from None
    return Snapshot(table, revs)


def parse_routes_file(text: str, default_domain: str = "example.com") -> Snapshot:
    """The ``file`` backend's document (YAML or JSON)::

    domain: example.com
    services:   [{name, namespace, latestRevision, traffic: <Knative spec.traffic>}]
    revisions:  [{name, namespace, containerConcurrency, timeoutSeconds, responseStartTimeoutSeconds,
                  idleTimeoutSeconds, endpoints: [{pod, host, port, ready, terminating}]}]
    """
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, Mapping):
        raise SpecError("routes file: expected a mapping with services and revisions")
    revisions = [
        _revision_entry(r, f"revisions[{i}]", True) for i, r in enumerate(doc.get("revisions") or [])
    ]
    services = []
    for i, s in enumerate(doc.get("services") or []):
        if not isinstance(s, Mapping) or not isinstance(s.get("name"), str):
            raise SpecError(f"services[{i}]: expected a mapping with a name")
        latest = s.get("latestRevision")
        services.append((s["name"], str(s.get("namespace") or "default"), s.get("traffic"), latest))
    return build_snapshot(services, revisions, str(doc.get("domain") or default_domain), "services")


def parse_routes_configmap(data: Mapping[str, str], domain: str) -> Snapshot:
    """The Kubernetes backend's ``zeroscale-routes`` ConfigMap: Service documents + revisions.json."""
    records = json.loads(data.get("revisions.json") or "[]")
    revisions = [_revision_entry(r, f"revisions.json[{i}]", False) for i, r in enumerate(records)]
    services = []
    for i, d in enumerate(yaml.safe_load_all(data.get("services.yaml") or "")):
        if not isinstance(d, Mapping):
            continue
        meta, spec = d.get("metadata") or {}, d.get("spec") or {}
        if not isinstance(meta.get("name"), str):
            raise SpecError(f"services.yaml document {i}: metadata.name is missing")
        ns = str(meta.get("namespace") or "default")
        latest = ((spec.get("template") or {}).get("metadata") or {}).get("name")
        services.append((meta["name"], ns, spec.get("traffic"), latest))
        # A revision named in traffic but not rendered now must already run: route to it with defaults.
        for t in spec.get("traffic") or []:
            name = t.get("revisionName") if isinstance(t, Mapping) else None
            if name and RevisionKey(ns, name) not in {r.key for r in revisions}:
                revisions.append(RevisionEntry(RevisionKey(ns, name), {}, None))
    return build_snapshot(services, revisions, domain, "services.yaml")


async def apply_snapshot(app: GatewayApp, snap: Snapshot, board: EndpointBoard | None) -> None:
    """Revisions first (so a new route never points at an unknown revision), then the table, then drop."""
    for key, entry in snap.revisions.items():
        app.add_revision(key, **entry.settings)
        if board is not None and entry.endpoints is not None:
            board.publish(key, entry.endpoints)
    app.holder.swap(snap.table)
    for key in app.activator.revisions():
        if key not in snap.revisions:
            if board is not None:
                board.forget(key)
            await app.remove_revision(key)


class FileBackend:
    """Routes, revisions and pods from one file, re-read when it changes (tests, hand-run gateways)."""

    def __init__(self, path: str, interval: float = 0.05) -> None:
        self.path = Path(path)
        self.interval = interval
        self.endpoints = EndpointBoard()
        self._seen: tuple[int, int] | None = None

    async def load(self, app: GatewayApp) -> bool:
        try:
            st = self.path.stat()
        except OSError as e:
            raise ConfigError(f"--config {self.path}: {e.strerror}") from None
        sig = (st.st_mtime_ns, st.st_size)
        if sig == self._seen:
            return False
        self._seen = sig
        snap = parse_routes_file(self.path.read_text())
        await apply_snapshot(app, snap, self.endpoints)
        return True

    async def run(self, app: GatewayApp) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if await self.load(app):
                    log.info("routes reloaded from %s", self.path)
            except (SpecError, ConfigError, yaml.YAMLError) as e:
                log.error("routes file %s not applied: %s", self.path, e)


# -- the binary ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="activator", description="zeroscale gateway + activator")
    p.add_argument("--backend", choices=["file", "kubernetes"], default="file")
    p.add_argument("--config", help="file backend: routes/revisions/endpoints document (YAML or JSON)")
    p.add_argument("--host", help="listen address (env ACTIVATOR_HOST)")
    p.add_argument("--port", type=int, help="request port (env ACTIVATOR_PORT, default 8012)")
    p.add_argument("--admin-port", type=int, help="/healthz and /metrics (env ACTIVATOR_METRICS_PORT, 9090)")
    p.add_argument("--domain", help="kubernetes backend: route domain (default svc.cluster.local)")
    return p


async def _amain(args: argparse.Namespace, cfg: ActivatorConfig) -> None:
    url = cfg.autoscaler_url
    kb = None
    if args.backend == "kubernetes":
        from cluster.k8s_activator import make_backend

        kb = make_backend(os.environ)
        if not os.environ.get("AUTOSCALER_URL"):
            url = kb.autoscaler_url  # the autoscaler Service in the system namespace
    sink: WebsocketSink | None = WebsocketSink(url) if url else None
    send: Callable[[list[WireStat]], None] | StatSink = sink if sink is not None else (lambda _stats: None)
    holder = TableHolder()
    tasks: list[asyncio.Task[Any]] = []
    loop = asyncio.get_running_loop()
    if args.backend == "file":
        if not args.config:
            raise ConfigError("--config is required with --backend file")
        fb = FileBackend(args.config)
        app = GatewayApp(
            holder,
            fb.endpoints,
            send,
            pod_name=cfg.pod_name,
            queue_depth=cfg.queue_depth,
            fast_path=cfg.fast_path,
        )
        await fb.load(app)
        tasks.append(loop.create_task(fb.run(app)))
    else:
        assert kb is not None
        app = GatewayApp(
            holder,
            kb.endpoints,
            send,
            pod_name=cfg.pod_name,
            queue_depth=cfg.queue_depth,
            stats_connected=(lambda: sink.connected) if sink is not None else None,
            fast_path=cfg.fast_path,
        )
        domain = args.domain or "svc.cluster.local"

        async def on_config(name: str, data: Mapping[str, str] | None) -> None:
            if name == "zeroscale-routes" and data is not None:
                try:
                    snap = parse_routes_configmap(data, domain)
                    await apply_snapshot(app, snap, None)
                except (SpecError, ValueError, yaml.YAMLError) as e:
                    log.error("ConfigMap zeroscale-routes not applied: %s", e)
                    return
                app.routes_loaded = True
                hosts = ", ".join(snap.table.hosts()) or "none"
                log.info("routes from ConfigMap zeroscale-routes: %s", hosts)

        app.routes_loaded = False  # not ready before the routes were read once
        kb.add_config_listener(on_config)
        kb.peers.subscribe(app.set_activators)
        tasks.append(loop.create_task(kb.run()))
    if sink is not None:
        sink.start()
    await app.start(cfg.host, cfg.port, admin_port=cfg.admin_port, h2c_port=cfg.h2c_port or None)
    freeze_after_start()
    port, admin = app.port, app.admin_port
    log.info("gateway+activator on %s:%d, admin on %d; %s", cfg.host, port, admin, native.status())
    try:
        await run_until_signal(app.begin_drain, app.shutdown, drain_timeout=cfg.drain_timeout)
    finally:
        for t in tasks:
            t.cancel()
        if sink is not None:
            await sink.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging("activator")
    env = dict(os.environ)
    if args.host:
        env["ACTIVATOR_HOST"] = args.host
    if args.port is not None:
        env["ACTIVATOR_PORT"] = str(args.port)
    if args.admin_port is not None:
        env["ACTIVATOR_METRICS_PORT"] = str(args.admin_port)
    try:
        cfg = ActivatorConfig.from_env(env, local=args.backend == "file")
        import uvloop

        uvloop.run(_amain(args, cfg))
    except (ConfigError, SpecError) as e:
        print(f"activator: {e}", file=sys.stderr)
        return 2
    return 0
