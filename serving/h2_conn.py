"""What both ends of an h2c connection share: the h2 state machine behind the frame guard, writes that wait
for the peer's flow-control window and for the socket, and the GOAWAY-then-close sequence."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from .h2_guard import INTERNAL_ERROR, FrameScanner, GoAway, GuardError, TokenBucket, goaway_frame
from .httpserver import adopt, peer_of

__all__ = ["H2Base", "StreamGone"]

log = logging.getLogger("zeroscale.h2")

_MAX_CHUNK = (
    65536  # per DATA frame written before waiting for the socket, whatever frame size the peer allows
)
_LINGER = 1.0  # seconds a connection we refused stays half-open so that our GOAWAY reaches the peer


class StreamGone(ConnectionResetError):
    """The stream was reset, or its connection closed, while we were writing to it."""


class _LocalSettings(h2.settings.Settings):
    """Our SETTINGS as sent, except that h2's own check of concurrent inbound streams uses ``hard_limit``.

    h2 answers a stream past SETTINGS_MAX_CONCURRENT_STREAMS by ending the whole connection, while
    RFC 9113 5.1.2 asks for a stream error; the server refuses such streams itself (REFUSED_STREAM) and
    leaves h2's connection error for peers that go far past it.
    """

    def __init__(self, client: bool, values: dict[int, int], hard_limit: int) -> None:
        super().__init__(client=client, initial_values=values)  # type: ignore[arg-type]
        self.hard_limit = hard_limit

    @property
    def max_concurrent_streams(self) -> int:
        return self.hard_limit

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


class H2Base(asyncio.Protocol):
    """An h2 connection on an asyncio transport. Subclasses handle events and GOAWAYs."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        client_side: bool,
        settings: dict[int, int],
        connection_window: int,
        control_rate: float,
        control_burst: int,
        max_write_buffer: int,
    ) -> None:
        self.loop = loop
        cfg = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        conn = h2.connection.H2Connection(cfg)
        max_streams = settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS, 100)
        conn.local_settings = _LocalSettings(client_side, settings, 2 * max_streams)
        max_frame = settings.get(h2.settings.SettingCodes.MAX_FRAME_SIZE, 16384)
        max_headers = settings.get(h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE, 65536)
        conn.max_inbound_frame_size = max_frame
        conn.decoder.max_header_list_size = max_headers
        self.h2 = conn
        self.connection_window = connection_window
        self._conn_step = max(1, connection_window // 4)
        self._conn_owed = 0
        self._stream_step = max(1, settings.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE, 65535) // 4)
        self._stream_owed: dict[int, int] = {}
        self.scanner = FrameScanner(
            max_frame_size=max_frame,
            max_header_block=max_headers,
            bucket=TokenBucket(control_rate, control_burst),
            preface=not client_side,
        )
        self.max_write_buffer = max_write_buffer
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.closed = False
        self.failed = False  # we sent an error GOAWAY: nothing more is read or written
        self._paused = False
        self._flush_due = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._window_waiters: dict[int, asyncio.Future[None]] = {}

    # -- transport -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = adopt(transport)
        self.peer = peer_of(transport)

    def start_h2(self, upgrade_settings: bytes | None = None, *, upgrade: bool = False) -> None:
        """Send our preface/SETTINGS and open the connection window to its configured size."""
        if upgrade:
            self.h2.initiate_upgrade_connection(upgrade_settings)
        else:
            self.h2.initiate_connection()
        extra = self.connection_window - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        err = StreamGone("connection closed")
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(err)
        self._drain_waiters.clear()
        self.wake_window(0)
        self.on_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def drain(self) -> None:
        if self.closed:
            raise StreamGone("connection closed")
        if self._paused:
            fut = self.loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def flush(self) -> None:
        """Write what h2 has queued, once, after the callbacks and tasks already due this loop turn:
        the frames of several operations and streams then leave in one system call."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        self.write_now()

    def write_now(self) -> None:
        data = self.h2.data_to_send()
        t = self.transport
        if data and t is not None and not self.closed and not self.failed:
            t.write(data)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.write_now()
            self.transport.close()

    # -- receiving -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.failed:
            return  # lingering after our GOAWAY: discard
        try:
            passed, goaways = self.scanner.feed(data, self.loop.time())
        except GuardError as e:
            self.fail(e.code, str(e))
            return
        if passed:
            try:
                events = self.h2.receive_data(passed)
            except h2.exceptions.ProtocolError as e:
                # h2 has queued the GOAWAY with the error code the RFC asks for.
                code = int(getattr(e, "error_code", 1) or 1)
                log.info("h2 peer %s: %s (GOAWAY %d)", self.peer, e, code)
                self._linger()
                return
            try:
                for ev in events:
                    if isinstance(ev, h2.events.DataReceived):
                        self._credit_connection(ev.flow_controlled_length or 0)
                    self.on_event(ev)
            except Exception:
                log.exception("h2 event handling failed for peer %s", self.peer)
                self.fail(INTERNAL_ERROR, "internal error")
                return
        for g in goaways:
            self.on_goaway(g)
        self.flush()
        t = self.transport
        if t is not None and not self.closed and t.get_write_buffer_size() > self.max_write_buffer:
            # DATA writers wait for the socket (drain); what piles up beyond that is our answers to the
            # peer's frames (PING, SETTINGS, ...), which it makes us send and does not read.
            log.info("h2 peer %s does not read what it asks for; closing", self.peer)
            self.abort()

    def eof_received(self) -> bool:
        return False

    def fail(self, code: int, message: str) -> None:
        """Answer a broken limit: GOAWAY with ``code``, stop reading and writing, close shortly."""
        if self.failed or self.closed:
            return
        log.info("h2 peer %s: %s (GOAWAY %d)", self.peer, message, code)
        self.write_now()
        if self.transport is not None:
            self.transport.write(
                goaway_frame(self.h2.highest_inbound_stream_id, code, message.encode()[:128])
            )
        self._linger()

    def _linger(self) -> None:
        # Closing a socket with unread input makes the kernel send RST, which can destroy the GOAWAY
        # before the peer reads it; so: send FIN, discard what still comes for a moment, then close.
        self.write_now()
        self.failed = True
        self.on_failed()
        t = self.transport
        if t is None or self.closed:
            return
        if t.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                t.write_eof()
        self.loop.call_later(_LINGER, self.abort)

    # -- flow-controlled writes ------------------------------------------------------------------
    def wake_window(self, stream_id: int) -> None:
        if stream_id == 0:
            waiters = list(self._window_waiters.values())
            self._window_waiters.clear()
        else:
            w = self._window_waiters.pop(stream_id, None)
            waiters = [w] if w is not None else []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _window(self, stream_id: int) -> int:
        while True:
            if self.closed or self.failed:
                raise StreamGone("connection closed")
            try:
                n = self.h2.local_flow_control_window(stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError, KeyError) as e:
                raise StreamGone(f"stream {stream_id} closed") from e
            if n > 0:
                return n
            fut = self.loop.create_future()
            self._window_waiters[stream_id] = fut
            try:
                await fut
            finally:
                if self._window_waiters.get(stream_id) is fut:
                    del self._window_waiters[stream_id]

    async def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """DATA frames no larger than the peer's window and frame size; waits for window and socket."""
        while data:
            n = min(await self._window(stream_id), len(data), self.h2.max_outbound_frame_size, _MAX_CHUNK)
            chunk, data = data[:n], data[n:]
            self.call(self.h2.send_data, stream_id, chunk, end_stream=end_stream and not data)
            self.write_now()  # at once: drain() must see this frame in the socket buffer
            await self.drain()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an h2 send operation; a stream or connection that is gone raises StreamGone."""
        if self.closed or self.failed:
            raise StreamGone("connection closed")
        try:
            return fn(*args, **kwargs)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as e:
            raise StreamGone(str(e) or "stream closed") from e
        except h2.exceptions.ProtocolError as e:
            raise StreamGone(f"h2 state: {e}") from e

    def reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM, unless the stream is already closed."""
        with contextlib.suppress(StreamGone):
            self.call(self.h2.reset_stream, stream_id, code)
            self.flush()

    # Flow control, receive side. The connection window is credited as DATA arrives and a stream's
    # window as its reader consumes: the stream windows bound what waits unread (at most
    # max_concurrent_streams x stream_window per connection), and a stream whose reader stalls (a
    # request queued behind the breaker, a slow client) cannot starve its neighbours by eating the
    # shared connection window. Credits go out in steps of a quarter window, one WINDOW_UPDATE each.
    def _credit_connection(self, size: int) -> None:
        self._conn_owed += size
        if self._conn_owed >= self._conn_step and not self.closed and not self.failed:
            with contextlib.suppress(h2.exceptions.ProtocolError, ValueError):
                self.h2.increment_flow_control_window(self._conn_owed)
            self._conn_owed = 0

    def ack(self, stream_id: int, size: int) -> None:
        """The reader of stream_id consumed ``size`` flow-controlled bytes: the peer may send as much more."""
        if size <= 0 or self.closed or self.failed:
            return
        owed = self._stream_owed.pop(stream_id, 0) + size
        if owed < self._stream_step:
            self._stream_owed[stream_id] = owed
            return
        with contextlib.suppress(h2.exceptions.ProtocolError, ValueError, KeyError):
            self.h2.increment_flow_control_window(owed, stream_id=stream_id)
        self.flush()

    def forget(self, stream_id: int) -> None:
        """The stream is over: no window is owed to it any more."""
        self._stream_owed.pop(stream_id, None)

    # -- for subclasses --------------------------------------------------------------------------
    def on_event(self, ev: h2.events.Event) -> None:
        raise NotImplementedError

    def on_goaway(self, g: GoAway) -> None:
        raise NotImplementedError

    def on_lost(self, exc: Exception | None) -> None:
        raise NotImplementedError

    def on_failed(self) -> None:
        """We sent an error GOAWAY: stop the streams."""
