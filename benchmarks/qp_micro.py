"""Micro-benchmark of the queue-proxy's hot path: a real queue-proxy process in front of a trivial upstream.

    .venv/bin/python benchmarks/qp_micro.py [--connections 32] [--duration 5] [--cc 0] [--baseline] [--json]
    .venv/bin/python benchmarks/qp_micro.py --handler-only


The upstream is a minimal asyncio server in its own process that answers every request with a fixed
2-byte body. The load client (this process, on uvloop) keeps ``--connections`` keep-alive connections
busy, one request at a time each, for ``--duration`` seconds (and at most ``--max-requests``). It prints
requests per second and the CPU time the queue-proxy process spent per request (user + system, from
psutil), which is the number the performance issue's goal (<= 30 us/request) is about. ``--baseline``
also measures the upstream alone, for the cost of the client and the upstream themselves.
``--handler-only`` times the queue-proxy's own handler in-process (probe routing, stats, drain
bookkeeping, timeouts, breaker, metrics, header rewrite) around a forward that does nothing, which
separates its cost from the HTTP engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

UPSTREAM_CODE = r"""
import asyncio, sys
import uvloop

RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.buf = b""
    def data_received(self, data):
        buf = self.buf + data
        n = buf.count(b"\r\n\r\n")
        if n:
            self.t.write(RESP * n)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
        self.buf = buf

async def main(port):
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(P, "127.0.0.1", port, backlog=1024)
    await srv.serve_forever()

