"""HTTP/2 cleartext (h2c) server on asyncio, with the same handlers as the HTTP/1.1 engine.

Each stream is one handler task given an H2Request/H2Responder (serving.h2_stream), cancelled when the
peer resets the stream or the connection is lost, so a breaker slot or a proxied call is given up at
once. serve_h2() listens for prior-knowledge h2c only; serve_auto() serves HTTP/1.1, h2c with prior
knowledge and the ``Upgrade: h2c`` switch on one port, as Knative's servers do.

Abuse is answered as RFC 9113 says and costs only the offending connection: oversized frames
(FRAME_SIZE_ERROR), bad stream ids and other protocol violations (PROTOCOL_ERROR, from h2), header
blocks past the limit, floods of SETTINGS/PING/PRIORITY/empty frames and "rapid reset" (most streams
reset young while their handler runs) get ENHANCE_YOUR_CALM (serving.h2_guard); streams past
SETTINGS_MAX_CONCURRENT_STREAMS get RST_STREAM(REFUSED_STREAM), counting handlers still running.
"""

from __future__ import annotations

import asyncio
import contextlib

from .h2_serverconn import H2Limits, H2ServerProtocol
from .h2_upgrade import H1, H2, UPGRADE, sniff
from .httpserver import Handler, HttpProtocol, HttpServer, ServerLimits, listen

__all__ = ["AutoServer", "H2Limits", "H2Server", "H2ServerProtocol", "serve_auto", "serve_h2"]


class H2Server:
    """Connections and running streams of an h2c listener (serve_h2) or of serve_auto's h2c side."""

    def __init__(self, handler: Handler, limits: H2Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = loop
        self.connections: set[H2ServerProtocol] = set()
        self.active = 0  # streams whose handler runs now
        self.stopping = False
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def stream_started(self) -> None:
        self.active += 1
        self._idle.clear()

    def stream_finished(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def shutdown(self, timeout: float) -> None:
        """GOAWAY to every connection, wait for running streams up to timeout, then close everything."""
        self.stopping = True
        self.stop_accepting()
        for conn in list(self.connections):
            conn.goaway()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        for conn in list(self.connections):
            conn.close()  # after what is buffered has been sent


async def serve_h2(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: H2Limits | None = None,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> H2Server:
    """Listen for h2c with prior knowledge only."""
    srv = H2Server(handler, limits or H2Limits(), asyncio.get_running_loop())
    srv._server, srv.port = await listen(
        lambda: H2ServerProtocol(srv), host, port, backlog=backlog, reuse_port=reuse_port
    )
    return srv


class _Sniffer(asyncio.Protocol):
    """A new connection's first bytes decide its protocol; then the transport is handed over."""

    def __init__(self, auto: AutoServer) -> None:
        self.auto = auto
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = self.auto.loop.call_later(self.auto.http.limits.header_timeout, transport.close)
        self.auto.sniffing.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.auto.sniffing.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        lim = self.auto.http.limits
        got = sniff(self.buf, lim.max_request_line + lim.max_header_bytes + 4)
        proto: asyncio.Protocol
        if got.kind == H2:
            proto = H2ServerProtocol(self.auto.h2)
        elif got.kind == UPGRADE:
            proto = H2ServerProtocol(self.auto.h2, got.upgrade)
        elif got.kind == H1:
            proto = HttpProtocol(self.auto.http)
        else:
            return
        self.buf = b""
        self.auto.sniffing.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        t = self.transport
        assert t is not None
        t.set_protocol(proto)
        proto.connection_made(t)
        if got.data:
            proto.data_received(got.data)


class AutoServer:
    """One port, three ways in: HTTP/1.1, h2c with prior knowledge, HTTP/1.1 Upgrade to h2c."""

    def __init__(self, http: HttpServer, h2srv: H2Server, loop: asyncio.AbstractEventLoop) -> None:
        self.http = http
        self.h2 = h2srv
        self.loop = loop
        self.port = 0
        self.sniffing: set[_Sniffer] = set()  # connections that have not said which protocol yet
        self._server: asyncio.AbstractServer | None = None

    @property
    def active(self) -> int:
        return self.http.active + self.h2.active

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, close connections that sent nothing yet, then shut both protocols down."""
        self.stop_accepting()
        for conn in list(self.sniffing):
            conn.close()
        await asyncio.gather(self.http.shutdown(timeout), self.h2.shutdown(timeout))


async def serve_auto(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: ServerLimits | None = None,
    h2_limits: H2Limits | None = None,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> AutoServer:
    """serve() of serving.httpserver, plus h2c on the same port for the same handler."""
    loop = asyncio.get_running_loop()
    auto = AutoServer(
        HttpServer(handler, limits or ServerLimits(), loop),
        H2Server(handler, h2_limits or H2Limits(), loop),
        loop,
    )
    auto._server, port = await listen(
        lambda: _Sniffer(auto), host, port, backlog=backlog, reuse_port=reuse_port
    )
    auto.port = auto.http.port = auto.h2.port = port
    return auto
