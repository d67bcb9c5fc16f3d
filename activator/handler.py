"""The activator's request path: count, time out, throttle, forward to a pod, mark cold starts.

For each request of a known revision, in order: the concurrency reporter counts it (the first one of an
idle revision pokes the autoscaler), the sweeper arms the revision's timeouts (504 ``activator request
timeout``), the throttler holds it until a pod has room (503 when 10,000 already wait), and it goes to
that pod's queue-proxy with ``K-Proxy-Request: activator`` and its Host kept in ``K-Original-Host``.
A pod that refuses the connection before anything was sent is set aside for re-probing and the
request tries another pod. A response that waited for a cold start carries
``X-Zeroscale-Cold-Start: <seconds>`` and the wait goes into a histogram per revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.errors import QueueFullError
from serving.h2upstream import H2Upstream, forward_h2
from serving.headers import (
    COLD_START,
    K_ORIGINAL_HOST,
    K_PROXY_REQUEST,
    NOT_SENT,
    SERVING_NAMESPACE,
    SERVING_REVISION,
)
from serving.httpserver import FastRequest, Request, Responder
from serving.timeouts import RequestTimeouts, Sweeper, Tracked
from serving.types import Endpoint, RevisionKey
from serving.upstream import Upstream, UpstreamError, forward, forward_fast, strip_hop_by_hop

from .backends import EndpointSource, Prober, RevisionBackends
from .reporter import ConcurrencyReporter
from .throttler import QUEUE_DEPTH, PodTracker, RevisionThrottler

__all__ = ["COLD_START_BUCKETS", "Activator", "RevisionSettings"]

log = logging.getLogger("zeroscale.activator")

COLD_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_DROP_TOWARD_POD = frozenset({SERVING_REVISION, SERVING_NAMESPACE, K_PROXY_REQUEST, b"host"})


@dataclass(frozen=True, slots=True)
class RevisionSettings:
    """What the activator needs to know of a revision (Knative reads it from the Revision object)."""

    container_concurrency: int = 0
    timeouts: RequestTimeouts = field(default_factory=RequestTimeouts)
    protocol: str = "http1"  # "h2c": the pods speak cleartext HTTP/2 (gRPC), forwarded as such

    def __post_init__(self) -> None:
        if self.protocol not in ("http1", "h2c"):
            raise ValueError(f"protocol must be http1 or h2c, got {self.protocol!r}")


class _Revision:
    __slots__ = ("backends", "direct", "key", "settings", "throttler", "unsubscribe")

    def __init__(self, key: RevisionKey, settings: RevisionSettings, throttler: RevisionThrottler) -> None:
        self.key = key
        self.settings = settings
        self.throttler = throttler
        self.backends: RevisionBackends | None = None
        self.unsubscribe: Any = None
        self.direct: Iterator[int] = itertools.count()


def toward_pod(headers: Sequence[tuple[bytes, bytes]], host: bytes) -> list[tuple[bytes, bytes]]:
    """Knative's activator rewrite: Host kept in K-Original-Host, routing headers removed, marked."""
    # Hop-by-hop fields (and those a client named in Connection) go first, so that nothing can strip
    # the headers added below; "te: trailers" survives for gRPC.
    trailers = any(n == b"te" and b"trailers" in v.lower() for n, v in headers)
    out = [(n, v) for n, v in strip_hop_by_hop(list(headers)) if n not in _DROP_TOWARD_POD]
    if trailers:
        out.append((b"te", b"trailers"))
    if host and not any(n == K_ORIGINAL_HOST for n, _ in out):
        out.append((K_ORIGINAL_HOST, host))
    out.append((K_PROXY_REQUEST, b"activator"))
    return out


def _connect_failure(e: UpstreamError, req: Request) -> bool:
    """Nothing of the request reached an app (the connect failed, here or in the pod's queue-proxy),
    and none of its body was consumed: it may go to another pod."""
    return e.connect and not (req.has_body and req._body_started())


def _not_sent(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    return status == 502 and any(n == NOT_SENT for n, _ in headers)


_TIMEOUT_BODY = b"activator request timeout"
_TIMEOUT_HEAD = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"%d" % len(_TIMEOUT_BODY)),
]


