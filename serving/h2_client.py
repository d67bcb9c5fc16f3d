"""One h2c connection to an upstream and its client streams, for serving.h2upstream's pool.

A stream's response DATA is credited back to its window only as it is read; a GOAWAY from the app
refuses (retryably) only the streams above its last-stream-id, and the others run to their end.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .h2_conn import H2Base
from .h2_guard import CANCEL, NO_ERROR, REFUSED_STREAM, GoAway, goaway_frame
from .h2_stream import h2_fields

if TYPE_CHECKING:
    from .h2upstream import H2Upstream

__all__ = ["H2ClientConn", "H2ClientStream", "Refused"]


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


class Refused(ConnectionResetError):
    """The upstream did not process the stream: safe to send again."""


class H2ClientStream:
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

    def __init__(self, conn: H2ClientConn, sid: int, local_ended: bool) -> None:
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

    @property
    def unread(self) -> int:
        """Flow-controlled bytes received and not yet read."""
        return self._unread

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


class H2ClientConn(H2Base):
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
        self.streams: dict[int, H2ClientStream] = {}
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

    def open(self, fields: list[tuple[bytes, bytes]], end_stream: bool) -> H2ClientStream:
        try:
            sid = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError as e:
            self.draining = True
            raise Refused("stream ids exhausted") from e
        self.call(self.h2.send_headers, sid, fields, end_stream=end_stream)
        st = H2ClientStream(self, sid, end_stream)
        self.streams[sid] = st
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.flush()
        return st

    def stream_done(self, st: H2ClientStream) -> None:
        if self.streams.pop(st.sid, None) is None or self.streams:
            return
        if self.draining:
            self._goodbye()
        elif not self.closed and not self.failed:
            self._idle = self.loop.call_later(self.pool.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if not self.streams:
            self.shutdown()

    def shutdown(self) -> None:
        """No new streams; close (GOAWAY, then FIN) now if idle, else after the last stream ends."""
        self.draining = True
        self.pool.forget_connection(self)
        if not self.streams:
            self._goodbye()

    def _goodbye(self) -> None:
        if self.closed or self.failed or self.transport is None:
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.write_now()
        self.transport.write(goaway_frame(0, NO_ERROR))
        self.close()

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
                err = Refused if code == REFUSED_STREAM else ConnectionResetError
                st.fail(err(f"upstream reset the stream ({_code_name(code)})"))
            self.wake_window(sid)
        elif isinstance(ev, h2.events.WindowUpdated):
            self.wake_window(sid)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
            self.wake_window(0)

    def on_goaway(self, g: GoAway) -> None:
        self.draining = True
        self.pool.forget_connection(self)
        for sid, st in list(self.streams.items()):
            if sid > g.last_stream_id:
                st.fail(Refused(f"upstream GOAWAY before stream {sid} (last {g.last_stream_id})"))
        if not self.streams:
            self._goodbye()

    def on_failed(self) -> None:
        self.pool.forget_connection(self)
        for st in list(self.streams.values()):
            st.fail(ConnectionResetError("upstream connection failed"))

    def on_lost(self, exc: Exception | None) -> None:
        self.pool.forget_connection(self)
        if self._idle is not None:
            self._idle.cancel()
        for st in list(self.streams.values()):
            st.fail(ConnectionResetError(f"upstream closed the connection{': ' + str(exc) if exc else ''}"))
