"""The autoscaler's HTTP side: the activators' stat websocket and Prometheus ``/metrics``.

Stat intake (Knative: port 8080): a websocket on ``/``; every binary message is a protobuf
``WireStatMessages`` handed to the intake (:meth:`MultiScaler.send`). A message that does not decode is
logged and skipped; the connection stays. ``/healthz`` answers 200 for probes.
Metrics (Knative: port 9090): ``/metrics`` renders the injected registry.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.stat import WireStat, decode_wire_stats

__all__ = ["MAX_MESSAGE_BYTES", "StatIntake", "metrics_app", "stat_app"]

log = logging.getLogger("zeroscale.autoscaler.server")

MAX_MESSAGE_BYTES = 1 << 20  # a batch of a few thousand revisions' stats; bounds a bad peer


class StatIntake(Protocol):
    def send(self, stats: list[WireStat]) -> None: ...


class _Counters:
    __slots__ = ("bad_messages", "connections", "messages")

    def __init__(self) -> None:
        self.connections = 0
        self.messages = 0
        self.bad_messages = 0


COUNTERS = web.AppKey("counters", _Counters)


def stat_app(intake: StatIntake) -> web.Application:
    counters = _Counters()

    async def root(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            return web.Response(text="zeroscale autoscaler: stat websocket on this path\n")
        await ws.prepare(request)
        counters.connections += 1
        peer = request.remote
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    try:
                        stats = decode_wire_stats(msg.data)
                    except ValueError as e:
                        counters.bad_messages += 1
                        log.warning("stat message from %s skipped: %s", peer, e)
                        continue
                    counters.messages += 1
                    intake.send(stats)
                elif msg.type == WSMsgType.ERROR:
                    log.warning("stat websocket from %s failed: %s", peer, ws.exception())
                    break
                # text messages carry nothing for us: ignored
        finally:
            counters.connections -= 1
        return ws

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app[COUNTERS] = counters
    app.router.add_get("/", root)
    app.router.add_get("/healthz", healthz)
    return app


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
