"""The gateway's request handler: Host (and tag) -> route -> revision -> a dispatcher.

Unknown hosts get 404 here and go nowhere else. Hop-by-hop fields stop here. Headers that only the
data plane may set (``Knative-Serving-*``, ``K-*``) are dropped from what the client sent, so a client
cannot name a revision its route does not name; the gateway then sets ``Knative-Serving-Revision`` and
``Knative-Serving-Namespace`` itself from the route's pick, and appends the client's address to
``X-Forwarded-For``. What happens next (the activator, or straight to a pod) is the dispatcher's
business: the composition provides it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol, cast

from serving.headers import (
    SERVING_NAMESPACE,
    SERVING_REVISION,
    SERVING_TAG,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    is_internal_header,
)
from serving.httpserver import FastRequest, Request, Responder
from serving.types import RevisionKey
from serving.upstream import strip_hop_by_hop

from .table import TableHolder

__all__ = ["Dispatcher", "FastDispatcher", "Gateway", "clean_headers"]


class Dispatcher(Protocol):
    async def dispatch(
        self, revision: RevisionKey, req: Request, resp: Responder, headers: Sequence[tuple[bytes, bytes]]
    ) -> None: ...


class FastDispatcher(Dispatcher, Protocol):
    """A dispatcher that can also take a request in the engine's callbacks: True, it took it; False,
    it decided nothing (dispatch() then takes it); or what a task must run to go on from its decisions."""

    def dispatch_fast(
        self,
        revision: RevisionKey,
        req: Request,
        resp: Responder,
        headers: Sequence[tuple[bytes, bytes]],
        marker: FastRequest,
    ) -> bool | Awaitable[None]: ...


def clean_headers(
    items: Sequence[tuple[bytes, bytes]], revision: RevisionKey, client: tuple[str, int] | None
) -> list[tuple[bytes, bytes]]:
    """The request's headers as they go inward: internal ones dropped, routing ones set."""
    out: list[tuple[bytes, bytes]] = []
    xff: bytes | None = None
    proto = False
    # Hop-by-hop fields, and any the client names in Connection, end here: otherwise a client could
    # name K-Proxy-Request in Connection and have the next hop strip the activator's own header.
    # ("te: trailers" is kept: gRPC needs it, and the h2c forwarder re-adds it on its own hop.)
    trailers = any(n == b"te" and b"trailers" in v.lower() for n, v in items)
    items = strip_hop_by_hop(list(items))
    if trailers:
        items.append((b"te", b"trailers"))
    for name, value in items:
        if is_internal_header(name):
            continue
        if name == X_FORWARDED_FOR:
            xff = value if xff is None else xff + b", " + value
            continue
        if name == X_FORWARDED_PROTO:
            proto = True
        out.append((name, value))
    if client is not None:
        ip = client[0].encode()
        xff = ip if xff is None else xff + b", " + ip
    if xff is not None:
        out.append((X_FORWARDED_FOR, xff))
    if not proto:
        out.append((X_FORWARDED_PROTO, b"http"))
    out.append((SERVING_REVISION, revision.name.encode()))
    out.append((SERVING_NAMESPACE, revision.namespace.encode()))
    return out


class Gateway:
    """An engine handler over the current routing table snapshot."""

    __slots__ = ("_dispatcher", "_holder", "not_found")

    def __init__(self, holder: TableHolder, dispatcher: Dispatcher) -> None:
        self._holder = holder
        self._dispatcher = dispatcher
        self.not_found = 0

    async def __call__(self, req: Request, resp: Responder) -> None:
        table = self._holder.current  # one snapshot for the whole request
        host = req.host.decode("latin-1")
        tag = req.headers.get(SERVING_TAG)
        route = table.lookup(host, tag.decode("latin-1") if tag else None)
        if route is None:
            self.not_found += 1
            await resp.send(404, f"no route for host {host!r}\n")
            return
        revision = route.pick()
        await self._dispatcher.dispatch(
            revision, req, resp, clean_headers(req.headers.items, revision, req.client)
        )

    def fast(self, req: Request, resp: Responder, marker: FastRequest) -> bool | Awaitable[None]:
        """__call__ in the engine's callbacks when the dispatcher can take the request so (a
        FastDispatcher). False: __call__ takes it (an unknown host's 404 included); once a revision
        is picked, the pick stands: what is returned then goes on with it."""
        dispatcher = self._dispatcher
        if not hasattr(dispatcher, "dispatch_fast"):
            return False
        tag = req.headers.get(SERVING_TAG)
        host = req.host.decode("latin-1")
        route = self._holder.current.lookup(host, tag.decode("latin-1") if tag else None)
        if route is None:
            return False
        revision = route.pick()
        headers = clean_headers(req.headers.items, revision, req.client)
        got = cast(FastDispatcher, dispatcher).dispatch_fast(revision, req, resp, headers, marker)
        return dispatcher.dispatch(revision, req, resp, headers) if got is False else got
