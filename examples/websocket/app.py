"""WebSocket echo: every message sent to /ws comes back; GET / says how to use it. Needs aiohttp.

A long-lived websocket counts as a request in flight, so the pod serving it is not scaled away and
its queue-proxy waits for it while draining.
"""

from __future__ import annotations

import os

from aiohttp import WSMsgType, web


async def index(request: web.Request) -> web.Response:
    return web.Response(text="websocket echo: connect to /ws (e.g. `websocat ws://.../ws`)\n")


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def main() -> None:
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/ws", echo)
    # run_app turns SIGTERM into a graceful stop
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), print=None, access_log=None)


if __name__ == "__main__":
    main()
