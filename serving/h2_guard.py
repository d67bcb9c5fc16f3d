"""A pure pre-parser of the HTTP/2 frame stream: limits checked on frame headers before any payload is kept.

It sits in front of the h2 state machine on both sides (server and upstream client) and does what h2
does not do, or does too late:
- a frame longer than SETTINGS_MAX_FRAME_SIZE is refused from its 9-byte header (h2 would first buffer
  the whole announced payload, up to 16 MiB);
- a header block (HEADERS + CONTINUATIONs) longer than the header list limit is refused while it grows,
  and nothing but CONTINUATION may interrupt it;
- frames that cost work but carry no request (SETTINGS, PING, PRIORITY, unknown types, empty
  DATA/CONTINUATION that end nothing) draw from a token bucket: a flood past it is ENHANCE_YOUR_CALM;
- RST_STREAM is routine (a cancelled call, a server that answered before the request ended), so it is
  not rate-limited; what costs is a stream reset while its handler still runs, and ResetRatio ends a
  connection whose streams are mostly reset that way ("rapid reset", CVE-2023-44487);
- GOAWAY frames are taken out of the stream and reported, because h2 stops all streams on a GOAWAY while
  RFC 9113 6.8 lets the streams up to its last-stream-id finish.

Time is passed in (``now``), so tests drive it by hand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "CANCEL",
    "ENHANCE_YOUR_CALM",
    "FRAME_SIZE_ERROR",
    "INTERNAL_ERROR",
    "NO_ERROR",
    "PREFACE",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "FrameScanner",
    "ResetRatio",
    "GoAway",
    "GuardError",
    "TokenBucket",
    "goaway_frame",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 section 7 error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY = range(8)
_WINDOW_UPDATE, _CONTINUATION = 8, 9
_END_STREAM = 0x1
_END_HEADERS = 0x4
_COSTLY_CONTROL = frozenset({_PRIORITY, _SETTINGS, _PING})
_MAX_DEBUG = 256  # bytes of GOAWAY debug data kept


class GuardError(Exception):
    """The peer broke a limit: answer GOAWAY with ``code`` and close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class GoAway:
    last_stream_id: int
    error_code: int
    debug: bytes


