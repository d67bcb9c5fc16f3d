"""HTTP/1.1 server on asyncio protocols with the httptools (llhttp) parser: the request path's front door.

One handler task per request; bodies stream through a bounded buffer with socket-level backpressure;
a client that disconnects cancels its handler, so whatever it waited for (a breaker slot, a pod, an
upstream response) is given up at once. Malformed input never reaches a handler: it gets a 4xx and
the connection is closed.

Per request the engine keeps to the minimum it can in Python: the framing fields are set aside while
the parser reports headers (no rescans), header and keep-alive timeouts are a deadline per connection
checked by one periodic sweep per server (no loop timer armed and cancelled per request), status
lines and the Date line are cached, and an answer that is complete when it starts leaves in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools
from mypy_extensions import mypyc_attr

__all__ = ["FastRequest", "Handler", "Headers", "HttpServer", "Request", "Responder", "ServerLimits", "serve"]

log = logging.getLogger("zeroscale.http")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    header_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    body_buffer: int = 262144


class Headers:
    """An ordered multi-map of header fields; names are lower-case bytes."""

    __slots__ = ("_index", "_indexed", "items")

    def __init__(self, items: list[tuple[bytes, bytes]] | None = None) -> None:
        self.items: list[tuple[bytes, bytes]] = items if items is not None else []
        self._index: dict[bytes, bytes] | None = None
        self._indexed = 0

    def _lookup(self) -> dict[bytes, bytes]:
        # name -> first value, built in C on the first look-up (a handler asks for several fields;
        # a Python scan of the list per field costs more); rebuilt if items grew meanwhile.
        index = self._index
        if index is None or self._indexed != len(self.items):
            index = self._index = dict(reversed(self.items))
            self._indexed = len(self.items)
        return index

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        return self._lookup().get(name, default)

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.items if n == name]

    def __contains__(self, name: object) -> bool:
        return name in self._lookup()

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


def adopt(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A new connection's transport, with Nagle off (small answers must not wait for an ACK)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # uvloop's transports implement asyncio.Transport without subclassing it.
    return cast(asyncio.Transport, transport)


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    peer = transport.get_extra_info("peername")
    return (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_REASONS: dict[int, bytes] = {int(s): s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {code: b"HTTP/1.1 %d %s\r\n" % (code, r) for code, r in _REASONS.items()}
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
# The header fields the engine itself looks at; every other field is only collected.
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding", b"expect", b"upgrade"})


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def _status_line(status: int, reason: bytes | None) -> bytes:
    if reason is None:
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
        reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


_date_cache: list[Any] = [0, b"", b""]


def _http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _refresh_date(now)
    return bytes(_date_cache[1])


def _date_line() -> bytes:
    """The whole "date: ...\r\n" field line, formatted once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _refresh_date(now)
    line: bytes = _date_cache[2]
    return line


def _refresh_date(now: int) -> None:
    date = formatdate(now, usegmt=True).encode()
    _date_cache[0] = now
    _date_cache[1] = date
    _date_cache[2] = b"date: " + date + b"\r\n"


# serving.h2_stream subclasses these two in plain Python (an HTTP/2 stream behind the same interface).
@mypyc_attr(allow_interpreted_subclasses=True)
class Request:
    __slots__ = (
        "_body",
        "_body_bytes",
        "_complete",
        "_consumed",
        "_error",
        "_expect_continue",
        "_proto",
        "_waiter",
        "chunked",
        "client",
        "content_length",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        proto: HttpProtocol,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: Headers,
        host: bytes | None = None,
    ) -> None:
        self._proto = proto
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host if host is not None else headers.get(b"host", b"") or b""
        self.client = proto.peer
        self.upgrade: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self._body: deque[bytes] = deque()
        self._body_bytes = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._expect_continue = False
        self._consumed = False

    def _body_started(self) -> bool:
        return self._consumed

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def body_complete(self) -> bool:
        return self._complete and not self._body

    # called by the protocol
    def _feed(self, data: bytes) -> None:
        self._body.append(data)
        self._body_bytes += len(data)
        if self._body_bytes > self._proto.limits.body_buffer:
            self._proto.pause_reading_for_body()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        self._complete = True
        if error is not None and self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read(self) -> bytes:
        """The next chunk of the body (after an upgrade: of the client's raw stream); b"" at the end."""
        if self._expect_continue:
            self._expect_continue = False
            self._proto.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self._body:
            if self._complete:
                if self._error is not None:
                    raise ConnectionError(str(self._error)) from self._error
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self._body) == 1:
            data = self._body.popleft()
        else:
            data = b"".join(self._body)
            self._body.clear()
        self._body_bytes = 0
        self._consumed = True
        self._proto.resume_reading_for_body()
        return data


