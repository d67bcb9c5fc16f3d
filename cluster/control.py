"""The control API of a running `zeroscale up`: apply, delete, status. Loopback only, JSON over HTTP.

It listens on 127.0.0.1 and also refuses any request whose peer is not a loopback address (a
second guard in case someone binds it elsewhere). Errors in an applied file come back as 400 with
the message that names the field; what was running keeps running unchanged.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Protocol

from aiohttp import web

from serving.errors import ConfigError

__all__ = ["ControlPlane", "ControlServer", "MAX_APPLY_BYTES"]

log = logging.getLogger("zeroscale.control")

MAX_APPLY_BYTES = 1 << 20  # a Service file is a few KiB; 1 MiB leaves room and bounds memory


class ControlPlane(Protocol):
    async def apply(self, text: str, source: str) -> list[dict[str, Any]]: ...

    async def delete(self, name: str, namespace: str) -> bool: ...

    def status(self) -> dict[str, Any]: ...


def _is_loopback(peer: object) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        return ipaddress.ip_address(str(peer[0]).split("%")[0]).is_loopback
    except ValueError:
        return False


@web.middleware
async def _loopback_only(request: web.Request, handler: Any) -> web.StreamResponse:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not _is_loopback(peer):
        return web.json_response({"error": "the control API answers loopback clients only"}, status=403)
    result: web.StreamResponse = await handler(request)
    return result


class ControlServer:
    def __init__(self, plane: ControlPlane, host: str = "127.0.0.1", port: int = 9081) -> None:
        self.plane = plane
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_loopback_only], client_max_size=MAX_APPLY_BYTES)
        app.router.add_post("/v1/apply", self._apply)
        app.router.add_delete("/v1/services/{namespace}/{name}", self._delete)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _apply(self, request: web.Request) -> web.Response:
        try:
            text = await request.text()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": f"file larger than {MAX_APPLY_BYTES} bytes"}, status=413)
        source = request.query.get("source", "<request>")
        try:
            changes = await self.plane.apply(text, source)
        except ConfigError as e:
            log.warning("refused %s: %s", source, e)
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"applied": changes})

    async def _delete(self, request: web.Request) -> web.Response:
        name, ns = request.match_info["name"], request.match_info["namespace"]
        if not await self.plane.delete(name, ns):
            return web.json_response({"error": f"service {ns}/{name} not found"}, status=404)
        return web.json_response({"deleted": f"{ns}/{name}"})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.status())

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")
