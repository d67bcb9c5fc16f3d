"""The request headers the user container sees: Knative's rewrites, as one pure pass over the list.

* ``Knative-Serving-Revision`` and ``Knative-Serving-Namespace`` are removed (routing data of the
  activator and gateway, not the app's business).
* ``K-Original-Host`` (the client's Host, kept by the activator while it addressed this pod) is
  restored into ``Host`` and removed.
* ``Forwarded`` (RFC 7239) is built from ``X-Forwarded-For/-Host/-Proto`` when the client sent none:
  ``for=<first hop>;host=<XFH>;proto=<XFP>`` then ``, for=<hop>`` for each further hop; IPv6 nodes are
  written ``"[addr]"`` and other values that are not RFC 7230 tokens are quoted.

Hop-by-hop fields are not handled here: ``serving.upstream.forward`` removes them on the way out.
Names are lower-case bytes, as the engine parses them.
"""

from __future__ import annotations

import ipaddress

from serving.headers import (
    FORWARDED,
    K_ORIGINAL_HOST,
    SERVING_NAMESPACE,
    SERVING_REVISION,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
)

__all__ = ["forwarded_value", "upstream_headers"]

Headers = list[tuple[bytes, bytes]]

_DROP = frozenset({SERVING_REVISION, SERVING_NAMESPACE, K_ORIGINAL_HOST})
# Every name this pass looks at; all other headers are copied without a second look.
_WATCH = _DROP | {FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, b"host"}
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def upstream_headers(items: Headers) -> Headers:
    """The headers to forward for a request that arrived with ``items``."""
    # Fast path: most requests carry none of the watched fields but Host.
    watched = [n for n, _ in items if n in _WATCH and n != b"host"]
    if not watched:
        return items
    original_host: bytes | None = None
    has_forwarded = False
    xff: list[bytes] = []
    xfh: bytes | None = None
    xfp: bytes | None = None
    out: Headers = []
    for name, value in items:
        if name in _WATCH:
            if name == K_ORIGINAL_HOST:
                if original_host is None:
                    original_host = value
                continue
            if name in _DROP:
                continue
            if name == FORWARDED:
                has_forwarded = True
            elif name == X_FORWARDED_FOR:
                xff.append(value)
            elif name == X_FORWARDED_HOST:
                xfh = xfh if xfh is not None else value
            elif name == X_FORWARDED_PROTO:
                xfp = xfp if xfp is not None else value
        out.append((name, value))
    if original_host:
        out = [(n, v) for n, v in out if n != b"host"]
        out.insert(0, (b"host", original_host))
    if not has_forwarded and (xff or xfh or xfp):
        fwd = forwarded_value(b",".join(xff), xfh, xfp)
        if fwd:
            out.append((FORWARDED, fwd))
    return out


def forwarded_value(xff: bytes, xfh: bytes | None, xfp: bytes | None) -> bytes:
    hops = [h.strip() for h in xff.split(b",") if h.strip()] if xff else []
    first: list[bytes] = []
    if hops:
        first.append(b"for=" + _node(hops[0]))
    if xfh:
        first.append(b"host=" + _quote(xfh.strip()))
    if xfp:
        first.append(b"proto=" + _quote(xfp.strip()))
    elements = [b";".join(first)] if first else []
    elements += [b"for=" + _node(h) for h in hops[1:]]
    return b", ".join(elements)


def _node(hop: bytes) -> bytes:
    bare = hop.strip(b"[]")
    try:
        addr = ipaddress.ip_address(bare.decode("latin-1"))
    except ValueError:
        return _quote(hop)
    if addr.version == 6:
        return b'"[' + bare + b']"'
    return hop


def _quote(value: bytes) -> bytes:
    if value and all(c in _TCHAR for c in value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
