"""Forwarding to an h2c upstream: a pool of multiplexed HTTP/2 connections to one host:port and a relay
with serving.upstream.forward's contract.

One connection carries up to its peer's SETTINGS_MAX_CONCURRENT_STREAMS streams (capped at
``max_streams_per_connection``); when all are busy another connection is dialled, one dial at a time
shared by everyone waiting. Response DATA is credited back to the stream's window only as it is read,
i.e. as fast as the client takes it: a slow reader slows the app, and a stream never buffers more than
``stream_window`` bytes (the connection window is credited on arrival, so that one stalled stream
cannot stop the others sharing its connection). A stream refused by the upstream (RST_STREAM
REFUSED_STREAM, or above the last-stream-id of its GOAWAY) was never processed, so it is retried once
on another connection when no request body byte has been consumed yet.
"""

from __future__ import annotations

import asyncio
import contextlib

from .h2_client import H2ClientConn, H2ClientStream, Refused
from .h2_conn import StreamGone
from .h2_guard import CANCEL
from .h2_stream import h2_fields
from .httpserver import Request, Responder
from .upstream import UpstreamError, strip_hop_by_hop

__all__ = ["H2Upstream", "forward_h2"]


class H2Upstream:
    """Multiplexed h2c connections to one host:port."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 3.0,
        idle_timeout: float = 60.0,
        max_streams_per_connection: int = 100,
        stream_window: int = 262144,
        connection_window: int = 1048576,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_streams_per_connection = max_streams_per_connection
        self.stream_window = stream_window
        self.connection_window = connection_window
        self._conns: list[H2ClientConn] = []
        self._dialing: asyncio.Task[H2ClientConn] | None = None
        self._closed = False
        self.received = 0  # response DATA bytes received from the upstream, ever

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def in_use(self) -> int:
        return sum(len(c.streams) for c in self._conns)

    @property
    def buffered(self) -> int:
        """Response bytes received from the upstream and not yet read by a forwarder (all streams)."""
        return sum(st.unread for c in self._conns for st in c.streams.values())

    def forget_connection(self, conn: H2ClientConn) -> None:
        """The connection takes no new streams (GOAWAY, idle, failed, lost): out of the pool."""
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)

    async def _dial(self) -> H2ClientConn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: H2ClientConn(self), self.host, self.port)
        except (OSError, TimeoutError) as e:
            raise UpstreamError(
                f"dial tcp {self.host}:{self.port}: {e or type(e).__name__}", connect=True
            ) from e
        if self._closed:
            conn.close()
            raise UpstreamError(f"upstream pool {self.host}:{self.port} is closed")
        self._conns.append(conn)
        return conn

    async def connection(self, avoid: H2ClientConn | None = None) -> H2ClientConn:
        """A connection (not ``avoid``) with a free stream slot, else a new one (one dial shared by all)."""
        useless = 0
        while True:
            if self._closed:
                raise UpstreamError(f"upstream pool {self.host}:{self.port} is closed")
            for conn in self._conns:
                if conn is not avoid and conn.capacity() > 0:
                    return conn
            task = self._dialing
            if task is None:
                task = self._dialing = asyncio.get_running_loop().create_task(self._dial())
                task.add_done_callback(self._dial_done)
            # shield: a caller that goes away does not abort the dial the others wait for
            conn = await asyncio.shield(task)
            if conn.capacity() <= 0 and not conn.streams:
                # a fresh connection with no room at all (GOAWAY at once, MAX_CONCURRENT_STREAMS 0)
                useless += 1
                if useless >= 2:
                    raise UpstreamError(f"upstream {self.host}:{self.port} accepts no new streams")

    async def probe(
        self, target: bytes, headers: list[tuple[bytes, bytes]] | None = None, *, timeout: float = 1.0
    ) -> int:
        """GET ``target`` over h2c and return the status, without reading the body: readiness probes of
        h2c apps (an HTTP/1.1 probe would fail on a gRPC server). UpstreamError when it cannot answer."""
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"%s:%d" % (self.host.encode(), self.port)),
            (b":path", target),
            *h2_fields(headers or []),
        ]
        try:
            async with asyncio.timeout(timeout):
                st = (await self.connection()).open(fields, end_stream=True)
                try:
                    await st.read_head()
                    return st.status
                finally:
                    st.close()
        except (ConnectionError, OSError, TimeoutError) as e:
            raise UpstreamError(
                f"probe {self.host}:{self.port}{target.decode('latin-1')}: {e or 'timeout'}"
            ) from e

    def _dial_done(self, task: asyncio.Task[H2ClientConn]) -> None:
        if self._dialing is task:
            self._dialing = None
        if not task.cancelled():
            task.exception()  # retrieved here; the waiters raise it themselves

    async def close(self) -> None:
        """Take no new streams; idle connections close now, busy ones once their streams have ended
        (a pod leaving the endpoints keeps serving what it has, e.g. a long gRPC stream while it drains)."""
        self._closed = True
        for conn in list(self._conns):
            conn.shutdown()
        self._conns.clear()

    def abort(self) -> None:
        """Close every connection now; streams still running fail."""
        self._closed = True
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()


def _request_fields(
    req: Request, headers: list[tuple[bytes, bytes]], target: bytes | None, up: H2Upstream
) -> list[tuple[bytes, bytes]]:
    authority: bytes | None = None
    trailers_ok = False
    for name, value in headers:
        if name == b"host" and authority is None:
            authority = value
        elif name == b"te" and b"trailers" in value.lower():
            trailers_ok = True
    if authority is None:
        authority = req.host or b"%s:%d" % (up.host.encode(), up.port)
    out = [
        (b":method", req.method),
        (b":scheme", b"http"),
        (b":authority", authority),
        (b":path", target if target is not None else req.target),
    ]
    for name, value in h2_fields(strip_hop_by_hop(headers)):
        if name not in (b"host", b"content-length", b"expect"):
            out.append((name, value))
    if trailers_ok:
        out.append((b"te", b"trailers"))  # gRPC servers insist on it; it is hop-by-hop, so re-added here
    if req.content_length is not None and req.has_body:
        out.append((b"content-length", b"%d" % req.content_length))
    return out


async def _pump(req: Request, st: H2ClientStream) -> None:
    """Client request body -> upstream stream, as it comes, within the upstream's windows."""
    try:
        while True:
            data = await req.read()
            if not data:
                break
            await st.write(data)
        st.end(getattr(req, "trailers", None) or None)
    except (ConnectionError, OSError) as e:
        # A broken request body must not reach the app as a complete one.
        st.conn.reset(st.sid, CANCEL)
        st.fail(ConnectionResetError(f"request body: {e}"))


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def forward_h2(
    req: Request,
    resp: Responder,
    upstream: H2Upstream,
    headers: list[tuple[bytes, bytes]],
    *,
    target: bytes | None = None,
) -> int:
    """serving.upstream.forward over h2c: relay req to upstream and the answer back; returns the status."""
    fields = _request_fields(req, headers, target, upstream)
    has_body = req.has_body
    where = f"upstream {upstream.host}:{upstream.port}"
    refused_by: H2ClientConn | None = None
    for attempt in (0, 1):
        conn = await upstream.connection(avoid=refused_by)
        refused_by = conn
        try:
            st = conn.open(fields, end_stream=not has_body)
        except (StreamGone, Refused) as e:
            if attempt == 0:
                continue
            raise UpstreamError(f"{where}: {e}") from e
        pump: asyncio.Task[None] | None = None
        try:
            if has_body:
                pump = asyncio.get_running_loop().create_task(_pump(req, st))
                pump.add_done_callback(_consume)
            try:
                await st.read_head()
            except Refused as e:
                if attempt == 0 and not req._body_started():
                    continue
                raise UpstreamError(f"{where}: {e}") from e
            except (ConnectionError, OSError) as e:
                raise UpstreamError(f"{where}: {e}") from e
            return await _relay(resp, st)
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            st.close()
    raise AssertionError("unreachable")


async def _relay(resp: Responder, st: H2ClientStream) -> int:
    status = st.status
    await resp.start(status, st.headers, flush=not st.buffered())
    while True:
        try:
            data = await st.read()
        except (ConnectionError, OSError) as e:
            resp.abort()
            raise UpstreamError(f"upstream failed mid-response: {e}", started=True) from e
        if not data:
            break
        await resp.write(data)  # a client that went away raises here: not an upstream failure
    await resp.end(st.trailers or None)
    return status