uvloop.run(main(int(sys.argv[1])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise SystemExit(f"port {port} never opened")


class _Client(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as the previous answer is complete."""

    def __init__(self, request: bytes, stop_at: float, budget: list[int], done: asyncio.Future[int]) -> None:
        self.request = request
        self.stop_at = stop_at
        self.budget = budget
        self.done = done
        self.buf = b""
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.budget[0] <= 0 or time.monotonic() >= self.stop_at:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(self.count)
            return
        self.budget[0] -= 1
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            length = 0
            if i >= 0:
                eol = head.find(b"\r\n", i)
                length = int(head[i + 15 : eol if eol > 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            if not head.startswith(b"http/1.1 200"):
                raise SystemExit(f"unexpected answer: {head[:60]!r}")
            self.buf = self.buf[total:]
            self.count += 1
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.count)


def _factory(
    request: bytes, stop_at: float, budget: list[int], fut: asyncio.Future[int]
) -> Callable[[], _Client]:
    return lambda: _Client(request, stop_at, budget, fut)


async def load(port: int, connections: int, duration: float, max_requests: int) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    request = b"GET /hello HTTP/1.1\r\nHost: bench\r\nUser-Agent: qp-micro\r\n\r\n"
    budget = [max_requests]
    t0 = time.monotonic()
    stop_at = t0 + duration
    futures = []
    for _ in range(connections):
        fut: asyncio.Future[int] = loop.create_future()
        await loop.create_connection(_factory(request, stop_at, budget, fut), "127.0.0.1", port)
        futures.append(fut)
    counts = await asyncio.wait_for(asyncio.gather(*futures), duration + 30)
    return sum(counts), time.monotonic() - t0


def measure(port: int, pid: int, args: argparse.Namespace) -> dict[str, float]:
    import uvloop

    proc = psutil.Process(pid)
    # warm-up: pools, code paths
    uvloop.run(load(port, args.connections, 0.5, 2000))
    c0 = proc.cpu_times()
    n, elapsed = uvloop.run(load(port, args.connections, args.duration, args.max_requests))
    c1 = proc.cpu_times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {
        "requests": n,
        "seconds": round(elapsed, 3),
        "req_per_s": round(n / elapsed, 1),
        "cpu_us_per_request": round(cpu / max(n, 1) * 1e6, 1),
    }


def handler_only() -> dict[str, float]:
    """Microseconds per request of QueueHandler alone, best of 7 rounds, per configuration."""
    import uvloop
    from prometheus_client import CollectorRegistry

    from queueproxy.handler import QueueHandler
    from queueproxy.usermetrics import UserMetrics
    from serving.breaker import Breaker
    from serving.clock import FakeClock
    from serving.drain import Drainer
    from serving.httpserver import Headers
    from serving.stats import RequestStats
    from serving.timeouts import RequestTimeouts

    class Req:
        method = b"GET"
        target = b"/"
        headers = Headers([(b"host", b"app"), (b"user-agent", b"bench"), (b"accept", b"*/*")])

    class Resp:
        started = True
        status = 200
        last_write = 0.0

    class Drain:
        def __init__(self) -> None:
            self.d = Drainer(30, 300, FakeClock())

        @property
        def draining(self) -> bool:
            return self.d.draining

        def request_started(self) -> None:
            self.d.request_started()

        def request_finished(self) -> None:
            self.d.request_finished()

    class Ready:
        async def check(self) -> bool:
            return True

    async def nop_forward(req: object, resp: object, upstream: object, headers: object) -> int:
        return 200

    def metrics() -> UserMetrics:
        return UserMetrics(CollectorRegistry(), namespace="n", service="s", configuration="c", revision="r")

    configs = {
        "bare (no timeouts, no breaker, no metrics)": {"timeouts": RequestTimeouts(0, 0, 0)},
        "default (total timeout, user metrics)": {"metrics": metrics()},
        "cc=10 (breaker too)": {"metrics": metrics(), "breaker": Breaker(100, 10)},
    }

    async def run() -> dict[str, float]:
        out = {}
        for name, kw in configs.items():
            h = QueueHandler(
                upstream=None,  # type: ignore[arg-type]
                stats=RequestStats(time.monotonic()),
                drain=Drain(),
                readiness=Ready(),
                forward_fn=nop_forward,
                **kw,
            )
            req, resp = Req(), Resp()
            best = float("inf")
            for _ in range(7):
                t = time.perf_counter()
                for _ in range(20000):
                    await h(req, resp)  # type: ignore[arg-type]
                best = min(best, (time.perf_counter() - t) / 20000 * 1e6)
            out[name] = round(best, 2)
        return out

    return uvloop.run(run())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    p.add_argument("--cc", type=int, default=0, help="CONTAINER_CONCURRENCY of the queue-proxy")
    p.add_argument("--baseline", action="store_true", help="also measure the upstream alone")
    p.add_argument("--json", action="store_true")
    p.add_argument("--handler-only", action="store_true", help="time the handler alone, in-process")
    args = p.parse_args()
    if args.handler_only:
        sys.path.insert(0, str(ROOT))
        res = handler_only()
        if args.json:
            print(json.dumps({"handler_us_per_request": res}))
        else:
            for name, us in res.items():
                print(f"{name:>45}: {us:6.2f} us/request")
        return 0

    up_port, qp_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM_CODE, str(up_port)], cwd=ROOT)
        procs.append(upstream)
        wait_port(up_port, upstream)
        env = {
            **os.environ,
            "QUEUE_BIND_ADDRESS": "127.0.0.1",
            "QUEUE_SERVING_PORT": str(qp_port),
            "USER_PORT": str(up_port),
            "QUEUE_ADMIN_PORT": str(free_port()),
            "QUEUE_METRICS_PORT": str(free_port()),
            "USER_METRICS_PORT": str(free_port()),
            "CONTAINER_CONCURRENCY": str(args.cc),
            "SERVING_LOGGING_LEVEL": "warning",
        }
        qp = subprocess.Popen([sys.executable, "-m", "queueproxy"], cwd=ROOT, env=env)
        procs.append(qp)
        wait_port(qp_port, qp)
        results = {"queue_proxy": measure(qp_port, qp.pid, args)}
        if args.baseline:
            results["upstream_alone"] = measure(up_port, upstream.pid, args)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    if args.json:
        print(json.dumps({"connections": args.connections, "cc": args.cc, **results}))
    else:
        for name, r in results.items():
            print(
                f"{name:>15}: {r['req_per_s']:>9.0f} req/s  {r['cpu_us_per_request']:>6.1f} us CPU/request"
                f"  ({r['requests']} requests in {r['seconds']} s, {args.connections} connections)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
