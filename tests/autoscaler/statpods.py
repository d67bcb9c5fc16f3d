"""Tiny real HTTP servers on 127.0.0.1 that answer /metrics with an encoded Stat, like queue-proxies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from serving.stat import PROTOBUF_CONTENT_TYPE, Stat, encode_stat
from serving.types import Endpoint


class StatPod:
    def __init__(self, name: str, stat: Stat) -> None:
        self.name = name
        self.stat = stat
        self.status = 200
        self.content_type = PROTOBUF_CONTENT_TYPE
        self.stall = False  # answer only when stopped: a pod that hangs
        self._release = asyncio.Event()
        self.hits = 0
        self.accept: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.accept.append(request.headers.get("Accept", ""))
        if self.stall:
            await self._release.wait()
        return web.Response(status=self.status, body=encode_stat(self.stat), content_type=self.content_type)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, "127.0.0.1", 8012, metrics_port=self.port)


@asynccontextmanager
async def stat_pods(stats: list[Stat]) -> AsyncIterator[list[StatPod]]:
    pods = [StatPod(s.pod_name or f"pod-{i}", s) for i, s in enumerate(stats)]
    try:
        for p in pods:
            await p.start()
        yield pods
    finally:
        for p in pods:
            await p.stop()
