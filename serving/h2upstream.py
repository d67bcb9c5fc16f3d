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
from collections import deque

import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .h2_conn import H2Base, StreamGone
from .h2_guard import CANCEL, NO_ERROR, REFUSED_STREAM, GoAway, goaway_frame
from .h2_stream import h2_fields
from .httpserver import Request, Responder
from .upstream import UpstreamError, strip_hop_by_hop

__all__ = ["H2Upstream", "forward_h2"]


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


class _Refused(ConnectionResetError):
    """The upstream did not process the stream: safe to send again."""


class _ClientStream:
    __slots__ = (
        "_chunks",
        "_unread",
        "_wait",
        "conn",
        "ended",
        "error",
        "got_head",
        "headers",
        "local_ended",
        "sid",
        "status",
        "trailers",
    )

    def __init__(self, conn: _ClientConn, sid: int, local_ended: bool) -> None:
        self.conn = conn
        self.sid = sid
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.got_head = False
        self.ended = False
        self.local_ended = local_ended
        self.error: BaseException | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._unread = 0
        self._wait: asyncio.Future[None] | None = None

    def wake(self) -> None:
        w = self._wait
        if w is not None and not w.done():
            w.set_result(None)

    def fail(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err
        if not self.ended:  # a complete response (then RST_STREAM NO_ERROR) is still read to its end
            self.discard()
        self.wake()

    def on_data(self, data: bytes, fc: int) -> None:
        if not data:
            self.conn.ack(self.sid, fc)
            return
        self._chunks.append((data, fc))
        self._unread += fc
        self.conn.pool.received += fc
        self.wake()

    def discard(self) -> int:
        n = self._unread
        self._chunks.clear()
        self._unread = 0
        return n

    async def _sleep(self) -> None:
        self._wait = self.conn.loop.create_future()
        try:
            await self._wait
        finally:
            self._wait = None

    async def read_head(self) -> None:
        while not self.got_head:
            if self.error is not None:
                raise self.error
            if self.ended:
                raise ConnectionResetError("upstream ended the stream without a response")
            await self._sleep()

    def buffered(self) -> bool:
        return bool(self._chunks) or self.ended

    async def read(self) -> bytes:
        """Next DATA of the response; b"" at its end (trailers are then in .trailers)."""
        while not self._chunks:
            if self.ended:
                return b""
            if self.error is not None:
                raise self.error
            await self._sleep()
        if len(self._chunks) == 1:
            data, fc = self._chunks.popleft()
        else:
            data = b"".join(c for c, _ in self._chunks)
            fc = sum(n for _, n in self._chunks)
            self._chunks.clear()
        self._unread -= fc
        self.conn.ack(self.sid, fc)
        return data

    async def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        await self.conn.send_data(self.sid, data)

    def end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        c = self.conn
        fields = h2_fields(trailers) if trailers else None
        if fields:
            c.call(c.h2.send_headers, self.sid, fields, end_stream=True)
        else:
            c.call(c.h2.end_stream, self.sid)
        self.local_ended = True
        c.flush()

    def close(self) -> None:
        """Done with the stream: reset it unless both sides ended it, and give its slot back."""
        if not (self.ended and self.local_ended) and self.error is None:
            self.conn.reset(self.sid, CANCEL)
            self.error = ConnectionResetError("stream cancelled")
        self.discard()
        self.conn.forget(self.sid)
        self.conn.stream_done(self)


class _ClientConn(H2Base):
    def __init__(self, pool: H2Upstream) -> None:
        s = h2.settings.SettingCodes
        super().__init__(
            asyncio.get_running_loop(),
            client_side=True,
            settings={
                s.ENABLE_PUSH: 0,
                s.INITIAL_WINDOW_SIZE: pool.stream_window,
                s.MAX_HEADER_LIST_SIZE: 65536,
                s.MAX_FRAME_SIZE: 16384,
            },
            connection_window=pool.connection_window,
            control_rate=500.0,
            control_burst=1000,
            max_write_buffer=4194304,
        )
        self.pool = pool
        self.streams: dict[int, _ClientStream] = {}
        self.draining = False  # GOAWAY received (or ids exhausted): no new streams here
        self.settings_seen = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.start_h2()

    def capacity(self) -> int:
        if self.draining or self.closed or self.failed:
            return 0
        limit = self.pool.max_streams_per_connection
        if self.settings_seen:
            limit = min(limit, self.h2.remote_settings.max_concurrent_streams)
        return limit - len(self.streams)

    def open(self, fields: list[tuple[bytes, bytes]], end_stream: bool) -> _ClientStream:
        try:
            sid = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError as e:
            self.draining = True
            raise _Refused("stream ids exhausted") from e
        self.call(self.h2.send_headers, sid, fields, end_stream=end_stream)
        st = _ClientStream(self, sid, end_stream)
        self.streams[sid] = st
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.flush()
        return st

    def stream_done(self, st: _ClientStream) -> None:
        if self.streams.pop(st.sid, None) is None or self.streams:
            return
        if self.draining:
            self._linger()
        elif not self.closed and not self.failed:
            self._idle = self.loop.call_later(self.pool.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if not self.streams and not self.closed:
            self.draining = True
            self.pool._forget(self)
            self.write_now()
            if self.transport is not None:
                self.transport.write(goaway_frame(0, NO_ERROR))
            self._linger()

    def on_event(self, ev: h2.events.Event) -> None:
        sid = getattr(ev, "stream_id", None) or 0
        st = self.streams.get(sid)
        if isinstance(ev, h2.events.DataReceived):
            if st is not None and st.error is None:
                st.on_data(ev.data or b"", ev.flow_controlled_length or 0)
        elif isinstance(ev, h2.events.ResponseReceived):
            if st is not None:
                hdrs = [(bytes(n), bytes(v)) for n, v in ev.headers or ()]
                st.status = next((int(v) for n, v in hdrs if n == b":status"), 0)
                st.headers = [(n, v) for n, v in hdrs if not n.startswith(b":")]
                st.got_head = True
                st.wake()
        elif isinstance(ev, h2.events.TrailersReceived):
            if st is not None:
                st.trailers = [(bytes(n), bytes(v)) for n, v in ev.headers or ()]
        elif isinstance(ev, h2.events.StreamEnded):
            if st is not None:
                st.ended = True
                st.wake()
        elif isinstance(ev, h2.events.StreamReset):
            if st is not None:
                code = int(ev.error_code or 0)
                err = _Refused if code == REFUSED_STREAM else ConnectionResetError
                st.fail(err(f"upstream reset the stream ({_code_name(code)})"))
            self.wake_window(sid)
        elif isinstance(ev, h2.events.WindowUpdated):
            self.wake_window(sid)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
            self.wake_window(0)

    def on_goaway(self, g: GoAway) -> None:
        self.draining = True
        self.pool._forget(self)
        for sid, st in list(self.streams.items()):
            if sid > g.last_stream_id:
                st.fail(_Refused(f"upstream GOAWAY before stream {sid} (last {g.last_stream_id})"))
        if not self.streams:
            self._linger()

    def on_failed(self) -> None:
        self.pool._forget(self)
        for st in list(self.streams.values()):
            st.fail(ConnectionResetError("upstream connection failed"))

    def on_lost(self, exc: Exception | None) -> None:
        self.pool._forget(self)
        if self._idle is not None:
            self._idle.cancel()
        for st in list(self.streams.values()):
            st.fail(ConnectionResetError(f"upstream closed the connection{': ' + str(exc) if exc else ''}"))


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
        self._conns: list[_ClientConn] = []
        self._dialing: asyncio.Task[_ClientConn] | None = None
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
        return sum(st._unread for c in self._conns for st in c.streams.values())

    def _forget(self, conn: _ClientConn) -> None:
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)

    async def _dial(self) -> _ClientConn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _ClientConn(self), self.host, self.port)
        except (OSError, TimeoutError) as e:
            raise UpstreamError(f"dial tcp {self.host}:{self.port}: {e or type(e).__name__}") from e
        if self._closed:
            conn.close()
            raise UpstreamError(f"upstream pool {self.host}:{self.port} is closed")
        self._conns.append(conn)
        return conn

    async def connection(self, avoid: _ClientConn | None = None) -> _ClientConn:
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

    def _dial_done(self, task: asyncio.Task[_ClientConn]) -> None:
        if self._dialing is task:
            self._dialing = None
        if not task.cancelled():
            task.exception()  # retrieved here; the waiters raise it themselves

    async def close(self) -> None:
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


async def _pump(req: Request, st: _ClientStream) -> None:
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
    refused_by: _ClientConn | None = None
    for attempt in (0, 1):
        conn = await upstream.connection(avoid=refused_by)
        refused_by = conn
        try:
            st = conn.open(fields, end_stream=not has_body)
        except (StreamGone, _Refused) as e:
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
            except _Refused as e:
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


async def _relay(resp: Responder, st: _ClientStream) -> int:
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