def goaway_frame(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    """A serialized GOAWAY frame (RFC 9113 6.8)."""
    payload = struct.pack(">II", last_stream_id & 0x7FFFFFFF, error_code) + debug[:_MAX_DEBUG]
    return struct.pack(">I", len(payload))[1:] + bytes((_GOAWAY, 0)) + b"\x00\x00\x00\x00" + payload


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None and now > self._last:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ResetRatio:
    """Streams the peer reset while we were still working on them, against all streams it opened.

    After ``min_streams`` streams, more than half of them reset early means the peer opens streams in
    order to cancel them. Counts are halved every ``window`` streams, so a long good history cannot hide
    an attack that starts late. (Envoy's premature-reset rule, with the same 50 %.)
    """

    __slots__ = ("min_streams", "premature", "total", "window")

    def __init__(self, min_streams: int = 100, window: int = 1000) -> None:
        self.min_streams = min_streams
        self.window = window
        self.total = 0
        self.premature = 0

    def record(self, premature: bool) -> bool:
        """Count one finished stream; False when the peer has crossed the line."""
        self.total += 1
        self.premature += premature
        if self.total >= self.window:
            self.total //= 2
            self.premature //= 2
        return not (self.total >= self.min_streams and 2 * self.premature > self.total)


class FrameScanner:
    """Follows frame boundaries in the received bytes; feed() returns what to hand to h2."""

    __slots__ = (
        "_block",
        "_bucket",
        "_head",
        "_hold",
        "_left",
        "_preface_left",
        "max_frame_size",
        "max_header_block",
    )

    def __init__(
        self, *, max_frame_size: int, max_header_block: int, bucket: TokenBucket, preface: bool
    ) -> None:
        self.max_frame_size = max_frame_size
        self.max_header_block = max_header_block
        self._bucket = bucket
        self._preface_left = len(PREFACE) if preface else 0
        self._head = bytearray()  # a frame header not yet complete
        self._left = 0  # payload bytes of the current frame still to come
        self._hold: bytearray | None = None  # payload of a GOAWAY being collected
        self._block = -1  # bytes of the header block in progress; -1 when none is open

    def feed(self, data: bytes, now: float) -> tuple[bytes, list[GoAway]]:
        goaways: list[GoAway] = []
        cuts: list[tuple[int, int]] = []  # ranges of data not handed on (GOAWAYs, a partial header)
        prefix = b""  # the first bytes of a header that began in the previous feed
        i, n = 0, len(data)
        if self._preface_left:
            i = min(self._preface_left, n)  # passed on: h2 checks the preface itself
            self._preface_left -= i
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                if self._hold is not None:
                    self._hold += data[i : i + take]
                    cuts.append((i, i + take))
                i += take
                self._left -= take
                if not self._left and self._hold is not None:
                    goaways.append(self._goaway(bytes(self._hold)))
                    self._hold = None
                continue
            start, had = i, len(self._head)
            take = min(9 - had, n - i)
            self._head += data[i : i + take]
            i += take
            if len(self._head) < 9:
                cuts.append((start, i))  # kept back until we know what frame it starts
                break
            head = bytes(self._head)
            self._head.clear()
            length = int.from_bytes(head[:3], "big")
            ftype, flags = head[3], head[4]
            stream_id = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            self._check(length, ftype, flags, stream_id, now)
            self._left = length
            if ftype == _GOAWAY:
                cuts.append((start, i))
                self._hold = bytearray()
                if not length:
                    raise GuardError(FRAME_SIZE_ERROR, "GOAWAY frame without payload")
            elif had:
                prefix = head[:had]  # only ever at the start of data (after the preface)
        if not cuts and not prefix:
            return data, goaways  # the common case: nothing copied
        pieces = [prefix]
        pos = 0
        for a, b in cuts:
            pieces.append(data[pos:a])
            pos = b
        pieces.append(data[pos:])
        return b"".join(pieces), goaways

    def _check(self, length: int, ftype: int, flags: int, stream_id: int, now: float) -> None:
        if length > self.max_frame_size:
            raise GuardError(
                FRAME_SIZE_ERROR,
                f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {self.max_frame_size}",
            )
        if self._block >= 0:
            if ftype != _CONTINUATION:
                raise GuardError(PROTOCOL_ERROR, f"frame type {ftype} inside a header block")
            self._block += length
            if self._block > self.max_header_block:
                raise GuardError(ENHANCE_YOUR_CALM, f"header block over {self.max_header_block} bytes")
            if flags & _END_HEADERS:
                self._block = -1
            elif not length and not self._bucket.take(now):
                raise GuardError(ENHANCE_YOUR_CALM, "flood of empty CONTINUATION frames")
            return
        if ftype in (_HEADERS, _PUSH_PROMISE):
            if length > self.max_header_block:
                raise GuardError(ENHANCE_YOUR_CALM, f"header block over {self.max_header_block} bytes")
            if not flags & _END_HEADERS:
                self._block = length
            return
        if ftype == _GOAWAY:
            if stream_id:
                raise GuardError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if length < 8:
                raise GuardError(FRAME_SIZE_ERROR, "GOAWAY frame shorter than 8 bytes")
            return
        costly = (
            ftype in _COSTLY_CONTROL
            or ftype > _CONTINUATION  # extension frames are ignored, but each still costs a parse
            or (ftype == _DATA and not length and not flags & _END_STREAM)
            or ftype == _CONTINUATION  # a CONTINUATION outside a block: h2 answers PROTOCOL_ERROR
        )
        if costly and not self._bucket.take(now):
            raise GuardError(ENHANCE_YOUR_CALM, f"control frame flood (type {ftype})")

    @staticmethod
    def _goaway(payload: bytes) -> GoAway:
        last, code = struct.unpack(">II", payload[:8])
        return GoAway(last & 0x7FFFFFFF, code, payload[8 : 8 + _MAX_DEBUG])