@mypyc_attr(allow_interpreted_subclasses=True)
class Responder:
    __slots__ = (
        "_chunked",
        "_ended",
        "_extra",
        "_head",
        "_no_body",
        "_proto",
        "_request",
        "_task",
        "keep_alive",
        "last_write",
        "started",
        "status",
    )

    def __init__(self, proto: HttpProtocol, request: Request) -> None:
        self._proto = proto
        self._request = request
        self.started = False
        self.status: int | None = None
        self.last_write = time.monotonic()
        self.keep_alive = request.keep_alive
        self._chunked = False
        self._no_body = False
        self._ended = False
        self._head: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._extra: list[tuple[bytes, bytes]] | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    def add_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Fields for the head that start() or send() will make, whoever calls them (a forward, a 502)."""
        if self._extra is None:
            self._extra = list(headers)
        else:
            self._extra += headers

    async def start(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
        reason: bytes | None = None,
        *,
        flush: bool = True,
    ) -> None:
        """Write the status line and headers. With flush=False they go out with the first write or end."""
        head = self._make_head(status, headers, reason)
        if flush:
            self._proto.write_raw(head)
        else:
            self._head = head

    def _make_head(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
        reason: bytes | None,
    ) -> bytes:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        req = self._request
        has_cl = has_date = False
        parts = [_status_line(status, reason)]
        for name, value in headers:
            if name == b"content-length":
                has_cl = True
            elif name == b"date":
                has_date = True
            parts += (name, b": ", value, b"\r\n")
        if self._extra is not None:
            for name, value in self._extra:
                parts += (name, b": ", value, b"\r\n")
        if status == 101:
            self._no_body = True
            self.keep_alive = False
        else:
            no_body = self._no_body = req.method == b"HEAD" or status < 200 or status == 204 or status == 304
            if not no_body and not has_cl:
                if req.version == b"1.1":
                    self._chunked = True
                    parts.append(b"transfer-encoding: chunked\r\n")
                else:
                    self.keep_alive = False
            if self._proto.server.stopping:
                self.keep_alive = False
            if not self.keep_alive:
                parts.append(b"connection: close\r\n")
            elif req.version == b"1.0":
                parts.append(b"connection: keep-alive\r\n")
            if not has_date:
                parts.append(_date_line())
        parts.append(b"\r\n")
        self.last_write = time.monotonic()
        return b"".join(parts)

    async def write(self, data: bytes) -> None:
        if not self.started:
            raise RuntimeError("write() before start()")
        if self._ended:
            raise RuntimeError("write() after end()")
        if not data or (self._no_body and self.status != 101):
            return
        head = self._head
        if head is not None:
            self._head = None
        else:
            head = b""
        proto = self._proto
        if self._chunked:
            proto.write_raw(b"%s%x\r\n%s\r\n" % (head, len(data), data))
        elif head:
            proto.write_raw(head + data)
        else:
            proto.write_raw(data)
        self.last_write = time.monotonic()
        if proto._paused_writing or proto._closed:
            await proto.drain()

    async def end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self._ended:
            return
        if not self.started:
            await self.start(204 if self._request.method != b"HEAD" else 200, [(b"content-length", b"0")])
        self._end(trailers)

    def _end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self._ended = True
        tail = self._head or b""
        self._head = None
        if self._chunked:
            if trailers:
                tail += b"0\r\n" + b"".join(b"%s: %s\r\n" % t for t in trailers) + b"\r\n"
            else:
                tail += b"0\r\n\r\n"
        if tail:
            self._proto.write_raw(tail)
        self.last_write = time.monotonic()
        self._proto.response_done(self)

    async def send(
        self,
        status: int,
        body: bytes | str = b"",
        headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        hdrs = [(b"content-type", content_type), (b"content-length", b"%d" % len(data)), *headers]
        await self.start(status, hdrs, flush=False)
        if data:
            await self.write(data)
        await self.end()

    def _whole(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
        body: bytes,
        trailers: list[tuple[bytes, bytes]] | None,
    ) -> None:
        """Head, the whole body and the end in one write (forward's path for answers already buffered)."""
        head = self._make_head(status, headers, None)
        if not body or self._no_body:
            self._head = head
        elif self._chunked:
            self._head = b"%s%x\r\n%s\r\n" % (head, len(body), body)
        else:
            self._head = head + body
        self._end(trailers)

    def abort(self) -> None:
        """Close the client connection at once (a response cut short must not look complete)."""
        self._ended = True
        self._proto.close()

    async def write_raw(self, data: bytes) -> None:
        """Bytes as they are, after a 101 (tunnelled protocols)."""
        self._proto.write_raw(data)
        self.last_write = time.monotonic()
        await self._proto.drain()


Handler = Callable[[Request, Responder], Awaitable[None]]

_NO_DEADLINE, _HEADER_DEADLINE, _KEEPALIVE_DEADLINE = 0, 1, 2


class FastRequest:
    """A request a server's fast hook took: in progress without a task.

    It stands where the handler task would (``HttpProtocol._task``), so every "is a request in
    progress" check holds; ``cancel()`` (the client went away) calls ``on_cancel``. The hook ends it
    with ``finish()`` once the response has ended, or hands the rest to a task with ``escalate``.
    Both drop its references, so a finished request leaves no reference cycle for the collector.
    """

    __slots__ = ("_next", "_proto", "_resp", "on_cancel")

    def __init__(self, proto: HttpProtocol, resp: Responder) -> None:
        self._proto: HttpProtocol | None = proto
        self._resp: Responder | None = resp
        self._next: asyncio.Task[None] | None = None
        self.on_cancel: Callable[[], None] | None = None

    def done(self) -> bool:
        return self._proto is None

    def cancel(self, msg: object = None) -> bool:
        if self._proto is None:
            # Handed over: whoever holds this marker (a timeout sweeper) cancels the task instead.
            return self._next.cancel(msg) if self._next is not None else False
        cb = self.on_cancel
        if cb is not None:
            cb()
        return True

    def finish(self) -> None:
        proto, resp = self._proto, self._resp
        if proto is None or resp is None:
            return
        self._proto = self._resp = None
        self.on_cancel = None
        proto.server.active -= 1
        if proto._task is self:
            proto._task = None
        resp._task = None
        if not resp._ended:
            proto.close()
        else:
            proto._maybe_next()

    def escalate(self, rest: Awaitable[None]) -> None:
        """Go on in a task, as if the handler had been ``rest`` from the start."""
        proto, resp = self._proto, self._resp
        if proto is None or resp is None:
            return
        self._proto = self._resp = None
        self.on_cancel = None
        task = proto._loop.create_task(proto._run(resp._request, resp, rest))
        self._next = proto._task = resp._task = task


# True: the hook took the request; False: the handler takes it in a task; an awaitable: a task runs it
# instead of the handler (a hook that made a decision the handler must not make again, such as a pick).
FastHook = Callable[[Request, Responder, FastRequest], bool | Awaitable[None]]


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_body_paused",
        "_closed",
        "_deadline",
        "_deadline_kind",
        "_drain_waiters",
        "_header_bytes",
        "_headers",
        "_loop",
        "_paused_writing",
        "_pipeline",
        "_read_paused",
        "_rejected",
        "_request",
        "_responder",
        "_special",
        "_task",
        "_upgraded",
        "_url",
        "limits",
        "parser",
        "peer",
        "server",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self._loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._special: list[tuple[bytes, bytes]] = []  # the _FRAMING fields among _headers
        self._header_bytes = 0
        self._request: Request | None = None
        self._responder: Responder | None = None
        self._task: asyncio.Task[None] | None = None
        self._pipeline: deque[Request] = deque()
        # One deadline per connection (header or keep-alive), checked by the server's periodic sweep:
        # arming it is a float store, where a loop timer per request costs a heap entry and a cancel.
        self._deadline = 0.0
        self._deadline_kind = _NO_DEADLINE
        self._paused_writing = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._body_paused = False
        self._read_paused = False
        self._upgraded = False
        self._closed = False
        # What a parser callback refused, for data_received: httptools wraps the callback's exception
        # in HttpParserCallbackError, and its __context__ is not reliable once the code is compiled.
        self._rejected: _BadRequest | None = None

    # -- connection ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = adopt(transport)
        self.peer = peer_of(transport)
        self.server.connections.add(self)
        self._arm(_HEADER_DEADLINE, self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        self._deadline_kind = _NO_DEADLINE
        err = exc or ConnectionResetError("client closed the connection")
        if self._request is not None and not self._request._complete:
            self._request._finish(err)
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(ConnectionResetError("client closed the connection"))
        self._drain_waiters.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._pipeline.clear()

    def eof_received(self) -> bool:
        if self._upgraded and self._request is not None:
            self._request._finish()
            return True  # keep the write side open for the tunnel's other direction
        return False

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        self._maybe_next()

    async def drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("client closed the connection")
        if self._paused_writing:
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()

    def keep_alive_allowed(self) -> bool:
        return not self.server.stopping

    def pause_reading_for_body(self) -> None:
        if not self._body_paused and self.transport is not None:
            self._body_paused = True
            self._update_reading()

    def resume_reading_for_body(self) -> None:
        if self._body_paused:
            self._body_paused = False
            self._update_reading()

    def _update_reading(self) -> None:
        want_pause = self._body_paused or bool(self._pipeline)
        if self.transport is None or self._closed:
            return
        if want_pause and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        elif not want_pause and self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    # -- timers --------------------------------------------------------------------------------
    def _arm(self, kind: int, delay: float) -> None:
        self._deadline = self._loop.time() + delay
        self._deadline_kind = kind
        if self.server._sweep is None:
            self.server._ensure_sweep()

    def _check_deadline(self, now: float) -> None:
        kind = self._deadline_kind
        if kind == _NO_DEADLINE or now < self._deadline:
            return
        self._deadline_kind = _NO_DEADLINE
        if kind == _HEADER_DEADLINE:
            self._on_header_timeout()
        else:
            self._idle_timeout()

    def _on_header_timeout(self) -> None:
        if self._url or self._headers:
            self._reject(408, "request header timeout")
        else:
            self.close()  # idle keep-alive connection, or a client that never spoke

    # -- parsing -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            if self._request is not None:
                self._request._feed(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._start_tunnel(data[int(e.args[0]) :])
        except _BadRequest as refused:  # one name per except type: a compiled build types each name once
            self._rejected = None
            self._reject(refused.status, str(refused))
        except httptools.HttpParserCallbackError:
            bad = self._rejected
            if bad is not None:
                self._rejected = None
                self._reject(bad.status, str(bad))
            else:
                log.exception("internal error while parsing a request")
                self._reject(500, "internal error")
        except httptools.HttpParserError as perr:
            self._reject(400, f"malformed request: {perr}")

    def _refuse(self, status: int, message: str) -> _BadRequest:
        """The exception a parser callback raises for a request to answer with ``status``."""
        self._rejected = bad = _BadRequest(status, message)
        return bad

    def _reject(self, status: int, message: str) -> None:
        if self._closed:
            return
        if self._responder is not None and self._responder.started:
            self.close()
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        body = message.encode()
        self.write_raw(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _reason(status), len(body), body)
        )
        self.close()

    # No on_message_begin (one Python call less per request): the per-message state is reset when
    # the head is complete, and the header timeout starts with the first bytes of the request-target.
    def on_url(self, url: bytes) -> None:
        if not self._url and self._task is None and self._deadline_kind != _HEADER_DEADLINE:
            self._arm(_HEADER_DEADLINE, self.limits.header_timeout)
        self._url += url
        if len(self._url) > self.limits.max_request_line:
            raise self._refuse(414, "request URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        limits = self.limits
        if self._header_bytes > limits.max_header_bytes or len(self._headers) >= limits.max_headers:
            raise self._refuse(431, "request header fields too large")
        name = name.lower()
        self._headers.append((name, value))
        if name in _FRAMING:
            self._special.append((name, value))

    def on_headers_complete(self) -> None:
        # The framing fields were set aside while parsing: this looks at those few, not at every field.
        host: bytes | None = None
        hosts = 0
        cls: list[bytes] = []
        te: list[bytes] = []
        expect: bytes | None = None
        upgrade: bytes | None = None
        for name, value in self._special:
            if name == b"host":
                hosts += 1
                if host is None:
                    host = value
            elif name == b"content-length":
                cls.append(value)
            elif name == b"transfer-encoding":
                te.append(value)
            elif name == b"expect":
                if expect is None:
                    expect = value
            elif upgrade is None:
                upgrade = value
        p = self.parser
        raw_version = p.get_http_version()
        version = _VERSIONS.get(raw_version)
        if version is None:
            # HTTP/0.9 (a request line with no version) or a major version this server does not speak:
            # forwarding it as HTTP/1.1 would be a different request than the client sent.
            raise self._refuse(400, f"unsupported HTTP version: {raw_version!r}")
        req = Request(self, p.get_method(), self._url, version, Headers(self._headers), host or b"")
        if len(cls) > 1:
            raise self._refuse(400, "duplicate Content-Length")
        if cls and te:
            raise self._refuse(400, "Content-Length together with Transfer-Encoding")
        if cls:
            raw = cls[0].strip()
            if not raw.isdigit():
                raise self._refuse(400, "invalid Content-Length")
            req.content_length = int(raw)
        if te:
            if len(te) > 1 or te[0].strip().lower() != b"chunked":
                raise self._refuse(400, "unsupported Transfer-Encoding")
            req.chunked = True
        if req.method == b"CONNECT":
            raise self._refuse(405, "CONNECT is not supported")
        if req.version == b"1.1" and not host:
            raise self._refuse(400, "missing Host header")
        if hosts > 1:
            raise self._refuse(400, "duplicate Host header")
        req.keep_alive = bool(p.should_keep_alive())
        if upgrade is not None and p.should_upgrade():
            req.upgrade = upgrade.strip()
        has_body = req.chunked or bool(req.content_length)
        if expect is not None and has_body and expect.lower() == b"100-continue":
            req._expect_continue = True
        if not has_body and req.upgrade is None:
            req._complete = True
        self._url = b""
        self._headers = []
        self._special = []
        self._header_bytes = 0
        if self._task is not None or self._pipeline or self._paused_writing:
            # Pipelined (or the client is not reading what we wrote): answer in order once the
            # current response is done and the client reads again; stop reading meanwhile. Its head
            # is complete: no header deadline (the wait is ours, as a running handler's would be).
            if self._task is None:
                self._deadline_kind = _NO_DEADLINE
            self._pipeline.append(req)
            self._update_reading()
            return
        self._begin(req)

    def _begin(self, req: Request) -> None:
        self._deadline_kind = _NO_DEADLINE
        self._request = req
        resp = self._responder = Responder(self, req)
        self.server.active += 1
        fast = self.server.fast
        rest: Awaitable[None] | None = None
        if fast is not None:
            marker = FastRequest(self, resp)
            self._task = resp._task = marker  # type: ignore[assignment]
            got = fast(req, resp, marker)
            if got is True:
                self.server.fast_taken += 1
                return
            self._task = resp._task = None
            if got is not False:
                rest = got  # what the hook decided, to go on in a task instead of the handler
        self._task = resp._task = self._loop.create_task(self._run(req, resp, rest))

    def on_body(self, body: bytes) -> None:
        req = self._pipeline[-1] if self._pipeline else self._request
        if req is not None:
            req._feed(body)

    def on_message_complete(self) -> None:
        req = self._pipeline[-1] if self._pipeline else self._request
        if req is not None and req.upgrade is None and not req._complete:
            req._finish()

    def _start_tunnel(self, rest: bytes) -> None:
        # llhttp stops at an upgrade request: what follows the head is the client's raw stream, which
        # the handler reads through Request.read() once the upstream agreed (101).
        self._upgraded = True
        if self._request is not None and rest:
            self._request._feed(rest)

    # -- running handlers ----------------------------------------------------------------------
    async def _run(self, req: Request, resp: Responder, rest: Awaitable[None] | None = None) -> None:
        try:
            await (self.server.handler(req, resp) if rest is None else rest)
            if not resp._ended and not self._closed:
                await resp.end()
        except asyncio.CancelledError:
            if not self._closed:
                self.close()
        except (ConnectionError, OSError):
            self.close()
        except Exception:
            log.exception("handler failed for %s %s", req.method.decode(), req.target[:200].decode("latin-1"))
            if not resp.started and not self._closed:
                resp.keep_alive = False
                with contextlib.suppress(Exception):
                    await resp.send(500, b"internal error")
            self.close()
        finally:
            self.server.active -= 1
            if self._task is resp._task:
                self._task = None
            if not resp._ended:
                self.close()
            else:
                self._maybe_next()

    def response_done(self, resp: Responder) -> None:
        req = self._request
        if (
            not resp.keep_alive
            or self._upgraded
            or req is None
            or not req._complete  # the request body was not read to its end: framing is lost
            or self.server.stopping
        ):
            self._loop.call_soon(self.close)
            return
        self._request = None
        self._responder = None
        if self._pipeline:
            self._maybe_next()
        else:
            self._arm(_KEEPALIVE_DEADLINE, self.limits.keepalive_timeout)

    def _maybe_next(self) -> None:
        """Start the next pipelined request once the last response is done and the client reads.

        A response written whole (head and body at once, without waiting) can fill the client's
        socket buffer; the next request then waits for resume_writing, so a client that sends
        requests without reading the answers holds at most one answer past the high-water mark.
        """
        if self._request is None and self._pipeline and not self._paused_writing and not self._closed:
            self._begin(self._pipeline.popleft())
            self._update_reading()

    def _idle_timeout(self) -> None:
        if self._task is None and not self._url and not self._headers:
            self.close()

    def close_if_idle(self) -> None:
        if self._task is None:
            self.close()


class HttpServer:
    """A listening HTTP/1.1 server; see serve()."""

    def __init__(self, handler: Handler, limits: ServerLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.handler = handler
        self.fast: FastHook | None = None
        self.limits = limits
        self.loop = loop
        self.connections: set[HttpProtocol] = set()
        self.active = 0
        self.fast_taken = 0  # requests the fast hook took whole (no handler task)
        self.stopping = False
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._sweep: asyncio.TimerHandle | None = None
        # Deadlines are checked this often: a header or keep-alive timeout fires at most one tick late.
        self._tick = max(0.01, min(1.0, limits.header_timeout / 10, limits.keepalive_timeout / 10))

    def _ensure_sweep(self) -> None:
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._tick, self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        now = self.loop.time()
        for conn in list(self.connections):
            conn._check_deadline(now)
        if self.connections:
            self._sweep = self.loop.call_later(self._tick, self._run_sweep)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let running handlers finish (up to timeout), close every connection."""
        self.stopping = True
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = self.loop.time() + timeout
        # Handlers end in their own tasks; a short poll keeps this free of per-request bookkeeping.
        while self.active > 0 and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        if self._sweep is not None and not self.connections:
            self._sweep.cancel()
            self._sweep = None


async def listen(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> tuple[asyncio.AbstractServer, int]:
    """Bind a listener (address reuse on) and say which port it got: port 0 asks for a free one."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        protocol_factory, host, port, backlog=backlog, reuse_address=True, reuse_port=reuse_port or None
    )
    # typeshed says a tuple, uvloop gives a list: read untyped, or a compiled build checks for a tuple.
    sockets: Sequence[socket.socket] = cast(Any, server).sockets or ()
    return server, int(sockets[0].getsockname()[1]) if sockets else port


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: ServerLimits | None = None,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> HttpServer:
    srv = HttpServer(handler, limits or ServerLimits(), asyncio.get_running_loop())
    srv._server, srv.port = await listen(
        lambda: HttpProtocol(srv), host, port, backlog=backlog, reuse_port=reuse_port
    )
    return srv
