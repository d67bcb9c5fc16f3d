"""The activator binary's parts: configuration from Knative's env, the standalone handler, the process life.

Standalone (Knative's topology, an ingress in front): the revision comes from the
``Knative-Serving-Namespace``/``Knative-Serving-Revision`` headers the ingress set, else from a Host
``<revision>.<namespace>.svc.<domain>``. Kubelet probes get 200 (500 once draining or while the stat
stream is down); ``K-Network-Probe: activator`` gets 200 ``activator``. The gateway composition
(``cluster.gateway_app``) reuses the configuration, the admin side port and the life cycle here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.envconfig import env_bool, env_float, env_int, env_port, env_str
from serving.headers import (
    K_KUBELET_PROBE,
    K_NETWORK_HASH,
    K_NETWORK_PROBE,
    KUBE_PROBE_UA,
    SERVING_NAMESPACE,
    SERVING_REVISION,
)
from serving.httpserver import Request, Responder
from serving.types import RevisionKey

from .handler import Activator
from .throttler import QUEUE_DEPTH

__all__ = [
    "ActivatorConfig",
    "StandaloneHandler",
    "admin_app",
    "revision_from_request",
    "run_until_signal",
]

log = logging.getLogger("zeroscale.activator")

HealthFn = Callable[[], tuple[bool, str]]


@dataclass(frozen=True, slots=True)
class ActivatorConfig:
    pod_name: str
    pod_ip: str
    host: str
    port: int
    h2c_port: int  # 0: none
    admin_port: int
    autoscaler_url: str
    drain_timeout: float
    queue_depth: int
    domain: str
    fast_path: bool = True  # ZEROSCALE_FAST_PATH: the engine's callback-only path for simple GETs
    native: bool = True  # ZEROSCALE_NATIVE (serving.native reads it at import; checked here for typos)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, local: bool = False) -> ActivatorConfig:
        """Knative's names where it has them (POD_NAME, POD_IP); ours otherwise. ``local``: loopback
        defaults, no drain pause, no autoscaler stream unless AUTOSCALER_URL is set."""
        ns = env.get("SYSTEM_NAMESPACE") or "knative-serving"
        default_url = "" if local else f"ws://zeroscale-autoscaler.{ns}.svc.cluster.local:8080/"
        return cls(
            pod_name=env_str(env, "POD_NAME", "activator-local" if local else None),
            pod_ip=env_str(env, "POD_IP", "127.0.0.1" if local else None),
            host=env_str(env, "ACTIVATOR_HOST", "127.0.0.1" if local else "0.0.0.0"),
            port=env_port(env, "ACTIVATOR_PORT", 8012),
            h2c_port=env_port(env, "ACTIVATOR_H2C_PORT", 0 if local else 8013),
            admin_port=env_port(env, "ACTIVATOR_METRICS_PORT", 9090),
            autoscaler_url=env.get("AUTOSCALER_URL", default_url),
            # Knative sleeps 45 s (DefaultDrainTimeout) after SIGTERM so load balancers notice.
            drain_timeout=env_float(env, "DRAIN_TIMEOUT_SECONDS", 0.0 if local else 45.0, minimum=0.0),
            queue_depth=env_int(env, "ACTIVATOR_QUEUE_DEPTH", QUEUE_DEPTH, minimum=1),
            domain=env_str(env, "CLUSTER_DOMAIN", "cluster.local"),
            fast_path=env_bool(env, "ZEROSCALE_FAST_PATH", True),
            native=env_bool(env, "ZEROSCALE_NATIVE", True),
        )


def revision_from_request(req: Request, cluster_domain: str = "cluster.local") -> RevisionKey | None:
    ns = req.headers.get(SERVING_NAMESPACE)
    name = req.headers.get(SERVING_REVISION)
    if ns and name:
        return RevisionKey(ns.decode("latin-1"), name.decode("latin-1"))
    host = req.host.decode("latin-1").lower().rsplit(":", 1)[0] if req.host else ""
    suffix = f".svc.{cluster_domain}"
    if host.endswith(suffix):
        parts = host[: -len(suffix)].split(".")
        if len(parts) == 2 and all(parts):
            return RevisionKey(parts[1], parts[0])
    return None


def is_kubelet_probe(req: Request) -> bool:
    ua = req.headers.get(b"user-agent", b"") or b""
    return ua.startswith(KUBE_PROBE_UA) or K_KUBELET_PROBE in req.headers


class StandaloneHandler:
    """The activator on its own, behind an ingress that names the revision in headers."""

    def __init__(self, activator: Activator, health: HealthFn, cluster_domain: str = "cluster.local") -> None:
        self.activator = activator
        self.health = health
        self.domain = cluster_domain

    async def __call__(self, req: Request, resp: Responder) -> None:
        if is_kubelet_probe(req):
            ok, why = self.health()
            await resp.send(200 if ok else 500, why)
            return
        probe = req.headers.get(K_NETWORK_PROBE)
        if probe:
            if probe == b"activator":
                await resp.send(200, b"activator")
            elif probe == b"probe":
                h = req.headers.get(K_NETWORK_HASH)
                if not h:
                    await resp.send(400, b"no K-Network-Hash provided")
                else:
                    await resp.send(200, h, headers=[(K_NETWORK_HASH, h)])
            else:
                await resp.send(400, b"unexpected probe header value: " + probe)
            return
        key = revision_from_request(req, self.domain)
        if key is None:
            await resp.send(404, b"Error getting active endpoint: no revision in headers or host\n")
            return
        headers = [(n, v) for n, v in req.headers.items if n != K_NETWORK_HASH]
        await self.activator.dispatch(key, req, resp, headers)


def admin_app(health: HealthFn, registry: CollectorRegistry) -> web.Application:
    """The side port: ``/healthz`` (200, or 500 with the reason) and Prometheus ``/metrics``."""

    async def healthz(_: web.Request) -> web.Response:
        ok, why = health()
        return web.Response(status=200 if ok else 500, text=why)

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def run_until_signal(
    begin_drain: Callable[[], None],
    shutdown: Callable[[float], Awaitable[None]],
    *,
    drain_timeout: float,
    shutdown_timeout: float = 300.0,
) -> None:
    """Wait for SIGTERM/SIGINT; then fail health, keep serving ``drain_timeout`` s, shut down."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("signal received: draining (health fails now, exit in at most %.0f s)", drain_timeout)
        begin_drain()
        if drain_timeout > 0:
            await asyncio.sleep(drain_timeout)  # let load balancers see the failing health first
        await shutdown(shutdown_timeout)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
