"""Server-sent events: GET /?count=5&interval=1000 streams `count` events, one every `interval` ms.

Each event is written as soon as it exists; the queue-proxy passes it on at once (no buffering),
so a client sees them arrive one by one. Needs aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from aiohttp import web

MAX_COUNT = 10_000
MAX_INTERVAL_MS = 60_000


def _int(request: web.Request, name: str, default: int, limit: int) -> int:
    raw = request.query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= limit:
        raise web.HTTPBadRequest(text=f"{name}={raw!r} must be a whole number between 0 and {limit}\n")
    return value


async def events(request: web.Request) -> web.StreamResponse:
    count = _int(request, "count", 5, MAX_COUNT)
    interval = _int(request, "interval", 1000, MAX_INTERVAL_MS) / 1000
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for i in range(1, count + 1):
        data = json.dumps(
            {"n": i, "of": count, "time": time.time(), "revision": os.environ.get("K_REVISION")}
        )
        await resp.write(f"id: {i}\nevent: tick\ndata: {data}\n\n".encode())
        if i < count:
            await asyncio.sleep(interval)
    await resp.write_eof()
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def main() -> None:
    app = web.Application()
    app.router.add_get("/", events)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), print=None, access_log=None)


if __name__ == "__main__":
    main()
