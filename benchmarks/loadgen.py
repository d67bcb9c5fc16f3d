"""Load for the benchmarks: wrk or hey when installed, else a built-in asyncio client; all bounded.

Two shapes, as Knative's dataplane-probe: *saturation* (``connections`` keep-alive connections, each
sending its next request as soon as the previous answer is in; wrk > hey > built-in) and *fixed rate*
(``rate`` requests per second evenly spaced, whatever the latency: an open loop, so a slow path shows
as latency, not as fewer requests; built-in by default, see :func:`fixed_rate`).
Every run ends after ``duration`` seconds and at most ``max_requests`` requests.
Latency percentiles are in milliseconds; a request that failed or got a status other than 200 counts
as an error.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LoadResult", "available_tools", "fixed_rate", "percentile", "saturation"]

_WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("ZS %d %d %d %.1f %.1f %.1f\\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    tool: str
    requests: int
    errors: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_tools() -> dict[str, str | None]:
    return {"wrk": shutil.which("wrk"), "hey": shutil.which("hey")}


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _result(tool: str, latencies_s: list[float], errors: int, seconds: float) -> LoadResult:
    lat = sorted(latencies_s)
    ok = len(lat)
    return LoadResult(
        tool,
        ok + errors,
        errors,
        round(seconds, 3),
        round(ok / seconds, 1) if seconds > 0 else 0.0,
        round(percentile(lat, 50) * 1000, 3),
        round(percentile(lat, 95) * 1000, 3),
        round(percentile(lat, 99) * 1000, 3),
    )


# -- external tools ----------------------------------------------------------------------------------


def _wrk(port: int, path: str, host: str, connections: int, duration: float) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="zs-wrk-") as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(_WRK_LUA)
        secs = max(1, round(duration))
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "10s", "-s", str(script),
             "-H", f"Host: {host}", f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, timeout=secs + 60, check=False,
        )  # fmt: skip
    for line in out.stdout.splitlines():
        if line.startswith("ZS "):
            n, errors, dur_us, p50, p95, p99 = line.split()[1:]
            seconds = int(dur_us) / 1e6
            good = int(n) - int(errors)
            return LoadResult(
                "wrk", int(n), int(errors), round(seconds, 3), round(good / seconds, 1),
                float(p50) / 1000, float(p95) / 1000, float(p99) / 1000,
            )  # fmt: skip
    raise RuntimeError(f"wrk gave no summary: {out.stdout[-400:]} {out.stderr[-400:]}")


def _hey(port: int, path: str, host: str, workers: int, per_worker_qps: float, duration: float) -> LoadResult:
    secs = max(1, round(duration))
    args = ["hey", "-z", f"{secs}s", "-c", str(workers), "-host", host, "-t", "10", "-o", "csv"]
    if per_worker_qps > 0:
        args += ["-q", f"{per_worker_qps:g}"]
    out = subprocess.run(
        [*args, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=secs + 60,
        check=False,
    )
    latencies: list[float] = []
    errors = 0
    rows = csv.reader(io.StringIO(out.stdout))
    for row in rows:
        if not row or row[0] == "response-time":
            continue
        try:
            latency, status = float(row[0]), int(row[6])
        except (ValueError, IndexError):
            continue
        if status == 200:
            latencies.append(latency)
        else:
            errors += 1
    if not latencies and not errors:
        raise RuntimeError(f"hey gave no results: {out.stderr[-400:]}")
    return _result("hey", latencies, errors, float(secs))


# -- built-in client ---------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection, one request at a time; answers need a Content-Length."""

    def __init__(self, owner: _Client) -> None:
        self.owner = owner
        self.buf = b""
        self.sent_at = 0.0
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        assert self.transport is not None
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(self.owner.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        i = head.find(b"content-length:")
        if i < 0:
            self.fail()
            return
        eol = head.find(b"\r\n", i)
        total = end + 4 + int(head[i + 15 : eol if eol > 0 else None])
        if len(self.buf) < total:
            return
        self.buf = self.buf[total:]
        self.busy = False
        self.owner.done(self, time.perf_counter() - self.sent_at, head.startswith(b"http/1.1 200"))

    def fail(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self)


class _Client:
    def __init__(self, port: int, path: str, host: str, max_requests: int, stop_at: float) -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: zs-bench\r\n\r\n".encode()
        self.latencies: list[float] = []
        self.errors = 0
        self.budget = max_requests
        self.stop_at = stop_at
        self.idle: list[_Conn] = []
        self.open: set[_Conn] = set()
        self.closed_loop = False  # saturation: resend on the same connection at once
        self.finished = asyncio.get_running_loop().create_future()

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
        self.open.add(conn)
        return conn

    def done(self, conn: _Conn, latency: float, ok: bool) -> None:
        if ok:
            self.latencies.append(latency)
        else:
            self.errors += 1
        if self.closed_loop:
            self.next_on(conn)
        else:
            self.idle.append(conn)
            self._check_end()

    def next_on(self, conn: _Conn) -> None:
        if self.budget > 0 and time.perf_counter() < self.stop_at:
            self.budget -= 1
            conn.send()
        else:
            conn.fail()

    def lost(self, conn: _Conn) -> None:
        if conn.busy:
            self.errors += 1
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._check_end()

    def _check_end(self) -> None:
        ended = time.perf_counter() >= self.stop_at or self.budget <= 0
        if ended and not any(c.busy for c in self.open) and not self.finished.done():
            self.finished.set_result(None)


async def _builtin_saturation(
    port: int, path: str, host: str, connections: int, duration: float, max_requests: int
) -> LoadResult:
    t0 = time.perf_counter()
    client = _Client(port, path, host, max_requests, t0 + duration)
    client.closed_loop = True
    conns = [await client.connect() for _ in range(connections)]
    for c in conns:
        client.next_on(c)
    await _wait_all_closed(client, duration + 30)
    return _result("builtin", client.latencies, client.errors, time.perf_counter() - t0)


async def _wait_all_closed(client: _Client, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while client.open and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    for c in list(client.open):
        c.fail()


async def _builtin_fixed(
    port: int, path: str, host: str, rate: float, duration: float, max_connections: int
) -> LoadResult:
    t0 = time.perf_counter()
    client = _Client(port, path, host, int(rate * duration) + 1, t0 + duration)
    sent = 0
    connecting = 0
    missed = 0

    async def fire_on_new() -> None:
        nonlocal connecting
        connecting += 1
        try:
            conn = await client.connect()
        except OSError:
            client.errors += 1
            return
        finally:
            connecting -= 1
        conn.send()

    background: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    while True:
        now = time.perf_counter()
        if now >= client.stop_at:
            break
        due = min(int((now - t0) * rate) + 1, client.budget) - sent
        for _ in range(due):
            sent += 1
            if client.idle:
                client.idle.pop().send()
            elif len(client.open) + connecting < max_connections:
                t = loop.create_task(fire_on_new())
                background.add(t)
                t.add_done_callback(background.discard)
            else:
                missed += 1  # every connection busy: the request is counted as failed
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    deadline = time.perf_counter() + 30
    while any(c.busy for c in client.open) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    for c in list(client.open):
        c.fail()
    return _result("builtin", client.latencies, client.errors + missed, elapsed)


def _run(coro: Any) -> LoadResult:
    try:
        import uvloop

        result: LoadResult = uvloop.run(coro)
    except ImportError:  # pragma: no cover
        result = asyncio.run(coro)
    return result


# -- entry points ------------------------------------------------------------------------------------


def saturation(
    port: int,
    *,
    path: str = "/",
    host: str = "bench",
    connections: int = 50,
    duration: float = 5.0,
    max_requests: int = 5_000_000,
    tool: str = "auto",
) -> LoadResult:
    """``connections`` closed-loop keep-alive connections for ``duration`` s (wrk > hey > built-in)."""
    tools = available_tools()
    if tool in ("auto", "wrk") and tools["wrk"]:
        return _wrk(port, path, host, connections, duration)
    if tool in ("auto", "hey") and tools["hey"]:
        return _hey(port, path, host, connections, 0, duration)
    if tool not in ("auto", "builtin"):
        raise RuntimeError(f"--tool {tool}: not installed")
    return _run(_builtin_saturation(port, path, host, connections, duration, max_requests))


def fixed_rate(
    port: int,
    *,
    path: str = "/slow",
    host: str = "bench",
    rate: float = 1000.0,
    duration: float = 5.0,
    expected_latency: float = 0.1,
    tool: str = "auto",
) -> LoadResult:
    """``rate`` requests per second, evenly spaced, for ``duration`` s.

    The built-in open-loop client sends one request every 1/rate s (as Knative's dataplane-probe does
    with vegeta), whatever the answers do. hey (``tool="hey"``) is available but not the default: its
    per-worker rate limit starts every worker's ticker at the same moment, so the load arrives in
    bursts of as many requests as workers, and the latency it reports is mostly queueing behind the
    burst (a proxy's CPU cost per request times the burst size), not the steady-state latency.
    """
    # enough connections for every request in flight at the expected latency, with room to spare
    workers = max(1, min(2000, math.ceil(rate * expected_latency * 2)))
    if tool == "hey":
        if not available_tools()["hey"]:
            raise RuntimeError("--rate-tool hey: not installed")
        return _hey(port, path, host, workers, rate / workers, duration)
    return _run(_builtin_fixed(port, path, host, rate, duration, max(workers, 64)))
