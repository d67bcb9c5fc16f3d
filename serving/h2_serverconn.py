"""One h2c server connection: streams become handler tasks with the HTTP/1.1 engine's interface.

Each stream is one handler task given an H2Request/H2Responder (serving.h2_stream), cancelled when the
peer resets the stream or the connection is lost. Streams past max_concurrent_streams are refused one
by one (running handlers count, so "rapid reset" cannot start unbounded work); a peer whose streams are
mostly reset young is sent away (ENHANCE_YOUR_CALM); a graceful GOAWAY lets open streams finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import h2.events
import h2.settings

from .h2_conn import H2Base
from .h2_guard import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    GoAway,
    ResetRatio,
    goaway_frame,
)
from .h2_stream import H2Request, H2Responder
from .h2_upgrade import UpgradeRequest
from .httpserver import Headers

if TYPE_CHECKING:
    from .h2server import H2Server

__all__ = ["H2Limits", "H2ServerProtocol"]

log = logging.getLogger("zeroscale.h2")

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
_BAD_SETTINGS = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 29\r\n"
    b"connection: close\r\n\r\ninvalid HTTP2-Settings header"
)


@dataclass(frozen=True, slots=True)
class H2Limits:
    max_concurrent_streams: int = 100
    max_header_list_size: int = 65536
    max_frame_size: int = 16384  # the RFC's default; we never ask peers for larger frames
    stream_window: int = 262144  # a stream's receive window: at most this much of a body waits unread
    connection_window: int = 1048576
    control_frames_per_second: float = 500.0  # SETTINGS, PING, PRIORITY, empty frames (gRPC pings too)
    control_frame_burst: int = 1000
    idle_timeout: float = 75.0  # a connection without streams is closed (GOAWAY) after this long
    max_write_buffer: int = 4194304  # unsent output past this means the peer does not read: abort

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value <= 0:
                raise ValueError(f"H2Limits.{f.name}: expected a positive number, got {value!r}")
        if not 16384 <= self.max_frame_size <= 16777215:
            raise ValueError(f"H2Limits.max_frame_size: expected 16384..16777215, got {self.max_frame_size}")
        for name in ("stream_window", "connection_window"):
            if getattr(self, name) > 2**31 - 1:
                raise ValueError(f"H2Limits.{name}: expected at most 2147483647, got {getattr(self, name)}")

    def settings(self) -> dict[int, int]:
        s = h2.settings.SettingCodes
        return {
            s.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
            s.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
            s.MAX_FRAME_SIZE: self.max_frame_size,
            s.INITIAL_WINDOW_SIZE: self.stream_window,
        }


_PREMATURE = 1.0  # seconds: a stream the client resets younger than this, handler running, was premature


class _Stream:
    __slots__ = ("premature", "req", "reset", "resp", "started", "task")

    def __init__(self, req: H2Request, resp: H2Responder, started: float) -> None:
        self.req = req
        self.resp = resp
        self.started = started
        self.task: asyncio.Task[None] | None = None
        self.reset = False  # the peer reset it, or the connection is gone
        self.premature = False  # the client reset it young while its handler ran


class H2ServerProtocol(H2Base):
    def __init__(self, server: H2Server, upgrade: UpgradeRequest | None = None) -> None:
        lim = server.limits
        super().__init__(
            server.loop,
            client_side=False,
            settings=lim.settings(),
            connection_window=lim.connection_window,
            control_rate=lim.control_frames_per_second,
            control_burst=lim.control_frame_burst,
            max_write_buffer=lim.max_write_buffer,
        )
        self.server = server
        self.streams: dict[int, _Stream] = {}
        self._upgrade = upgrade
        self._goaway_last: int | None = None  # set once we said GOAWAY: streams above it are refused
        self._peer_goaway = False
        self._idle: asyncio.TimerHandle | None = None
        self._resets = ResetRatio()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        up = self._upgrade
        if up is None:
            self.start_h2()
            self._arm_idle()
            return
        assert self.transport is not None
        try:
            # token68 may come without its base64 padding
            self.start_h2(up.settings + b"=" * (-len(up.settings) % 4), upgrade=True)
        except Exception as e:  # bad base64, a payload not in 6-byte entries, an invalid setting value
            log.info("h2c upgrade from %s: bad HTTP2-Settings: %s", self.peer, e)
            self.closed = True
            self.transport.write(_BAD_SETTINGS)
            self.transport.close()
            return
        self.transport.write(_SWITCHING)  # before the SETTINGS that start_h2 queued (flushed later)
        self._open(1, up.method, up.target, up.headers, ended=True)

    # -- events ----------------------------------------------------------------------------------
    def on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None and not st.reset:
                st.req._on_data(ev.data or b"", ev.flow_controlled_length or 0)
        elif isinstance(ev, h2.events.RequestReceived):
            self._on_request(ev)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.req._finish()
        elif isinstance(ev, h2.events.TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.req.trailers = [(bytes(n), bytes(v)) for n, v in ev.headers or ()]
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id or 0)
            if st is not None and not st.reset and self.loop.time() - st.started < _PREMATURE:
                st.premature = True
            self._stream_gone(ev.stream_id, "stream reset by the client")
        elif isinstance(ev, h2.events.WindowUpdated):
            self.wake_window(ev.stream_id or 0)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.wake_window(0)

    def _stream_gone(self, sid: int, why: str) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        st.reset = True
        st.req._finish(ConnectionResetError(why))
        st.req._discard()
        self.forget(sid)
        self.wake_window(sid)
        if st.task is not None and not st.task.done():
            st.task.cancel()

    def on_goaway(self, g: GoAway) -> None:
        # The client opens no more streams; those it started run to their end (RFC 9113 6.8).
        self._peer_goaway = True
        if not self.streams:
            self._linger()

    def on_failed(self) -> None:
        for sid in list(self.streams):
            self._stream_gone(sid, "connection failed")

    def on_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        for sid in list(self.streams):
            self._stream_gone(sid, "client closed the connection")

    # -- streams ---------------------------------------------------------------------------------
    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id or 0
        if (self._goaway_last is not None and sid > self._goaway_last) or len(
            self.streams
        ) >= self.server.limits.max_concurrent_streams:
            # Running handlers count, not h2's open streams: a stream the client reset stays counted
            # until its handler has stopped (so "rapid reset" cannot start unbounded work).
            self.reset(sid, REFUSED_STREAM)
            return
        pseudo: dict[bytes, bytes] = {}
        regular: list[tuple[bytes, bytes]] = []
        for name, value in ev.headers or ():
            n, v = bytes(name), bytes(value)
            if n.startswith(b":"):
                pseudo[n] = v
            else:
                regular.append((n, v))
        method = pseudo.get(b":method", b"GET")
        authority = pseudo.get(b":authority")
        if authority is not None:
            regular = [(b"host", authority)] + [(n, v) for n, v in regular if n != b"host"]
        if method == b"CONNECT":
            self._quick(sid, 405, b"CONNECT is not supported", ended=ev.stream_ended is not None)
            return
        self._open(sid, method, pseudo.get(b":path", b"/"), regular, ended=ev.stream_ended is not None)

    def _open(
        self, sid: int, method: bytes, target: bytes, fields_: list[tuple[bytes, bytes]], *, ended: bool
    ) -> None:
        headers = Headers(fields_)
        cl = headers.get(b"content-length")
        length = int(cl) if cl is not None and cl.isdigit() else None
        req = H2Request(self, sid, method, target, headers, has_body=not ended, content_length=length)
        st = _Stream(req, H2Responder(self, sid, method), self.loop.time())
        self.streams[sid] = st
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.server.stream_started()
        st.task = task = self.loop.create_task(self._run(sid, st))
        task.add_done_callback(lambda t: self._stream_done(sid, st, t))

    def _quick(self, sid: int, status: int, body: bytes, *, ended: bool) -> None:
        fields_ = [(b":status", b"%d" % status), (b"content-type", b"text/plain; charset=utf-8")]
        fits = self.h2.local_flow_control_window(sid) >= len(body)
        fields_.append((b"content-length", b"%d" % (len(body) if fits else 0)))
        self.h2.send_headers(sid, fields_, end_stream=not fits)
        if fits:
            self.h2.send_data(sid, body, end_stream=True)
        if not ended:
            self.h2.reset_stream(sid, NO_ERROR)

    async def _run(self, sid: int, st: _Stream) -> None:
        req, resp = st.req, st.resp
        try:
            await self.server.handler(req, resp)
            if not resp.ended and not st.reset:
                await resp.end()
        except asyncio.CancelledError:
            if not st.reset:
                self.reset(sid, CANCEL)
        except (ConnectionError, OSError):
            self.reset(sid, CANCEL)
        except Exception:
            log.exception("handler failed for %s %s", req.method.decode(), req.target[:200].decode("latin-1"))
            if not resp.started and not st.reset:
                with contextlib.suppress(Exception):
                    await resp.send(500, b"internal error")
            else:
                self.reset(sid, INTERNAL_ERROR)

    def _stream_done(self, sid: int, st: _Stream, task: asyncio.Task[None]) -> None:
        # A done callback, not a finally: a task cancelled before its first step (a stream reset in
        # the same read as its HEADERS) never runs its coroutine, but its slot must still be freed.
        self.server.stream_finished()
        self.streams.pop(sid, None)
        req, resp = st.req, st.resp
        if task.cancelled() and not st.reset:
            self.reset(sid, CANCEL)
        if not self._resets.record(st.premature):
            self.fail(ENHANCE_YOUR_CALM, "most streams reset by the client before an answer (rapid reset)")
        req._discard()
        self.forget(sid)
        if not st.reset and not req._done and resp.ended:
            # A complete answer to a request whose body is still coming: RFC 9113 8.1 says
            # RST_STREAM(NO_ERROR) asks the client to stop sending it.
            self.reset(sid, NO_ERROR)
        self.flush()
        if not self.streams:
            if self._goaway_last is not None or self._peer_goaway:
                self._linger()
            else:
                self._arm_idle()

    # -- graceful end ----------------------------------------------------------------------------
    def _arm_idle(self) -> None:
        if self._idle is None and not self.closed:
            self._idle = self.loop.call_later(self.server.limits.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if not self.streams:
            self.goaway()

    def goaway(self) -> None:
        """Graceful GOAWAY(NO_ERROR): streams opened so far finish, later ones are refused."""
        if self._goaway_last is not None or self.closed or self.failed:
            return
        self._goaway_last = self.h2.highest_inbound_stream_id
        self.write_now()
        if self.transport is not None:
            # Written by hand: h2 refuses to send anything on any stream once it has sent a GOAWAY.
            self.transport.write(goaway_frame(self._goaway_last, NO_ERROR))
        if not self.streams:
            self._linger()
