"""The queue-proxy's request path, in Knative's order: probes, drain bookkeeping, stats, timeouts,
breaker, header rewrite, forward.

1. ``K-Network-Probe``: ``queue`` is a readiness check of the user container (200 ``queue`` / 503),
   ``probe`` a network probe that echoes ``K-Network-Hash``; any other value is a 400. Both fail with
   503 while draining. Probes never count as traffic.
2. Kubelet and Knative health checks (``User-Agent: kube-probe/...``, ``K-Kubelet-Probe``,
   ``Knative-Activator-Probe``, ``Knative-Autoscaling-Probe``) are 503 ``shutting down`` while draining,
   and otherwise go to the app without breaker or stats (a liveness probe must not wait in the queue).
3. Every other request is in flight for the drain (which it keeps from completing and whose quiet
   period it restarts) and for the autoscaler's stats from arrival to the end of its response; a
   websocket stays in flight until it closes. ``K-Proxy-Request: activator`` counts it as proxied.
4. Timeouts cover the breaker wait and the forward: the total timeout (``REVISION_TIMEOUT_SECONDS``),
   the response-start timeout (only until the first byte; a websocket's 101 is a first byte) and
   the idle timeout (since the last byte written to the client; not applied after a 101). One that
   fires before the response started answers 504 ``request timeout`` (with ``X-Zeroscale-Timeout``
   naming which one ran out); after, the connection is cut,
   because a half-sent response must not look complete.
5. With ``CONTAINER_CONCURRENCY`` = cc >= 1 the breaker admits cc at once and queues 10 x cc in order;
   beyond that, 503 ``pending request queue full`` at once. A client that goes away while queued
   frees its place at once (the engine cancels this handler).
6. A failed upstream answers 502 with the error text, or cuts the connection if the response started.
7. Toward an h2c revision (container port named ``h2c``) each request goes over the multiplexed h2c
   pool, whether it came as HTTP/1.1 or as an HTTP/2 stream; a websocket upgrade stays on HTTP/1.1.
   Each HTTP/2 stream is one call of this handler, so the breaker and the stats count streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from serving.breaker import Breaker
from serving.errors import QueueFullError
from serving.headers import (
    ACTIVATOR_PROBE_UA,
    AUTOSCALING_PROBE_UA,
    K_KUBELET_PROBE,
    K_NETWORK_HASH,
    K_NETWORK_PROBE,
    K_PROXY_REQUEST,
    KUBE_PROBE_UA,
    NOT_SENT,
)
from serving.httpserver import FastRequest, Request, Responder
from serving.stats import RequestStats
from serving.timeouts import RequestTimeouts, Sweeper, Tracked
from serving.upstream import Upstream, UpstreamError, forward, forward_fast

from .rewrite import upstream_headers

if TYPE_CHECKING:
    from serving.h2upstream import H2Upstream

__all__ = ["Forward", "H2Forward", "QueueHandler"]

_NOT_SENT = ((NOT_SENT, b"1"),)

_HEALTH_UAS = (KUBE_PROBE_UA, ACTIVATOR_PROBE_UA, AUTOSCALING_PROBE_UA)
_TIMEOUT_BODY = b"request timeout"
TIMEOUT_HEADER = b"x-zeroscale-timeout"  # total | response-start | idle

Forward = Callable[[Request, Responder, Upstream, list[tuple[bytes, bytes]]], Awaitable[int]]
H2Forward = Callable[[Request, Responder, "H2Upstream", list[tuple[bytes, bytes]]], Awaitable[int]]


class ReadinessCheck(Protocol):
    async def check(self) -> bool: ...


class Drain(Protocol):
    @property
    def draining(self) -> bool: ...
    def request_started(self) -> None: ...
    def request_finished(self) -> None: ...


class RequestMetrics(Protocol):
    def observe(self, status: int, seconds: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...


class QueueHandler:
    __slots__ = (
        "_breaker",
        "_drain",
        "_forward",
        "_h2",
        "_h2_forward",
        "_metrics",
        "_readiness",
        "_stats",
        "_sweeper",
        "_timeouts",
        "_upstream",
    )

    def __init__(
        self,
        *,
        upstream: Upstream,
        stats: RequestStats,
        drain: Drain,
        readiness: ReadinessCheck,
        breaker: Breaker | None = None,
        metrics: RequestMetrics | None = None,
        timeouts: RequestTimeouts | None = None,
        forward_fn: Forward = forward,
        h2_upstream: H2Upstream | None = None,
        h2_forward_fn: H2Forward | None = None,
    ) -> None:
        self._upstream = upstream
        self._h2 = h2_upstream  # set: the user container speaks h2c
        self._stats = stats
        self._drain = drain
        self._readiness = readiness
        self._breaker = breaker
        self._metrics = metrics
        timeouts = timeouts or RequestTimeouts(300.0, 0.0, 0.0)
        self._timeouts = timeouts
        self._sweeper = Sweeper(timeouts.interval()) if timeouts.any else None
        self._forward = forward_fn
        if h2_upstream is not None and h2_forward_fn is None:
            # Only a revision whose app speaks h2c loads the HTTP/2 client (its import costs start-up).
            from serving.h2upstream import forward_h2

            h2_forward_fn = forward_h2
        self._h2_forward = h2_forward_fn

    async def __call__(self, req: Request, resp: Responder) -> None:
        headers = req.headers
        probe = headers.get(K_NETWORK_PROBE)
        if probe is not None:
            await self._network_probe(probe, req, resp)
            return
        ua = headers.get(b"user-agent")
        if (ua is not None and ua.startswith(_HEALTH_UAS)) or K_KUBELET_PROBE in headers:
            if self._drain.draining:
                await resp.send(503, b"shutting down")
                return
            await self._serve(req, resp, time.monotonic(), None)  # no breaker, stats or drain bookkeeping
            return

        proxied = headers.get(K_PROXY_REQUEST) == b"activator"
        start = time.monotonic()
        stats = self._stats
        self._drain.request_started()
        stats.request_in(start, proxied)
        try:
            status = await self._serve(req, resp, start, self._breaker)
        finally:
            end = time.monotonic()
            stats.request_out(end, proxied)
            self._drain.request_finished()
        if status and self._metrics is not None:
            self._metrics.observe(status, end - start)

    def fast(self, req: Request, resp: Responder, marker: FastRequest) -> bool:
        """The common request (a GET without a body, a free pooled connection, a free
        breaker slot) in callbacks only, with the same bookkeeping as __call__; False: the task path."""
        headers = req.headers
        if self._h2 is not None or K_NETWORK_PROBE in headers or K_KUBELET_PROBE in headers:
            return False
        ua = headers.get(b"user-agent")
        if ua is not None and ua.startswith(_HEALTH_UAS):
            return False
        breaker = self._breaker
        if breaker is not None:
            if self._metrics is not None:
                self._metrics.queue_depth(breaker.in_flight)
            if not breaker.try_acquire():
                return False
        start = time.monotonic()
        proxied = headers.get(K_PROXY_REQUEST) == b"activator"
        sweeper = self._sweeper
        entry: Tracked | None = None
        stats = self._stats

        def end(status: int) -> None:
            if breaker is not None:
                breaker.release()
            if entry is not None and sweeper is not None:
                sweeper.untrack(entry)
            now = time.monotonic()
            stats.request_out(now, proxied)
            self._drain.request_finished()
            if status and self._metrics is not None:
                self._metrics.observe(status, now - start)

        async def wrap(rest: Awaitable[int]) -> None:
            status = 0
            try:
                if entry is not None:
                    entry.task = asyncio.current_task()
                try:
                    status = await rest
                except UpstreamError as e:
                    status = await _upstream_failed(e, resp)
                except asyncio.CancelledError:
                    status = await _timed_out(entry, resp)  # or re-raised: the client went away
            finally:
                end(status)

        ex = forward_fast(
            req, resp, self._upstream, upstream_headers(headers.items), marker, on_end=end, wrap=wrap
        )
        if ex is None:
            if breaker is not None:
                breaker.release()
            return False
        self._drain.request_started()
        stats.request_in(start, proxied)
        if sweeper is not None:
            entry = sweeper.track(resp, start, self._timeouts, task=marker)  # type: ignore[arg-type]

        def cancelled() -> None:
            ex.abandon()
            if entry is not None and entry.fired is not None and not resp.started:
                resp._whole(
                    504,
                    [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", b"%d" % len(_TIMEOUT_BODY)),
                        (TIMEOUT_HEADER, entry.fired.encode()),
                    ],
                    _TIMEOUT_BODY,
                    None,
                )
                end(504)
            else:
                end(0)  # the client went away: no status, as the task path records none
            marker.finish()

        marker.on_cancel = cancelled
        return True

    async def _serve(self, req: Request, resp: Responder, start: float, breaker: Breaker | None) -> int:
        """Breaker gate and forward under the timeouts; the status to record (0: none, a refusal)."""
        sweeper = self._sweeper
        entry = sweeper.track(resp, start, self._timeouts) if sweeper is not None else None
        acquired = False
        try:
            if breaker is not None:
                if self._metrics is not None:
                    self._metrics.queue_depth(breaker.in_flight)
                if not breaker.try_acquire():
                    try:
                        await breaker.acquire()
                    except QueueFullError as e:
                        await resp.send(503, str(e))
                        return 0  # Knative records app metrics only for requests past the breaker
                acquired = True
            return await self._proxy(req, resp)
        except asyncio.CancelledError:
            return await _timed_out(entry, resp)  # or re-raised: the client went away
        finally:
            if acquired and breaker is not None:
                breaker.release()
            if entry is not None and sweeper is not None:
                sweeper.untrack(entry)

    async def _proxy(self, req: Request, resp: Responder) -> int:
        headers = upstream_headers(req.headers.items)
        try:
            h2 = self._h2
            if h2 is not None and req.upgrade is None:
                assert self._h2_forward is not None
                return await self._h2_forward(req, resp, h2, headers)
            return await self._forward(req, resp, self._upstream, headers)
        except UpstreamError as e:
            return await _upstream_failed(e, resp)

    async def _network_probe(self, value: bytes, req: Request, resp: Responder) -> None:
        if value == b"queue":
            if self._drain.draining:
                await resp.send(503, b"shutting down")
            elif await self._readiness.check():
                await resp.send(200, b"queue")
            else:
                await resp.send(503, b"user container is not ready")
        elif value == b"probe":
            probe_hash = req.headers.get(K_NETWORK_HASH)
            if self._drain.draining:
                await resp.send(503, b"shutting down")
            elif not probe_hash:
                await resp.send(400, b"no K-Network-Hash header")
            else:
                await resp.send(200, b"", headers=[(K_NETWORK_HASH, probe_hash)])
        else:
            await resp.send(400, b"unexpected probe header value: " + value[:100])


async def _upstream_failed(e: UpstreamError, resp: Responder) -> int:
    """A 502 for a request the app did not answer; the status to record."""
    if e.started or resp.started:
        return 502  # forward has cut the client connection already
    # A failed connect to the app sent it nothing: say so, so that the activator can try
    # another pod (this one is still listed while the runtime or kubelet notices the death).
    await resp.send(502, str(e), headers=_NOT_SENT if e.connect else ())
    return 502


async def _timed_out(entry: Tracked | None, resp: Responder) -> int:
    """In the request's task, cancelled: the sweeper's timeout becomes a 504; any other cancel (the
    engine's, for a client gone) is raised again."""
    task = asyncio.current_task()
    # Only the sweeper's own cancel becomes a 504; the engine's (client gone) propagates.
    if entry is None or entry.fired is None or task is None or task.cancelling() > 1:
        raise asyncio.CancelledError
    task.uncancel()
    if not resp.started:
        # Knative's body for all three; the header says which one ran out (users could not tell)
        await resp.send(504, _TIMEOUT_BODY, headers=[(TIMEOUT_HEADER, entry.fired.encode())])
    else:
        resp.abort()  # a half-sent response must not look complete
    return 504
