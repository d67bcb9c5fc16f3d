"""One HTTP/2 stream seen through the HTTP/1.1 engine's Request/Responder interface, so handlers serve both.

H2Request.read() hands out DATA as it arrived and credits the peer's flow-control window only for what
the handler consumed: a handler that reads slowly slows its sender, and a stream never holds more than
its window. H2Responder.write() waits for the peer's window and for the socket; end(trailers) sends a
trailing HEADERS frame (gRPC's grpc-status); abort() resets only this stream.

They subclass the engine's classes for the type checker's sake and set every field themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from .h2_conn import H2Base
from .h2_guard import INTERNAL_ERROR
from .httpserver import Headers, Request, Responder

__all__ = ["CONNECTION_SPECIFIC", "H2Request", "H2Responder", "h2_fields"]

# RFC 9113 8.2.2: fields that are about one HTTP/1.1 connection and must not appear in HTTP/2.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"http2-settings"}
)


def h2_fields(
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
) -> list[tuple[bytes, bytes]]:
    """Lower-cased regular fields fit for HTTP/2: connection-specific ones dropped, TE only as "trailers"."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        n = name.lower()
        if n in CONNECTION_SPECIFIC or n.startswith(b":"):
            continue
        if n == b"te":
            if b"trailers" in value.lower():
                out.append((b"te", b"trailers"))
            continue
        out.append((n, value))
    return out


class H2Request(Request):
    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_fail",
        "_has_body",
        "_read_any",
        "_sid",
        "_unread",
        "_wait",
        "trailers",
    )

    def __init__(
        self,
        conn: H2Base,
        stream_id: int,
        method: bytes,
        target: bytes,
        headers: Headers,
        *,
        has_body: bool,
        content_length: int | None,
    ) -> None:
        self._conn = conn
        self._sid = stream_id
        self.method = method
        self.target = target
        self.version = b"2"
        self.headers = headers
        self.host = headers.get(b"host", b"") or b""
        self.client = conn.peer
        self.upgrade = None
        self.content_length = content_length
        self.chunked = has_body and content_length is None  # length unknown: an HTTP/1.1 hop must chunk it
        self.keep_alive = True
        self.trailers: list[tuple[bytes, bytes]] = []
        self._has_body = has_body
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._unread = 0  # flow-controlled bytes received and not yet handed to the handler
        self._done = not has_body
        self._fail: BaseException | None = None
        self._wait: asyncio.Future[None] | None = None
        self._read_any = False

    @property
    def stream_id(self) -> int:
        return self._sid

    @property
    def has_body(self) -> bool:
        return self._has_body

    @property
    def body_complete(self) -> bool:
        return self._done and not self._chunks

    def _body_started(self) -> bool:
        return self._read_any

    # -- called by the connection ----------------------------------------------------------------
    def _on_data(self, data: bytes, flow_controlled: int) -> None:
        if not data:
            self._conn.ack(self._sid, flow_controlled)  # padding only
            return
        self._chunks.append((data, flow_controlled))
        self._unread += flow_controlled
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        self._done = True
        if error is not None and self._fail is None:
            self._fail = error
        self._wake()

    def _discard(self) -> int:
        """Drop unread data; returns its flow-controlled size, which the connection must credit back."""
        n = self._unread
        self._chunks.clear()
        self._unread = 0
        return n

    def _wake(self) -> None:
        w = self._wait
        if w is not None and not w.done():
            w.set_result(None)

    async def read(self) -> bytes:
        """The next DATA received on this stream (several frames joined if they queued up); b"" at the end."""
        while not self._chunks:
            if self._done:
                if self._fail is not None:
                    raise ConnectionResetError(str(self._fail)) from self._fail
                return b""
            self._wait = asyncio.get_running_loop().create_future()
            try:
                await self._wait
            finally:
                self._wait = None
        if len(self._chunks) == 1:
            data, fc = self._chunks.popleft()
        else:
            data = b"".join(c for c, _ in self._chunks)
            fc = sum(n for _, n in self._chunks)
            self._chunks.clear()
        self._unread -= fc
        self._read_any = True
        self._conn.ack(self._sid, fc)
        return data


class H2Responder(Responder):
    __slots__ = ("_conn", "_done", "_method", "_nobody", "_pending", "_sid")

    def __init__(self, conn: H2Base, stream_id: int, method: bytes) -> None:
        self._conn = conn
        self._sid = stream_id
        self._method = method
        self.started = False
        self.status = None
        self.last_write = time.monotonic()
        self.keep_alive = True
        self._pending: list[tuple[bytes, bytes]] | None = None
        self._done = False
        self._nobody = False
        self._extra = None

    @property
    def ended(self) -> bool:
        return self._done

    async def start(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
        reason: bytes | None = None,
        *,
        flush: bool = True,
    ) -> None:
        """Send the response HEADERS (with flush=False they leave with the first write or with end)."""
        if self.started:
            raise RuntimeError("response already started")
        if status == 101 or status < 200:
            raise RuntimeError(f"status {status} cannot be sent over HTTP/2")
        self.started = True
        self.status = status
        self._nobody = self._method == b"HEAD" or status in (204, 304)
        fields = [(b":status", b"%d" % status), *h2_fields(headers)]
        if self._extra is not None:
            fields += h2_fields(self._extra)
        self.last_write = time.monotonic()
        if flush:
            c = self._conn
            c.call(c.h2.send_headers, self._sid, fields, end_stream=False)
            c.flush()
        else:
            self._pending = fields

    def _send_pending(self, end_stream: bool) -> None:
        fields, self._pending = self._pending, None
        if fields is not None:
            c = self._conn
            c.call(c.h2.send_headers, self._sid, fields, end_stream=end_stream)

    async def write(self, data: bytes) -> None:
        if not self.started:
            raise RuntimeError("write() before start()")
        if self._done:
            raise RuntimeError("write() after end()")
        if not data or self._nobody:
            return
        self._send_pending(False)
        await self._conn.send_data(self._sid, bytes(data))
        self.last_write = time.monotonic()

    async def end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self._done:
            return
        if not self.started:
            await self.start(
                204 if self._method != b"HEAD" else 200, [(b"content-length", b"0")], flush=False
            )
        self._done = True
        c = self._conn
        fields = h2_fields(trailers) if trailers else None
        if self._pending is not None:
            self._send_pending(end_stream=not fields)
        elif not fields:
            c.call(c.h2.end_stream, self._sid)
        if fields:
            c.call(c.h2.send_headers, self._sid, fields, end_stream=True)
        c.flush()
        self.last_write = time.monotonic()

    def abort(self) -> None:
        """Reset this stream only (the connection goes on): a response cut short never looks whole."""
        self._done = True
        self._conn.reset(self._sid, INTERNAL_ERROR)

    async def write_raw(self, data: bytes) -> None:
        await self.write(data)
