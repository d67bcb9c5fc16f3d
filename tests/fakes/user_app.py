"""A fake user container for tests and benchmarks: ``python tests/fakes/user_app.py --port N``.

Options: ``--host`` (default 127.0.0.1), ``--startup-delay-ms N`` (sleep before listening, to test
readiness probing), ``--unhealthy`` (start with ``/healthz`` failing).

Endpoints (all GET unless said otherwise):

* ``/``                     200 ``hello`` (also answers ``kube-probe`` liveness checks)
* ``/sleep?ms=N``           waits N ms before answering ``slept N`` (nothing is sent before that)
* ``/headers``              JSON ``{"method", "path", "host", "headers": [[name, value], ...]}`` of the
                            request as received (names as sent on the wire, in order)
* ``/status?code=N``        answers status N with body ``status N``
* ``/sse?n=N&interval_ms=M`` ``text/event-stream`` of N events ``data: <i>``, one every M ms, each
                            written at once
* ``/ws``                   websocket echo (text and binary)
* ``/upload`` (POST/PUT)    reads the body chunk by chunk, answers the byte count as text
* ``/echo`` (POST/PUT)      streams the request body back as it arrives (full duplex)
* ``/download?mb=N``        streams N MiB of ``x`` in 64 KiB chunks, with Content-Length unless ``&chunked=1``
* ``/concurrency``          JSON ``{"current": n, "max": m}``: requests being served right now (this
                            one excluded) and the most seen at once; ``/concurrency?reset=1`` resets max
* ``/healthz``              200 when healthy, else 503; ``/healthz?set=0|1`` flips it
* ``/pid``                  the process id
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from aiohttp import WSMsgType, web

CHUNK = 64 * 1024


class State:
    def __init__(self, healthy: bool) -> None:
        self.current = 0
        self.max_seen = 0
        self.healthy = healthy


def build_app(state: State) -> web.Application:
    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in ("/concurrency", "/healthz"):
            return await handler(request)
        state.current += 1
        state.max_seen = max(state.max_seen, state.current)
        try:
            return await handler(request)
        finally:
            state.current -= 1

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def sleep(request: web.Request) -> web.Response:
        ms = int(request.query.get("ms", "0"))
        await asyncio.sleep(ms / 1000)
        return web.Response(text=f"slept {ms}")

    async def headers(request: web.Request) -> web.Response:
        pairs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
        doc = {"method": request.method, "path": request.path_qs, "host": request.host, "headers": pairs}
        return web.json_response(doc)

    async def status(request: web.Request) -> web.Response:
        code = int(request.query.get("code", "200"))
        return web.Response(status=code, text=f"status {code}")

    async def sse(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "5"))
        interval = int(request.query.get("interval_ms", "100")) / 1000
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            await resp.write(f"data: {i}\n\n".encode())
        await resp.write_eof()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.Response(text=str(total))

    async def echo(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def download(request: web.Request) -> web.StreamResponse:
        total = int(float(request.query.get("mb", "1")) * 1024 * 1024)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("chunked") == "1":
            resp.enable_chunked_encoding()
        else:
            resp.content_length = total
        await resp.prepare(request)
        block = b"x" * CHUNK
        sent = 0
        while sent < total:
            part = block if total - sent >= CHUNK else block[: total - sent]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def concurrency(request: web.Request) -> web.Response:
        if request.query.get("reset") == "1":
            state.max_seen = state.current
        return web.json_response({"current": state.current, "max": state.max_seen})

    async def healthz(request: web.Request) -> web.Response:
        if "set" in request.query:
            state.healthy = request.query["set"] == "1"
        return web.Response(status=200 if state.healthy else 503, text="ok" if state.healthy else "unhealthy")

    async def pid(request: web.Request) -> web.Response:
        return web.Response(text=str(os.getpid()))

    app = web.Application(middlewares=[count], client_max_size=1 << 40)
    app.router.add_get("/", hello)
    app.router.add_get("/sleep", sleep)
    app.router.add_route("*", "/headers", headers)
    app.router.add_route("*", "/status", status)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws)
    app.router.add_route("POST", "/upload", upload)
    app.router.add_route("PUT", "/upload", upload)
    app.router.add_route("POST", "/echo", echo)
    app.router.add_route("PUT", "/echo", echo)
    app.router.add_get("/download", download)
    app.router.add_get("/concurrency", concurrency)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/pid", pid)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description="fake user container")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--startup-delay-ms", type=int, default=0)
    p.add_argument("--unhealthy", action="store_true")
    args = p.parse_args()
    if args.startup_delay_ms:
        import time

        time.sleep(args.startup_delay_ms / 1000)
    web.run_app(
        build_app(State(not args.unhealthy)),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
