"""A small bounded HTTP/1.1 load client on asyncio streams (for the demo when ``hey`` is missing, and tests).

``workers`` keep-alive connections each send GETs one after the other until ``max_seconds`` pass or
``max_requests`` were sent, whichever comes first. It parses just what it needs (status line,
Content-Length or chunked bodies, Connection: close), reads bodies in bounded chunks and drops them,
and counts answers by status (transport errors by name). Loopback only by design: the host is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

__all__ = ["HttpConn", "LoadClient", "get_once"]

HOST = "127.0.0.1"
_CHUNK = 65536
_MAX_HEAD = 65536
_LATENCIES_KEPT = 100_000


class HttpConn:
    """One keep-alive HTTP/1.1 client connection on raw streams (no client library normalises anything)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def get(self, host: str, path: str, method: str = "GET") -> tuple[int, bytes]:
        """One request (anything but GET with an empty body); returns (status, first 4 KiB of the body).
        Reconnects when needed."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=_MAX_HEAD)
        assert self.reader is not None
        framing = "" if method == "GET" else "Content-Length: 0\r\n"
        request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: zeroscale-load\r\n{framing}\r\n"
        self.writer.write(request.encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        body = bytearray()
        if fields.get("transfer-encoding", "") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._trailers()
                    break
                await self._body(size, body)
                await self.reader.readexactly(2)
        elif "content-length" in fields:
            await self._body(int(fields["content-length"]), body)
        else:
            while chunk := await self.reader.read(_CHUNK):
                if len(body) < 4096:
                    body += chunk[: 4096 - len(body)]
            await self.close()
        if fields.get("connection") == "close":
            await self.close()
        return status, bytes(body)

    async def _body(self, size: int, into: bytearray) -> None:
        assert self.reader is not None
        while size > 0:
            chunk = await self.reader.read(min(size, _CHUNK))
            if not chunk:
                raise ConnectionResetError("connection closed in the middle of a body")
            size -= len(chunk)
            if len(into) < 4096:
                into += chunk[: 4096 - len(into)]

    async def _trailers(self) -> None:
        assert self.reader is not None
        while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
            pass


async def get_once(port: int, host: str, path: str = "/", timeout: float = 60.0) -> tuple[int, bytes]:
    conn = HttpConn(port)
    try:
        async with asyncio.timeout(timeout):
            return await conn.get(host, path)
    finally:
        await conn.close()


class LoadClient:
    def __init__(
        self,
        port: int,
        host: str,
        path: str,
        *,
        workers: int,
        max_seconds: float,
        max_requests: int = 1_000_000,
        request_timeout: float = 30.0,
    ) -> None:
        if workers < 1 or max_seconds <= 0:
            raise ValueError("workers must be >= 1 and max_seconds > 0")
        self.port, self.host, self.path = port, host, path
        self.workers, self.max_seconds, self.max_requests = workers, max_seconds, max_requests
        self.request_timeout = request_timeout
        self.statuses: Counter[int | str] = Counter()
        self.bodies: Counter[bytes] = Counter()  # first line of each body, for "who answered"
        self.latencies: list[float] = []
        self.started = 0.0
        self.elapsed = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200)

    def start(self) -> None:
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def _worker(self) -> None:
        conn = HttpConn(self.port)
        deadline = self.started + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline and self.sent < self.max_requests:
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(self.request_timeout):
                        status, body = await conn.get(self.host, self.path)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    self.statuses[type(e).__name__] += 1
                    await conn.close()
                    continue
                except TimeoutError:
                    self.statuses["timeout"] += 1
                    await conn.close()
                    continue
                self.statuses[status] += 1
                self.bodies[body.split(b"\n", 1)[0]] += 1
                if len(self.latencies) < _LATENCIES_KEPT:
                    self.latencies.append(time.monotonic() - t0)
        finally:
            await conn.close()

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks)
        self.elapsed = time.monotonic() - self.started

    async def stop(self) -> None:
        self._stop.set()
        await self.wait()

    def summary(self) -> str:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

        rate = self.sent / self.elapsed if self.elapsed else 0.0
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items(), key=str))
        return (
            f"{self.sent} requests in {self.elapsed:.1f} s ({rate:.0f}/s) from {self.workers} clients; "
            f"status {codes}; latency p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms"
        )
