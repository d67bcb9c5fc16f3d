"""Forwarding to an upstream over HTTP/1.1: a keep-alive pool per host:port and a streaming relay.

Both directions stream chunk by chunk with backpressure (a slow reader slows its writer; nothing is
buffered past a bounded window). A pooled connection that the upstream had already closed (the
keep-alive race behind many proxies' sporadic 502s) is retried once on a fresh connection when no
request body byte has been consumed; anything else that fails before the response starts is an
UpstreamError for the caller to answer 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable

import httptools

from .headers import HOP_BY_HOP, connection_tokens
from .httpserver import FastRequest, Request, Responder, adopt

__all__ = ["FastExchange", "Upstream", "UpstreamError", "forward", "forward_fast", "strip_hop_by_hop"]

_READ_WINDOW = 262144


class UpstreamError(Exception):
    """The upstream failed. ``started``: the client's response had begun (the caller writes nothing).
    ``connect``: the TCP connect itself failed, so nothing of the request reached the upstream and it
    may go elsewhere (a load balancer's retry on another pod is safe whatever the method)."""

    def __init__(self, message: str, *, started: bool = False, connect: bool = False) -> None:
        super().__init__(message)
        self.started = started
        self.connect = connect


# Requests that may be sent again when a pooled connection dies under them (RFC 9110 9.2.2, and the
# methods Go's Transport replays): a POST that reached the app before its connection died must not
# run twice. An Idempotency-Key header makes any method replayable, as in Go.
_REPLAYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


def _replayable(req: Request) -> bool:
    if req.has_body:
        return False
    if req.method in _REPLAYABLE:
        return True
    return b"idempotency-key" in req.headers or b"x-idempotency-key" in req.headers


def strip_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop the fields RFC 9110 7.6.1 says a proxy must not forward, including those named in Connection."""
    named: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            named = connection_tokens(value) if named is None else named | connection_tokens(value)
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    return [(n, v) for n, v in headers if n not in drop]


# What _request_head never copies from the caller's fields: hop-by-hop ones, and framing that is ours.
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length", b"expect"}


class _Conn(asyncio.Protocol):
    """One upstream connection; parses responses and buffers at most a window of body bytes."""

    __slots__ = (
        "_body",
        "_body_bytes",
        "_drain",
        "_got_bytes",
        "_head",
        "_hop",
        "_paused_reading",
        "_paused_writing",
        "_waiter",
        "closed",
        "complete",
        "error",
        "fast",
        "headers",
        "idle_since",
        "keep_alive",
        "loop",
        "no_body",
        "parser",
        "raw",
        "status",
        "trailers",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.error: BaseException | None = None
        self._paused_writing = False
        self._drain: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.raw = False
        self.no_body = False
        self.fast: FastExchange | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self._head = False
        self._hop = False  # a hop-by-hop field is among the response headers
        self._body: deque[bytes] = deque()
        self._body_bytes = 0
        self.complete = False
        self.keep_alive = False
        self._got_bytes = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = adopt(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.error is None:
            self.error = exc or ConnectionResetError("upstream closed the connection")
        self._wake()
        f = self.fast
        if f is not None:
            self.fast = None
            f.ready()
        d = self._drain
        if d is not None and not d.done():
            d.set_exception(ConnectionResetError("upstream closed the connection"))

    def eof_received(self) -> bool:
        if self.raw:
            self.complete = True
            self._wake()
            return True
        try:
            self.parser.feed_data(b"")
        except httptools.HttpParserError:
            pass
        if not self.complete and self.error is None:
            self.error = ConnectionResetError("upstream closed the connection before the response ended")
        self._wake()
        return False

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self.raw:
            self._add_body(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.raw = True
            rest = data[int(e.args[0]) :]
            if rest:
                self._add_body(rest)
        except httptools.HttpParserError as perr:  # a name of its own: compiled, a name has one type
            self.error = ValueError(f"malformed response from upstream: {perr}")
            self._wake()
            if self.transport is not None:
                self.transport.close()
        f = self.fast
        if f is not None and (self._head or self.error is not None):
            self.fast = None
            f.ready()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        d, self._drain = self._drain, None
        if d is not None and not d.done():
            d.set_result(None)

    # -- parser callbacks ----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if self._head:
            self.trailers.append((name, value))
        else:
            self.headers.append((name, value))
            if name in HOP_BY_HOP:
                self._hop = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # an interim response (100 Continue, 103): not relayed
            self._hop = False
            return
        self.status = status
        self._head = True
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.no_body:
            # The answer to a HEAD: the parser cannot know there is no body, so this connection ends here.
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._body_bytes += len(body)
        if self._body_bytes > _READ_WINDOW and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
        # No wake-up here: read() callers are woken by on_headers_complete / on_message_complete
        # or, for a body in pieces, below.
        if self._head and not self.complete:
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)

    def on_message_complete(self) -> None:
        if not self._head or self.status == 101:
            return  # end of an interim response; after a 101 the raw stream follows
        self.complete = True
        self._wake()

    # -- used by forward -----------------------------------------------------------------------
    def _add_body(self, data: bytes) -> None:
        self._body.append(data)
        self._body_bytes += len(data)
        if self._body_bytes > _READ_WINDOW and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_head(self) -> None:
        while not self._head:
            if self.error is not None or self.closed:
                raise self.error or ConnectionResetError("upstream closed the connection")
            w = self._waiter = self.loop.create_future()
            try:
                await w
            finally:
                self._waiter = None

    def take_all(self) -> bytes:
        """Every buffered body byte of a complete message."""
        body = self._body
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._body_bytes = 0
        if self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    def buffered(self) -> bool:
        return bool(self._body) or self.complete

    async def read(self) -> bytes:
        """Next body chunk, b"" at the end of the message (or of the raw stream after a 101)."""
        while not self._body:
            if self.complete:
                return b""
            if self.error is not None or self.closed:
                raise self.error or ConnectionResetError("upstream closed the connection")
            await self._wait()
        data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._body_bytes = 0
        if self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise ConnectionResetError("upstream closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("upstream closed the connection")
        if self._paused_writing:
            self._drain = self.loop.create_future()
            await self._drain

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """A keep-alive pool of HTTP/1.1 connections to one host:port (most recently used first)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_idle: int = 100,
        idle_timeout: float = 4.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        # Shorter than the keep-alive of common app servers (5 s for Node and gunicorn) so that we
        # drop a connection before the app does, rather than write a request into its closing socket.
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._idle: deque[_Conn] = deque()
        self.in_use = 0
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Conn(loop), self.host, self.port)
        except (OSError, TimeoutError) as e:
            raise UpstreamError(
                f"dial tcp {self.host}:{self.port}: {e or type(e).__name__}", connect=True
            ) from e
        return conn

    def acquire_idle(self) -> _Conn | None:
        """A live pooled connection at once, or None (no waiting, no connecting)."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            # error: the app's FIN (or a reset) came while the connection sat idle.
            if conn.closed or conn.error is not None or now - conn.idle_since > self.idle_timeout:
                conn.close()
                continue
            self.in_use += 1
            return conn
        return None

    async def acquire(self, fresh: bool = False) -> tuple[_Conn, bool]:
        """A connection and whether it was reused from the pool; ``fresh`` skips the pool."""
        if not fresh:
            conn = self.acquire_idle()
            if conn is not None:
                return conn, True
        conn = await self._connect()
        self.in_use += 1
        return conn, False

    def release(self, conn: _Conn, reusable: bool) -> None:
        self.in_use -= 1
        if reusable and not conn.closed and not self._closed and len(self._idle) < self.max_idle:
            conn._reset()
            conn.no_body = False
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


def _request_head(
    req: Request, headers: list[tuple[bytes, bytes]], target: bytes | None, host: str, port: int
) -> bytes:
    named: set[bytes] | None = None
    host_value: bytes | None = None
    for name, value in headers:
        if name == b"connection":
            named = connection_tokens(value) if named is None else named | connection_tokens(value)
        elif name == b"host" and host_value is None:
            host_value = value
    if host_value is None or (named and b"host" in named):
        host_value = b"%s:%d" % (host.encode(), port)
    parts = [
        req.method,
        b" ",
        target if target is not None else req.target,
        b" HTTP/1.1\r\nhost: ",
        host_value,
        b"\r\n",
    ]
    # framing is ours; 100-continue is answered by our own server side
    drop = _NOT_FORWARDED | named if named else _NOT_FORWARDED
    for name, value in headers:
        if name not in drop:
            parts += (name, b": ", value, b"\r\n")
    if req.upgrade is not None:
        parts.append(b"connection: upgrade\r\nupgrade: %s\r\n" % req.upgrade)
    elif req.content_length is not None:
        parts.append(b"content-length: %d\r\n" % req.content_length)
    elif req.chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


async def _pump_body(req: Request, conn: _Conn) -> None:
    """Client request body -> upstream, re-framed, with backpressure both ways."""
    chunked = req.chunked
    while True:
        data = await req.read()
        if not data:
            break
        conn.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")


async def forward(
    req: Request,
    resp: Responder,
    upstream: Upstream,
    headers: list[tuple[bytes, bytes]],
    *,
    target: bytes | None = None,
    refuse: Callable[[int, list[tuple[bytes, bytes]]], bool] | None = None,
    replay: bool = False,
) -> int:
    """Relay req to upstream and the answer back to resp; returns the upstream status.

    ``refuse(status, headers)``, when given and true for the upstream's answer, means the upstream did
    not take the request: nothing is relayed, and UpstreamError(connect=True) lets the caller send it
    elsewhere (the activator does, for a queue-proxy that could not reach its app).
    ``replay``: the request already went out on a pooled connection that died before any answer;
    this is the one retry, on a new connection.
    """
    head = _request_head(req, headers, target, upstream.host, upstream.port)
    for attempt in (1,) if replay else (0, 1):
        try:
            # The retry dials anew: the other pooled connections may be closing just the same.
            conn, reused = await upstream.acquire(fresh=attempt == 1)
        except UpstreamError as e:
            if attempt == 0:
                raise
            # The first try may have reached the app before its connection died: not "nothing sent".
            raise UpstreamError(f"{e} (retrying after a pooled connection died)") from e
        conn.no_body = req.method == b"HEAD"
        try:
            pump = await _send(conn, head, req)
        except BaseException as err:  # not "as e": a compiled build gives a name one type per function
            upstream.release(conn, False)
            if not isinstance(err, (ConnectionError, OSError, ValueError)):
                raise  # cancelled: the client went away, or a timeout
            if reused and attempt == 0 and not conn._got_bytes and _replayable(req):
                continue  # the pooled connection was dead (the keep-alive race): one fresh try
            raise UpstreamError(f"upstream {upstream.host}:{upstream.port}: {err}") from err
        ok = False
        try:
            status = conn.status
            if refuse is not None and refuse(status, conn.headers):
                raise UpstreamError(
                    f"upstream {upstream.host}:{upstream.port} did not take the request ({status})",
                    connect=True,
                )
            if status == 101 and req.upgrade is not None:
                await _tunnel(req, resp, conn)
                return 101
            if conn.complete and type(resp) is Responder:
                # The whole answer is here already (the common small response): one write, no await.
                hdrs = strip_hop_by_hop(conn.headers) if conn._hop else conn.headers
                resp._whole(status, hdrs, conn.take_all(), conn.trailers or None)
            else:
                await _relay_response(resp, conn)
            if pump is not None:
                if not pump.done():
                    # The upstream answered before reading the whole body; the connection's framing is lost.
                    pump.cancel()
                    conn.keep_alive = False
                else:
                    pump.result()
            ok = conn.keep_alive and conn.complete
            return status
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            upstream.release(conn, ok)
    raise AssertionError("unreachable")


async def _send(conn: _Conn, head: bytes, req: Request) -> asyncio.Task[None] | None:
    """The request's head out (its body in a task, returned), then the answer's head in."""
    conn.write(head)
    pump = conn.loop.create_task(_pump_body(req, conn)) if req.has_body else None
    try:
        await conn.read_head()
    except BaseException:
        if pump is not None:
            pump.cancel()
        raise
    return pump


async def _relay_response(resp: Responder, conn: _Conn) -> int:
    status = conn.status
    headers = strip_hop_by_hop(conn.headers) if conn._hop else conn.headers
    # Small answers leave in one write together with the head; streams get their head at once.
    await resp.start(status, headers, flush=not conn.buffered())
    while True:
        try:
            data = await conn.read()
        except (ConnectionError, OSError, ValueError) as e:
            resp.abort()
            raise UpstreamError(f"upstream failed mid-response: {e}", started=True) from e
        if not data:
            break
        await resp.write(data)  # a client that went away raises here: not an upstream failure
    await resp.end(conn.trailers or None)
    return status


async def _tunnel(req: Request, resp: Responder, conn: _Conn) -> None:
    """After a 101: splice client and upstream bytes until either side ends."""
    proto = dict(conn.headers).get(b"upgrade") or req.upgrade or b""
    await resp.start(101, [(b"connection", b"upgrade"), (b"upgrade", proto), *strip_hop_by_hop(conn.headers)])

    async def up() -> None:
        while True:
            data = await req.read()
            if not data:
                break
            conn.write(data)
            await conn.drain()
        if conn.transport is not None and not conn.closed and conn.transport.can_write_eof():
            conn.transport.write_eof()

    pump = asyncio.get_running_loop().create_task(up())
    try:
        while True:
            try:
                data = await conn.read()
            except (ConnectionError, OSError):
                break
            if not data:
                break
            await resp.write_raw(data)
    finally:
        pump.cancel()
        with contextlib.suppress(BaseException):
            await pump
        conn.keep_alive = False
        resp.abort()


class FastExchange:
    """One GET relayed in callbacks only, over a pooled connection (the engine's fast path).

    ``on_end(status)`` runs once the whole answer is written; ``wrap(rest)`` builds what a task runs
    when the exchange must go on there (``rest`` returns the status, or raises UpstreamError).
    ``refuse`` as forward's: an answer it refuses goes on in the task, as UpstreamError(connect=True).
    """

    __slots__ = ("conn", "headers", "marker", "on_end", "refuse", "req", "resp", "upstream", "wrap")

    def __init__(
        self,
        req: Request,
        resp: Responder,
        upstream: Upstream,
        conn: _Conn,
        headers: list[tuple[bytes, bytes]],
        marker: FastRequest,
        on_end: Callable[[int], None],
        wrap: Callable[[Awaitable[int]], Awaitable[None]],
        refuse: Callable[[int, list[tuple[bytes, bytes]]], bool] | None = None,
    ) -> None:
        self.req, self.resp, self.upstream, self.conn, self.headers = req, resp, upstream, conn, headers
        self.marker, self.on_end, self.wrap, self.refuse = marker, on_end, wrap, refuse

    def abandon(self) -> None:
        """Drop the upstream side (a client gone, a timeout): the connection is not reused."""
        if self.conn.fast is self:
            self.conn.fast = None
            self.upstream.release(self.conn, False)

    def ready(self) -> None:
        conn = self.conn
        status = conn.status
        if (
            conn._head
            and conn.complete
            and status != 101
            and conn.error is None
            and (self.refuse is None or not self.refuse(status, conn.headers))
        ):
            hdrs = strip_hop_by_hop(conn.headers) if conn._hop else conn.headers
            self.resp._whole(status, hdrs, conn.take_all(), conn.trailers or None)
            self.upstream.release(conn, conn.keep_alive)  # resets the connection's state
            self.on_end(status)
            self.marker.finish()
            return
        self.marker.escalate(self.wrap(self._rest()))

    async def _rest(self) -> int:
        conn, resp = self.conn, self.resp
        if not conn._head:
            # Nothing came back: a dead pooled connection (the keep-alive race) or a failure before
            # the head; a GET without a body is replayable, as forward() would retry it.
            self.upstream.release(conn, False)
            if conn._got_bytes:
                raise UpstreamError(f"upstream {self.upstream.host}:{self.upstream.port}: {conn.error}")
            return await forward(self.req, resp, self.upstream, self.headers, refuse=self.refuse, replay=True)
        ok = False
        if self.refuse is not None and self.refuse(conn.status, conn.headers):
            self.upstream.release(conn, False)
            where = f"{self.upstream.host}:{self.upstream.port}"
            raise UpstreamError(f"upstream {where} did not take the request ({conn.status})", connect=True)
        try:
            status = await _relay_response(resp, conn)
            ok = conn.keep_alive and conn.complete
            return status
        finally:
            self.upstream.release(conn, ok)


async def _passthrough(rest: Awaitable[int]) -> None:
    await rest


def _no_end(status: int) -> None:
    pass


def forward_fast(
    req: Request,
    resp: Responder,
    upstream: Upstream,
    headers: list[tuple[bytes, bytes]],
    marker: FastRequest,
    *,
    on_end: Callable[[int], None] | None = None,
    wrap: Callable[[Awaitable[int]], Awaitable[None]] = _passthrough,
    refuse: Callable[[int, list[tuple[bytes, bytes]]], bool] | None = None,
) -> FastExchange | None:
    """Take a body-less GET in callbacks only: its head goes out on a free pooled connection now,
    and a whole answer in one read goes back from the connection's callback, with no task and no
    future. Anything else on the way (a streamed answer, a dead pooled connection) goes on in a task
    through ``wrap``. None: not this request (a body, an upgrade, no free connection): the task path."""
    if req.method != b"GET" or req.has_body or req.upgrade is not None or type(resp) is not Responder:
        return None
    conn = upstream.acquire_idle()
    if conn is None:
        return None
    try:
        conn.write(_request_head(req, headers, None, upstream.host, upstream.port))
    except ConnectionError:
        upstream.release(conn, False)
        return None
    ex = FastExchange(req, resp, upstream, conn, headers, marker, on_end or _no_end, wrap, refuse)
    conn.fast = ex

    def cancelled() -> None:
        ex.abandon()
        marker.finish()

    marker.on_cancel = cancelled
    return ex
