"""A bounded load client that remembers every request: id, status, body, when it left and when it ended.

``Load(port, host, path_fn, workers=...)`` runs ``workers`` keep-alive connections on 127.0.0.1, each
sending one request after the other (``path_fn(id)`` gives the target of request ``id``) until
``stop()``, ``max_seconds`` or ``max_requests``. ``resize(n)`` changes how many workers send (the load
changes without a restart). Every request ends as exactly one ``Result``: an HTTP status, or the name
of what went wrong (``timeout`` when no answer came within ``request_timeout``, ``closed`` when the
connection ended without one). ``sent == len(results)`` after ``stop()``: nothing is left uncounted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cluster.up_load import HttpConn
from tests.util import until

__all__ = ["Load", "RawWebsocket", "Result"]

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Result:
    id: int
    status: int | str
    body: bytes
    start: float
    end: float


class Load:
    def __init__(
        self,
        port: int,
        host: str,
        path_fn: Callable[[int], str],
        *,
        workers: int,
        max_seconds: float = 60.0,
        max_requests: int = 100_000,
        request_timeout: float = 20.0,
        think: Callable[[], float] | None = None,
        method: str = "GET",
    ) -> None:
        self.method = method  # anything but GET is sent with an empty body (Content-Length: 0)
        self.port, self.host, self.path_fn = port, host, path_fn
        self.active = workers
        self.max_seconds, self.max_requests, self.request_timeout = max_seconds, max_requests, request_timeout
        self.think = think  # seconds a worker pauses after each answer (the load's shape)
        self.results: list[Result] = []
        self.sent = 0
        self._next_id = 0
        self._stop = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._started = 0.0

    @property
    def statuses(self) -> Counter[int | str]:
        return Counter(r.status for r in self.results)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status != 200]

    def start(self) -> None:
        self._started = time.monotonic()
        self.resize(self.active)

    def resize(self, workers: int) -> None:
        self.active = workers
        for i in range(workers):
            if i not in self._tasks or self._tasks[i].done():
                self._tasks[i] = asyncio.get_running_loop().create_task(self._worker(i))

    async def _worker(self, index: int) -> None:
        conn = HttpConn(self.port)
        try:
            while (
                index < self.active
                and not self._stop.is_set()
                and time.monotonic() - self._started < self.max_seconds
                and self.sent < self.max_requests
            ):
                rid = self._next_id
                self._next_id += 1
                self.sent += 1
                t0 = time.monotonic()
                status: int | str
                body = b""
                try:
                    async with asyncio.timeout(self.request_timeout):
                        status, body = await conn.get(self.host, self.path_fn(rid), self.method)
                except TimeoutError:
                    status = "timeout"
                    await conn.close()
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    status = "closed" if isinstance(e, asyncio.IncompleteReadError) else type(e).__name__
                    await conn.close()
                self.results.append(Result(rid, status, body, t0, time.monotonic()))
                if self.think is not None:
                    await asyncio.sleep(self.think())
        finally:
            await conn.close()

    async def more(self, n: int, timeout: float = 30.0) -> None:
        """Return once ``n`` more requests ended than when called (fail after ``timeout`` s)."""
        target = len(self.results) + n
        await until(lambda: len(self.results) >= target, timeout=timeout, what=f"{n} more answers")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks.values())

    def summary(self) -> str:
        elapsed = max((r.end for r in self.results), default=self._started) - self._started
        rate = len(self.results) / elapsed if elapsed > 0 else 0.0
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items(), key=str))
        return f"{len(self.results)} requests in {elapsed:.1f} s ({rate:.0f}/s): {codes}"


class RawWebsocket:
    """A minimal websocket client on a raw connection, so the test chooses every header (Host included)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str, path: str = "/ws") -> RawWebsocket:
        reader, writer = await asyncio.open_connection(HOST, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            raise ConnectionError(f"no upgrade: {head[:200]!r}")
        return cls(reader, writer)

    async def _frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        self.writer.write(struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked)
        await self.writer.drain()

    async def echo(self, text: str) -> str:
        await self._frame(1, text.encode())
        _, b1 = await self.reader.readexactly(2)
        data = await self.reader.readexactly(b1 & 0x7F)
        return data.decode()

    async def close(self) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await self._frame(8, struct.pack("!H", 1000))
            await self.reader.readexactly(2)
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