async def _timed_out(entry: Tracked, resp: Responder) -> int:
    """In a handler task cancelled: the sweeper's timeout becomes a 504 (a started answer is cut);
    any other cancel (the client went away) is raised again."""
    task = asyncio.current_task()
    if entry.fired is None or task is None:
        raise asyncio.CancelledError
    task.uncancel()
    if resp.started:
        resp.abort()
    else:
        await resp.send(504, _TIMEOUT_BODY)
    return 504


class Activator:
    def __init__(
        self,
        endpoints: EndpointSource,
        reporter: ConcurrencyReporter,
        *,
        registry: CollectorRegistry | None = None,
        prober: Prober | None = None,
        rng: random.Random | None = None,
        queue_depth: int = QUEUE_DEPTH,
        sweep_interval: float = 0.1,
        connect_retries: int = 2,
    ) -> None:
        self._source = endpoints
        self.reporter = reporter
        self._prober = prober
        self._rng = rng or random.Random()
        self._queue_depth = queue_depth
        self._connect_retries = connect_retries
        self._revs: dict[RevisionKey, _Revision] = {}
        self._activators = (1, 0)
        self.sweeper = Sweeper(sweep_interval)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.cold_starts = Histogram(
            "zeroscale_activator_cold_start_seconds",
            "Time requests waited for a revision with no pod to get one",
            ["namespace", "revision"],
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        )
        self.responses = Counter(
            "zeroscale_activator_requests",
            "Requests the activator answered, by status code",
            ["namespace", "revision", "code"],
            registry=self.registry,
        )
        self._response_children: dict[tuple[RevisionKey, int], Any] = {}
        self.registry.register(_ThrottlerCollector(self))

    # -- revisions -------------------------------------------------------------------------------
    def add_revision(self, key: RevisionKey, settings: RevisionSettings | None = None) -> None:
        """Start tracking a revision's pods (idempotent; settings of a known revision are kept)."""
        if key in self._revs:
            return
        settings = settings or RevisionSettings()
        throttler = RevisionThrottler(
            key,
            settings.container_concurrency,
            rng=random.Random(self._rng.random()),
            queue_depth=self._queue_depth,
            on_pod_gone=self._pod_gone,
        )
        throttler.update_activators(*self._activators)
        rev = _Revision(key, settings, throttler)
        rev.backends = RevisionBackends(key, throttler.update_pods, self._prober)
        self._revs[key] = rev
        rev.unsubscribe = self._source.subscribe(key, rev.backends.update)

    async def remove_revision(self, key: RevisionKey) -> None:
        rev = self._revs.pop(key, None)
        if rev is None:
            return
        if rev.unsubscribe is not None:
            rev.unsubscribe()
        if rev.backends is not None:
            await rev.backends.close()
        rev.throttler.update_pods([])  # in-flight requests finish; their pools close after them
        for k in [k for k in self._response_children if k[0] == key]:
            del self._response_children[k]
            with contextlib.suppress(KeyError):
                self.responses.remove(key.namespace, key.name, str(k[1]))
        with contextlib.suppress(KeyError):
            self.cold_starts.remove(key.namespace, key.name)

    def has_revision(self, key: RevisionKey) -> bool:
        return key in self._revs

    def revisions(self) -> list[RevisionKey]:
        return list(self._revs)

    def set_activators(self, count: int, index: int) -> None:
        self._activators = (max(1, count), index)
        for rev in self._revs.values():
            rev.throttler.update_activators(*self._activators)

    def healthy(self, key: RevisionKey) -> list[Endpoint]:
        rev = self._revs.get(key)
        return [] if rev is None else [p.endpoint for p in rev.throttler.pods]

    def throttler(self, key: RevisionKey) -> RevisionThrottler | None:
        rev = self._revs.get(key)
        return None if rev is None else rev.throttler

    def _pod_gone(self, pod: PodTracker) -> None:
        up = pod.attachment
        pod.attachment = None
        if up is not None:
            asyncio.get_running_loop().create_task(up.close())

    @staticmethod
    async def _forward(
        rev: _Revision, pod: PodTracker, req: Request, resp: Responder, headers: list[tuple[bytes, bytes]]
    ) -> int:
        """Through the pod's own pool: keep-alive HTTP/1.1, or multiplexed h2c for h2c revisions."""
        up = pod.attachment
        if rev.settings.protocol == "h2c" and req.upgrade is not None:
            # Websockets have no HTTP/2 form here (RFC 8441 is not spoken): a connection of their own,
            # over HTTP/1.1, as the queue-proxy does for them. Long-lived, so not worth pooling.
            ws_up = Upstream(pod.endpoint.host, pod.endpoint.port, max_idle=0)
            try:
                return await forward(req, resp, ws_up, headers)
            finally:
                await ws_up.close()
        if rev.settings.protocol == "h2c":
            if up is None:
                up = pod.attachment = H2Upstream(pod.endpoint.host, pod.endpoint.port)
            return await forward_h2(req, resp, cast(H2Upstream, up), headers)
        if up is None:
            up = pod.attachment = Upstream(pod.endpoint.host, pod.endpoint.port)
        return await forward(req, resp, cast(Upstream, up), headers, refuse=_not_sent)

    # -- the request path ------------------------------------------------------------------------
    async def dispatch(
        self, key: RevisionKey, req: Request, resp: Responder, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Hold ``req`` until a pod of ``key`` has room, then forward it there."""
        rev = self._revs.get(key)
        if rev is None:
            await resp.send(404, f"Error getting active endpoint: revision {key} not found\n")
            return
        start = time.monotonic()
        self.reporter.request_in(key)
        entry = self.sweeper.track(resp, start, rev.settings.timeouts)
        try:
            status = await self._throttled(rev, req, resp, toward_pod(headers, req.host), start)
        except asyncio.CancelledError:
            status = await _timed_out(entry, resp)  # or re-raised: the client went away
        finally:
            self.sweeper.untrack(entry)
            self.reporter.request_out(key)
        self._count(key, status)

    def _count(self, key: RevisionKey, status: int) -> None:
        child = self._response_children.get((key, status))
        if child is None:  # labels() takes a lock and builds a tuple: keep the children
            child = self._response_children[(key, status)] = self.responses.labels(
                key.namespace, key.name, str(status)
            )
        child.inc()

    def dispatch_fast(
        self,
        key: RevisionKey,
        req: Request,
        resp: Responder,
        headers: Sequence[tuple[bytes, bytes]],
        marker: FastRequest,
    ) -> bool | Awaitable[None]:
        """dispatch() in the engine's callbacks, for a GET that need not wait: a warm HTTP/1.1 revision
        with room on a pod now and a free pooled connection to it. False: nothing was decided, and
        dispatch() takes it; a coroutine: a pod was taken but no free connection to it, and the
        coroutine goes on with that pod in a task (the pick stands, as for any request)."""
        rev = self._revs.get(key)
        if rev is None or rev.settings.protocol == "h2c" or not rev.throttler.has_pods:
            return False  # unknown (404), h2c, or cold (the task path marks the cold start)
        throttler = rev.throttler
        pod = throttler.try_acquire()
        if pod is None:
            return False
        up = pod.attachment
        if up is None:
            up = pod.attachment = Upstream(pod.endpoint.host, pod.endpoint.port)
        start = time.monotonic()
        toward = toward_pod(headers, req.host)
        sweeper, reporter = self.sweeper, self.reporter
        entry: Tracked | None = None

        def end(status: int) -> None:
            throttler.release(pod)
            if entry is not None:
                sweeper.untrack(entry)
            reporter.request_out(key)
            if status:
                self._count(key, status)

        async def wrap(rest: Awaitable[int]) -> None:
            assert entry is not None
            entry.task = asyncio.current_task()
            await self._held(rev, pod, req, resp, toward, start, entry, rest)

        ex = forward_fast(
            req, resp, cast(Upstream, up), toward, marker, on_end=end, wrap=wrap, refuse=_not_sent
        )
        if ex is None:
            return self._dispatch_held(rev, pod, req, resp, toward, start)
        reporter.request_in(key)
        entry = sweeper.track(resp, start, rev.settings.timeouts, task=marker)  # type: ignore[arg-type]

        def cancelled() -> None:
            ex.abandon()
            assert entry is not None
            if entry.fired is not None and not resp.started:
                resp._whole(504, _TIMEOUT_HEAD, _TIMEOUT_BODY, None)
                end(504)
            else:
                end(0)  # the client went away: counted nowhere, as in dispatch()
            marker.finish()

        marker.on_cancel = cancelled
        return True

    async def _dispatch_held(
        self,
        rev: _Revision,
        pod: PodTracker,
        req: Request,
        resp: Responder,
        headers: list[tuple[bytes, bytes]],
        start: float,
    ) -> None:
        """dispatch() for a request whose pod is taken already (by dispatch_fast)."""
        self.reporter.request_in(rev.key)
        entry = self.sweeper.track(resp, start, rev.settings.timeouts)
        await self._held(
            rev, pod, req, resp, headers, start, entry, self._forward(rev, pod, req, resp, headers)
        )

    async def _held(
        self,
        rev: _Revision,
        pod: PodTracker,
        req: Request,
        resp: Responder,
        headers: list[tuple[bytes, bytes]],
        start: float,
        entry: Tracked,
        rest: Awaitable[int],
    ) -> None:
        """The end of dispatch() for a request forwarded (``rest``) to a pod it holds: timeouts, the
        books, the count; the pod is released."""
        status = 0
        try:
            status = await self._after_fast(rev, pod, req, resp, headers, start, rest)
        except asyncio.CancelledError:
            status = await _timed_out(entry, resp)  # or re-raised: the client went away
        finally:
            self.sweeper.untrack(entry)
            self.reporter.request_out(rev.key)
        self._count(rev.key, status)

    async def _after_fast(
        self,
        rev: _Revision,
        pod: PodTracker,
        req: Request,
        resp: Responder,
        headers: list[tuple[bytes, bytes]],
        start: float,
        rest: Awaitable[int],
    ) -> int:
        """A forward to the pod the request holds: as _throttled() from its pod on (the pod is
        released; a refusal goes to another pod)."""
        held: PodTracker | None = pod
        try:
            return await rest
        except UpstreamError as e:
            if e.started or resp.started:
                return 502
            if _connect_failure(e, req) and self._connect_retries > 0:
                log.warning("pod %s of %s refused the connection; trying another", pod.address, rev.key)
                if rev.backends is not None:
                    rev.backends.suspect(pod.endpoint)
                rev.throttler.release(pod)
                held = None
                return await self._throttled(rev, req, resp, headers, start, failures=1)
            await resp.send(502, f"pod {pod.endpoint.pod_name} of {rev.key}: {e}\n")
            return 502
        finally:
            if held is not None:
                rev.throttler.release(held)

    async def _throttled(
        self,
        rev: _Revision,
        req: Request,
        resp: Responder,
        headers: list[tuple[bytes, bytes]],
        start: float,
        failures: int = 0,
    ) -> int:
        throttler = rev.throttler
        cold = not throttler.has_pods
        while True:
            try:
                pod = await throttler.acquire()
            except QueueFullError as full:
                await resp.send(503, f"{full}\n")
                return 503
            try:
                if cold:
                    # Whatever head goes out from here on (the pod's answer, a 502) is marked.
                    cold = False
                    waited = time.monotonic() - start
                    self.cold_starts.labels(rev.key.namespace, rev.key.name).observe(waited)
                    resp.add_headers([(COLD_START, b"%.3f" % waited)])
                return await self._forward(rev, pod, req, resp, headers)
            except UpstreamError as e:
                failed = e
            finally:
                throttler.release(pod)
            # The pod's slot is free again before the client hears of the failure or another pod is tried.
            if failed.started or resp.started:
                return 502  # forward already aborted the client connection
            if _connect_failure(failed, req) and failures < self._connect_retries:
                failures += 1
                log.warning("pod %s of %s refused the connection; trying another", pod.address, rev.key)
                if rev.backends is not None:
                    rev.backends.suspect(pod.endpoint)
                continue
            await resp.send(502, f"pod {pod.endpoint.pod_name} of {rev.key}: {failed}\n")
            return 502

    def forward_direct_fast(
        self,
        key: RevisionKey,
        req: Request,
        resp: Responder,
        headers: Sequence[tuple[bytes, bytes]],
        marker: FastRequest,
    ) -> bool | Awaitable[None]:
        """forward_direct() in the engine's callbacks (a GET, a free pooled connection to the pod).
        False: forward_direct() takes it; a coroutine: it goes on to the picked pod in a task."""
        rev = self._revs.get(key)
        pods = rev.throttler.pods if rev is not None else []
        if rev is None or not pods or rev.settings.protocol == "h2c":
            return False
        pod = pods[next(rev.direct) % len(pods)]
        up = pod.attachment
        if up is None:
            up = pod.attachment = Upstream(pod.endpoint.host, pod.endpoint.port)
        out = [(n, v) for n, v in headers if n not in (SERVING_REVISION, SERVING_NAMESPACE)]

        async def wrap(rest: Awaitable[int]) -> None:
            try:
                await rest
            except UpstreamError as e:
                await self._direct_failed(rev, pod, key, req, resp, headers, e)

        ex = forward_fast(req, resp, cast(Upstream, up), out, marker, wrap=wrap, refuse=_not_sent)
        return True if ex is not None else wrap(self._forward(rev, pod, req, resp, out))

    async def _direct_failed(
        self,
        rev: _Revision,
        pod: PodTracker,
        key: RevisionKey,
        req: Request,
        resp: Responder,
        headers: Sequence[tuple[bytes, bytes]],
        e: UpstreamError,
    ) -> None:
        if e.started or resp.started:
            return
        if _connect_failure(e, req):
            # Nothing reached an app (a pod whose app just died is still listed): the throttled
            # path suspects nothing twice and tries the other pods.
            if rev.backends is not None:
                rev.backends.suspect(pod.endpoint)
            await self.dispatch(key, req, resp, headers)
            return
        await resp.send(502, f"pod {pod.endpoint.pod_name} of {key}: {e}\n")

    async def forward_direct(
        self, key: RevisionKey, req: Request, resp: Responder, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Serve mode (the autoscaler took the activator out of the path): straight to a healthy pod,
        round robin; the pod's queue-proxy enforces the concurrency. No pod yet: the throttled path."""
        rev = self._revs.get(key)
        pods = rev.throttler.pods if rev is not None else []
        if rev is None or not pods:
            await self.dispatch(key, req, resp, headers)
            return
        pod = pods[next(rev.direct) % len(pods)]
        out = [(n, v) for n, v in headers if n not in (SERVING_REVISION, SERVING_NAMESPACE)]
        try:
            await self._forward(rev, pod, req, resp, out)
        except UpstreamError as e:
            await self._direct_failed(rev, pod, key, req, resp, headers, e)

    async def close(self) -> None:
        for key in list(self._revs):
            await self.remove_revision(key)


class _ThrottlerCollector(Collector):
    """Queue depth, active requests and healthy pods per revision, read at scrape time."""

    def __init__(self, activator: Activator) -> None:
        self._a = activator

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace", "revision"]
        queued = GaugeMetricFamily(
            "zeroscale_activator_request_queued", "Requests waiting for a pod", labels=labels
        )
        active = GaugeMetricFamily(
            "zeroscale_activator_request_active", "Requests proxied to a pod now", labels=labels
        )
        pods = GaugeMetricFamily("zeroscale_activator_healthy_pods", "Pods probed healthy", labels=labels)
        for key, rev in list(self._a._revs.items()):
            t = rev.throttler
            queued.add_metric([key.namespace, key.name], t.queued)
            active.add_metric([key.namespace, key.name], t.in_flight - t.queued)
            pods.add_metric([key.namespace, key.name], len(t.pods))
        yield queued
        yield active
        yield pods
