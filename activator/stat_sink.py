"""The activator's stat stream to the autoscaler: a reconnecting websocket of binary WireStatMessages.

Knative's transport: one durable websocket to ``ws://autoscaler.<ns>.svc.<domain>:8080``, each batch a
binary message (protobuf ``WireStatMessages``). ``send`` never blocks the request path: batches wait in a
bounded queue (oldest dropped when full; stats are only useful fresh) while the connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import aiohttp

from serving.stat import WireStat, encode_wire_stats

__all__ = ["WebsocketSink"]

log = logging.getLogger("zeroscale.activator.stat_sink")


class WebsocketSink:
    def __init__(
        self,
        url: str,
        *,
        max_batches: int = 64,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        self.url = url
        self._queue: deque[bytes] = deque(maxlen=max_batches)
        self._wake = asyncio.Event()
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.sent = 0
        self.dropped = 0
        self.errors = 0

    def send(self, stats: list[WireStat]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(encode_wire_stats(stats))
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = self._retry_min
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.ws_connect(self.url, heartbeat=10.0) as ws:
                        self.connected = True
                        delay = self._retry_min
                        log.info("stat stream to %s connected", self.url)
                        await self._pump(ws)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.errors += 1
                    log.warning("stat stream to %s: %s; retrying in %.1fs", self.url, e, delay)
                finally:
                    self.connected = False
                await asyncio.sleep(delay)
                delay = min(self._retry_max, delay * 2)

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reader = asyncio.ensure_future(self._read_until_closed(ws))  # notices a close by the peer
        try:
            while not reader.done():
                while self._queue:
                    await ws.send_bytes(self._queue[0])
                    self._queue.popleft()
                    self.sent += 1
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    @staticmethod
    async def _read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            pass
