"""The queue-proxy's side ports (admin, autoscaler metrics, user metrics) on the kernel's HTTP engine.

They used to be aiohttp apps. aiohttp costs ~190 ms of imports and several MB, and a queue-proxy starts
with every pod, so its start-up is on each cold start's critical path; the engine is loaded anyway for
the serving port. Each port is a tiny exact-path router answering as the aiohttp apps did: a route
takes GET and HEAD (HEAD gets the GET answer's head), another method on a known path is
``405: Method Not Allowed`` with ``Allow: GET,HEAD``, an unknown path is ``404: Not Found``. Paths are
compared percent-decoded, without the query.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import unquote_to_bytes, urlsplit

from serving.httpserver import Handler, HttpServer, Request, Responder, serve

__all__ = ["Route", "request_path", "router", "serve_side_port"]

Route = Callable[[Request, Responder], Awaitable[None]]

_ALLOWED = (b"GET", b"HEAD")
_ALLOW_HEADER = [(b"allow", b"GET,HEAD")]


def request_path(target: bytes) -> bytes:
    """The percent-decoded path of a request-target (origin or absolute form), without the query."""
    if not target.startswith(b"/"):
        target = urlsplit(target).path or b"/"
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    return unquote_to_bytes(path) if b"%" in path else path


def router(routes: Mapping[str, Route]) -> Handler:
    """One handler for a side port: exact paths to routes, GET and HEAD only."""
    table = {path.encode(): route for path, route in routes.items()}

    async def handle(req: Request, resp: Responder) -> None:
        route = table.get(request_path(req.target))
        if route is None:
            await resp.send(404, "404: Not Found")
        elif req.method not in _ALLOWED:
            await resp.send(405, "405: Method Not Allowed", _ALLOW_HEADER)
        else:
            await route(req, resp)

    return handle


async def serve_side_port(routes: Mapping[str, Route], host: str, port: int) -> HttpServer:
    return await serve(router(routes), host, port, backlog=128)
