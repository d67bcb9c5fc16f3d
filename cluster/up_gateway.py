"""The request path of ``zeroscale up`` until ``cluster.gateway_app`` lands: route, hold, forward.

One handler on the kernel's HTTP/1.1 engine: the Host (and ``Knative-Serving-Tag``) picks a route
from the current :class:`~routing.table.RouteTable` snapshot, the route picks a revision, and the
request goes to the revision's least busy ready pod. While the revision has no ready pod, or the
autoscaler puts the activator in its path, the request is counted here (the activator's concurrency,
reported to the in-process autoscaler every second, the first request at once: the cold-start poke),
waits for a pod (bounded), and is marked ``K-Proxy-Request: activator`` so the queue-proxy does not
count it twice. Headers that only the data plane may set are removed from what clients send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from routing.table import TableHolder
from serving.headers import K_ORIGINAL_HOST, K_PROXY_REQUEST, SERVING_NAMESPACE, SERVING_REVISION, SERVING_TAG
from serving.httpserver import HttpServer, Request, Responder, serve
from serving.stat import Stat, WireStat
from serving.stats import RequestStats
from serving.types import Endpoint, RevisionKey
from serving.upstream import Upstream, UpstreamError, forward

__all__ = ["EndpointSource", "LocalGateway"]

log = logging.getLogger("zeroscale.gateway")

_SPOOFABLE = frozenset({K_PROXY_REQUEST, K_ORIGINAL_HOST, SERVING_REVISION, SERVING_NAMESPACE})
_POD_NAME = "activator-local"
MAX_WAITING = 10_000  # requests held for pods, all revisions together (Knative's breaker queue depth)


class EndpointSource(Protocol):
    def subscribe(
        self, revision: RevisionKey, callback: Callable[[Sequence[Endpoint]], None]
    ) -> Callable[[], None]: ...


class _Revision:
    __slots__ = ("cc", "endpoints", "has_pods", "in_flight", "in_path", "key", "unsubscribe", "upstreams")

    def __init__(self, key: RevisionKey, cc: int) -> None:
        self.key = key
        self.cc = cc
        self.endpoints: tuple[Endpoint, ...] = ()
        self.has_pods = asyncio.Event()
        self.in_flight: dict[str, int] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.in_path = True  # until the autoscaler says otherwise (Knative: proxy mode first)
        self.unsubscribe: Callable[[], None] | None = None

    def update(self, endpoints: Sequence[Endpoint]) -> list[Upstream]:
        self.endpoints = tuple(e for e in endpoints if e.ready and not e.terminating)
        if self.endpoints:
            self.has_pods.set()
        else:
            self.has_pods.clear()
        live = {e.address for e in endpoints if not e.terminating}
        gone = [a for a in self.upstreams if a not in live and not self.in_flight.get(a)]
        return [self.upstreams.pop(a) for a in gone]

    def pick(self) -> Endpoint:
        return min(self.endpoints, key=lambda e: self.in_flight.get(e.address, 0))

    def upstream(self, ep: Endpoint) -> Upstream:
        up = self.upstreams.get(ep.address)
        if up is None:
            up = self.upstreams[ep.address] = Upstream(ep.host, ep.port)
        return up


class LocalGateway:
    def __init__(
        self,
        holder: TableHolder,
        source: EndpointSource,
        send_stats: Callable[[list[WireStat]], None],
        *,
        wait_timeout: float = 60.0,
        now: Callable[[], float] | None = None,
    ) -> None:
        self.holder = holder
        self._source = source
        self._send = send_stats
        self._wait_timeout = wait_timeout
        self._now = now or (lambda: asyncio.get_running_loop().time())
        self._revs: dict[RevisionKey, _Revision] = {}
        self._stats: dict[RevisionKey, RequestStats] = {}
        self._first: set[RevisionKey] = set()
        self._waiting = 0
        self._server: HttpServer | None = None
        self._reporter: asyncio.Task[None] | None = None

    # -- revisions ---------------------------------------------------------------------------------

    def add_revision(self, key: RevisionKey, container_concurrency: int = 0) -> None:
        if key in self._revs:
            return
        rev = self._revs[key] = _Revision(key, container_concurrency)

        def on_endpoints(endpoints: Sequence[Endpoint]) -> None:
            for up in rev.update(endpoints):
                asyncio.get_running_loop().create_task(up.close())

        rev.unsubscribe = self._source.subscribe(key, on_endpoints)

    async def remove_revision(self, key: RevisionKey) -> None:
        rev = self._revs.pop(key, None)
        if rev is None:
            return
        if rev.unsubscribe is not None:
            rev.unsubscribe()
        for up in rev.upstreams.values():
            await up.close()

    def set_activator_in_path(self, key: RevisionKey, in_path: bool) -> None:
        rev = self._revs.get(key)
        if rev is not None:
            rev.in_path = in_path

    def activator_in_path(self, key: RevisionKey) -> bool:
        rev = self._revs.get(key)
        return rev is None or rev.in_path or not rev.endpoints

    # -- serving -----------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        self._server = await serve(self.handle, host, port)
        self._reporter = asyncio.get_running_loop().create_task(self._report_forever(), name="gateway-stats")
        return self._server.port

    async def shutdown(self, timeout: float) -> None:
        if self._server is not None:
            await self._server.shutdown(timeout)
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
        for key in list(self._revs):
            await self.remove_revision(key)

    async def handle(self, req: Request, resp: Responder) -> None:
        host = req.host.decode("latin-1")
        tag_raw = req.headers.get(SERVING_TAG)
        route = self.holder.current.lookup(host, tag_raw.decode("latin-1") if tag_raw else None)
        if route is None:
            await resp.send(404, f"no service answers to host {host!r}\n")
            return
        key = route.pick()
        rev = self._revs.get(key)
        if rev is None:
            await resp.send(503, f"revision {key} is not running\n")
            return
        in_path = rev.in_path or not rev.endpoints
        if in_path:
            self._request_in(key)
        try:
            if not rev.endpoints:
                if self._waiting >= MAX_WAITING:
                    await resp.send(503, "too many requests waiting for pods\n")
                    return
                self._waiting += 1
                try:
                    async with asyncio.timeout(self._wait_timeout):
                        while not rev.endpoints:
                            await rev.has_pods.wait()
                except TimeoutError:
                    await resp.send(503, f"no pod of {key} became ready within {self._wait_timeout:g} s\n")
                    return
                finally:
                    self._waiting -= 1
            await self._forward(req, resp, rev, in_path)
        finally:
            if in_path:
                self._request_out(key)

    async def _forward(self, req: Request, resp: Responder, rev: _Revision, in_path: bool) -> None:
        headers = [(k, v) for k, v in req.headers.items if k not in _SPOOFABLE]
        if in_path:
            headers.append((K_PROXY_REQUEST, b"activator"))
        ep = rev.pick()
        addr = ep.address
        rev.in_flight[addr] = rev.in_flight.get(addr, 0) + 1
        try:
            await forward(req, resp, rev.upstream(ep), headers)
        except UpstreamError as e:
            if not e.started and not resp.started:
                await resp.send(502, f"pod {ep.pod_name} of {rev.key} failed: {e}\n")
        finally:
            left = rev.in_flight[addr] - 1
            if left:
                rev.in_flight[addr] = left
            else:
                del rev.in_flight[addr]

    # -- the activator's stats -----------------------------------------------------------------------

    def _request_in(self, key: RevisionKey) -> None:
        now = self._now()
        st = self._stats.get(key)
        if st is None:
            st = self._stats[key] = RequestStats(now)
            self._first.add(key)
            self._send([WireStat(key.namespace, key.name, Stat(_POD_NAME, 1.0, 0.0, 1.0, 0.0))])
        st.request_in(now)

    def _request_out(self, key: RevisionKey) -> None:
        st = self._stats.get(key)
        if st is not None:
            st.request_out(self._now())

    def report(self) -> list[WireStat]:
        now = self._now()
        out = []
        for key, st in list(self._stats.items()):
            r = st.report(now)
            if r.average_concurrency == 0 and st.concurrency == 0:
                del self._stats[key]
                continue
            conc, count = r.average_concurrency, r.request_count
            if key in self._first:  # the poke already counted the first request
                self._first.discard(key)
                conc, count = max(0.0, conc - 1), max(0.0, count - 1)
            out.append(WireStat(key.namespace, key.name, Stat(_POD_NAME, conc, 0.0, count, 0.0)))
        return out

    async def _report_forever(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            stats = self.report()
            if stats:
                try:
                    self._send(stats)
                except Exception:
                    log.exception("sending the activator's stats failed")
