"""The HTTP engine's own cost per proxied request, in one process: ``python -m benchmarks.engine_micro``.

    python -m benchmarks.engine_micro [--requests 20000] [--connections 20] [--rounds 5] [--qp]

A load client, the engine (``serving.httpserver.serve`` + ``serving.upstream.forward``, or with
``--qp`` the queue-proxy's whole handler) and a trivial upstream all run on one uvloop in this
process, over real loopback sockets. The CPU time of the process per request, minus the same
measured for client -> upstream alone, is what the proxy hop costs: its Python work and its four
syscalls (read and write on each side), without the context switches and the neighbours' noise of a
multi-process run. Best of ``--rounds``. This is the number to watch while changing the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from serving.httpserver import Request, Responder, serve
from serving.upstream import Upstream, forward

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
REQUEST = b"GET /hello HTTP/1.1\r\nHost: bench\r\nUser-Agent: engine-micro\r\nAccept: */*\r\n\r\n"


class _Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\r\n\r\n")
        if n:
            self.t.write(OK * n)


class _Client(asyncio.Protocol):
    def __init__(self, budget: list[int], done: asyncio.Future[None]) -> None:
        self.budget = budget
        self.done = done
        self.t: Any = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.send()

    def send(self) -> None:
        if self.budget[0] <= 0:
            self.t.close()
            return
        self.budget[0] -= 1
        self.t.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        # every answer on these paths is 2 bytes with a Content-Length
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0 or len(self.buf) < end + 6:
                return
            self.buf = self.buf[end + 6 :]
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _load(port: int, requests: int, connections: int) -> float:
    loop = asyncio.get_running_loop()
    budget = [requests]
    futs = []
    t0 = time.process_time()
    for _ in range(connections):
        fut: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda f=fut: _Client(budget, f), "127.0.0.1", port)  # type: ignore[misc]
        futs.append(fut)
    await asyncio.wait_for(asyncio.gather(*futs), 120)
    return (time.process_time() - t0) / requests * 1e6


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    up = await loop.create_server(_Upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    pool = Upstream("127.0.0.1", up_port, max_idle=1000)
    handler: Any
    if args.qp:
        from queueproxy.handler import QueueHandler

        class _Drain:
            draining = False

            def request_started(self) -> None:
                pass

            def request_finished(self) -> None:
                pass

        class _Ready:
            async def check(self) -> bool:
                return True

        from serving.stats import RequestStats

        handler = QueueHandler(
            upstream=pool, stats=RequestStats(time.monotonic()), drain=_Drain(), readiness=_Ready()
        )
    else:

        async def handler(req: Request, resp: Responder) -> None:
            await forward(req, resp, pool, req.headers.items)

    srv = await serve(handler, "127.0.0.1", 0)
    if args.fast and args.qp:
        srv.fast = handler.fast
    elif args.fast:
        from serving.httpserver import FastRequest
        from serving.upstream import forward_fast

        def fast(req: Request, resp: Responder, marker: FastRequest) -> bool:
            return forward_fast(req, resp, pool, req.headers.items, marker) is not None

        srv.fast = fast
    await _load(srv.port, 2000, args.connections)  # warm-up
    await _load(up_port, 2000, args.connections)
    direct, proxied = [], []
    for _ in range(args.rounds):
        direct.append(await _load(up_port, args.requests, args.connections))
        proxied.append(await _load(srv.port, args.requests, args.connections))
    await srv.shutdown(1)
    await pool.close()
    up.close()
    return {
        "handler": "queue-proxy" if args.qp else "forward",
        "requests": args.requests,
        "connections": args.connections,
        "direct_us": round(min(direct), 2),
        "through_us": round(min(proxied), 2),
        "hop_us": round(min(proxied) - min(direct), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--qp", action="store_true", help="the queue-proxy's handler instead of a bare forward")
    p.add_argument("--fast", action="store_true", help="the engine's callback-only path (HttpServer.fast)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import uvloop

    res = uvloop.run(_run(args))
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{res['handler']}: {res['hop_us']} us CPU per proxied request (through {res['through_us']}, "
            f"client+upstream alone {res['direct_us']}; best of {args.rounds} x {args.requests})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
