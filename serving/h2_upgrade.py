"""Pure decisions for a port that serves HTTP/1.1 and h2c: look at a connection's first bytes and say who
gets it. Prior knowledge (the client starts with the HTTP/2 preface) goes to HTTP/2; an HTTP/1.1 request
with ``Upgrade: h2c``, ``HTTP2-Settings`` and ``Connection: Upgrade, HTTP2-Settings`` and no body is
answered 101 and becomes stream 1 of an HTTP/2 connection (RFC 7540 3.2); everything else is HTTP/1.1.

An upgrade request with a body is served as HTTP/1.1 with the upgrade fields removed, as a server that
ignores Upgrade does (RFC 9110 7.8): taking its body in would mean buffering it before the switch.
Only the connection's first request is considered; curl and Go's clients upgrade there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .h2_guard import PREFACE

__all__ = ["H1", "H2", "WAIT", "Sniffed", "UpgradeRequest", "sniff"]

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOP = frozenset({b"connection", b"upgrade", b"http2-settings", b"keep-alive", b"proxy-connection", b"te"})

WAIT = "wait"
H1 = "http1"
H2 = "h2"
UPGRADE = "upgrade"


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # lower-case names, hop-by-hop and upgrade fields removed
    settings: bytes  # the HTTP2-Settings value (base64url SETTINGS payload)


@dataclass(frozen=True, slots=True)
class Sniffed:
    kind: str  # WAIT, H1, H2 or UPGRADE
    data: bytes = b""  # what the chosen protocol is fed first
    upgrade: UpgradeRequest | None = None


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def sniff(buf: bytes, max_head: int) -> Sniffed:
    """Decide from the bytes received so far; WAIT asks for more."""
    n = min(len(buf), len(PREFACE))
    if buf[:n] == PREFACE[:n]:
        return Sniffed(H2, buf) if len(buf) >= len(PREFACE) else Sniffed(WAIT)
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return Sniffed(WAIT) if len(buf) <= max_head else Sniffed(H1, buf)
    head = buf[: end + 2]
    bare = head.replace(b"\r\n", b"")
    if b"h2c" not in head.lower() or b"\n" in bare or b"\r" in bare:
        return Sniffed(H1, buf)
    lines = head[:-2].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not _TOKEN.match(parts[0]):
        return Sniffed(H1, buf)
    method, target = parts[0], parts[1]
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name) or b"\x00" in value:
            return Sniffed(H1, buf)  # the HTTP/1.1 engine gives malformed requests their 400
        fields.append((name.lower(), value.strip(b" \t")))
    upgrade = set().union(*(_tokens(v) for n, v in fields if n == b"upgrade"))
    connection = set().union(*(_tokens(v) for n, v in fields if n == b"connection"))
    settings = [v for n, v in fields if n == b"http2-settings"]
    if b"h2c" not in upgrade or b"upgrade" not in connection:
        return Sniffed(H1, buf)
    has_body = any(n == b"transfer-encoding" or (n == b"content-length" and v != b"0") for n, v in fields)
    if has_body or len(settings) != 1 or b"http2-settings" not in connection:
        return Sniffed(H1, _without_upgrade(lines, fields) + buf[end + 4 :])
    kept = [(n, v) for n, v in fields if n not in _HOP or (n == b"te" and b"trailers" in v.lower())]
    return Sniffed(UPGRADE, buf[end + 4 :], UpgradeRequest(method, target, kept, settings[0]))


def _without_upgrade(lines: list[bytes], fields: list[tuple[bytes, bytes]]) -> bytes:
    """The request head again, minus Upgrade, HTTP2-Settings and their Connection tokens."""
    out = [lines[0]]
    for name, value in fields:
        if name in (b"upgrade", b"http2-settings"):
            continue
        if name == b"connection":
            rest = [t for t in _tokens(value) if t not in (b"upgrade", b"http2-settings")]
            if not rest:
                continue
            value = b", ".join(sorted(rest))
        out.append(name + b": " + value)
    return b"\r\n".join(out) + b"\r\n\r\n"
