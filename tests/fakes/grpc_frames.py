"""A frame-level HTTP/2 client for the h2c/gRPC tests: the h2 library for well-formed frames, hand-built
frames for malformed and abusive ones, and a plain parser of what the server sends back."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


@dataclass
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"", length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes((ftype, flags)) + struct.pack(">I", stream_id) + payload


def settings_frame(values: dict[int, int] | None = None) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in (values or {}).items()))


class RawH2:
    """One TCP connection; .enc builds header blocks with a real HPACK encoder state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.buf = b""

    @classmethod
    async def connect(cls, port: int, *, preface: bool = True) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        if preface:
            raw.send(PREFACE + settings_frame())
        return raw

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def header_block(
        self, path: bytes = b"/", method: bytes = b"GET", extra: list[tuple[bytes, bytes]] | None = None
    ) -> bytes:
        fields = [(b":method", method), (b":path", path), (b":scheme", b"http"), (b":authority", b"test")]
        return bytes(self.h2.encoder.encode(fields + (extra or [])))

    def request(self, sid: int, path: bytes = b"/", *, end_stream: bool = True) -> bytes:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, sid, self.header_block(path))

    async def next_frame(self, timeout: float = 10.0) -> Frame | None:
        """The next frame from the server; None once the connection is closed."""
        async with asyncio.timeout(timeout):
            while True:
                if len(self.buf) >= 9:
                    n = int.from_bytes(self.buf[:3], "big")
                    if len(self.buf) >= 9 + n:
                        head, payload = self.buf[:9], self.buf[9 : 9 + n]
                        self.buf = self.buf[9 + n :]
                        sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                        return Frame(head[3], head[4], sid, payload)
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    return None
                if not data:
                    return None
                self.buf += data

    async def goaway(self, timeout: float = 10.0) -> tuple[int, int] | None:
        """Read up to the server's GOAWAY: (last_stream_id, error_code), or None if it closed without one."""
        while True:
            f = await self.next_frame(timeout)
            if f is None:
                return None
            if f.type == GOAWAY:
                last, code = struct.unpack(">II", f.payload[:8])
                return last & 0x7FFFFFFF, code

    async def closed(self, timeout: float = 10.0) -> bool:
        while True:
            f = await self.next_frame(timeout)
            if f is None:
                return True

    def close(self) -> None:
        self.writer.close()


async def h2_request(
    port: int,
    path: bytes = b"/",
    *,
    method: bytes = b"GET",
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    timeout: float = 10.0,
) -> tuple[int, list[tuple[bytes, bytes]], bytes, list[tuple[bytes, bytes]]]:
    """A well-behaved prior-knowledge h2c request: (status, headers, body, trailers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    fields = [(b":method", method), (b":path", path), (b":scheme", b"http"), (b":authority", b"test")]
    conn.send_headers(sid, fields + (headers or []), end_stream=not body)
    pending = body

    def push() -> None:  # the body, as the server's windows allow
        nonlocal pending
        while pending:
            n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(pending))
            if n <= 0:
                return
            conn.send_data(sid, pending[:n], end_stream=n == len(pending))
            pending = pending[n:]

    push()
    writer.write(conn.data_to_send())
    status, hdrs, out, trailers = 0, [], b"", []
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed before the response ended")
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        hdrs = list(ev.headers or [])
                        status = int(dict(hdrs)[b":status"])
                    elif isinstance(ev, h2.events.DataReceived):
                        out += ev.data or b""
                        conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        trailers = list(ev.headers or [])
                    elif isinstance(ev, h2.events.StreamReset):
                        raise ConnectionResetError(f"stream reset: {ev.error_code!r}")
                    elif isinstance(ev, h2.events.StreamEnded):
                        return status, hdrs, out, trailers
                push()
                writer.write(conn.data_to_send())
    finally:
        writer.close()
