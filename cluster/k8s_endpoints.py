"""Pods of each revision, and the activator peer set, from discovery.k8s.io/v1 EndpointSlices.

A revision's pods are the endpoints of its Service (named after the revision; the EndpointSlice
controller labels slices ``kubernetes.io/service-name=<service>``). Conditions follow the API's
meaning: ``ready`` unset means ready; ``serving`` unset means "as ready"; ``terminating`` unset means
no. An endpoint gets new requests only when ready and not terminating; a serving-but-terminating pod
stays in the list (``ready=False, terminating=True``) so that its in-flight requests can finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kubernetes_asyncio import client

from cluster.k8s_cache import Change, Obj, ObjKey
from cluster.k8s_informer import Informer
from serving.types import Endpoint, RevisionKey

__all__ = [
    "SERVICE_LABEL",
    "ActivatorPeers",
    "KubeEndpointSource",
    "endpoints_from_slices",
    "peers_from_slices",
]

log = logging.getLogger("zeroscale.k8s.endpoints")

SERVICE_LABEL = "kubernetes.io/service-name"
# Port names the rendered revision Service uses for the queue-proxy (Knative: "http" / "h2c").
SERVING_PORT_NAMES = ("http", "h2c", "http1", "http2")

EndpointCallback = Callable[[Sequence[Endpoint]], None]
PeersCallback = Callable[[int, int], None]


def _slice_port(slice_: Obj) -> int | None:
    ports = [p for p in slice_.get("ports") or [] if isinstance(p.get("port"), int)]
    for wanted in SERVING_PORT_NAMES:
        for p in ports:
            if p.get("name") == wanted:
                return int(p["port"])
    return int(ports[0]["port"]) if ports else None


def endpoints_from_slices(slices: Iterable[Obj]) -> tuple[Endpoint, ...]:
    """All endpoints of one Service's slices, deduplicated by address, sorted by ``ip:port``.

    An address listed by two slices (they overlap while the controller moves endpoints) is kept once,
    with the more available state: ready beats not ready, not terminating beats terminating.
    FQDN slices are ignored, and of a dual-stack Service only the IPv4 slices are used.
    """
    best: dict[tuple[str, int], Endpoint] = {}
    slices = [s for s in slices if s.get("addressType", "IPv4") in ("IPv4", "IPv6")]
    # A dual-stack Service has one set of slices per address family, listing the same pods twice:
    # use one family (IPv4 when there is any), or every pod would count double.
    if any(s.get("addressType", "IPv4") == "IPv4" for s in slices):
        slices = [s for s in slices if s.get("addressType", "IPv4") == "IPv4"]
    for slice_ in slices:
        port = _slice_port(slice_)
        if port is None:
            continue
        for ep in slice_.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False
            terminating = cond.get("terminating") is True
            ref = ep.get("targetRef") or {}
            pod = str(ref.get("name") or addresses[0]) if ref.get("kind", "Pod") == "Pod" else addresses[0]
            new = Endpoint(
                pod_name=pod,
                host=str(addresses[0]),
                port=port,
                ready=ready and not terminating,
                terminating=terminating,
            )
            key = (new.host, new.port)
            old = best.get(key)
            if old is None or (new.ready, not new.terminating) > (old.ready, not old.terminating):
                best[key] = new
    return tuple(sorted(best.values(), key=lambda e: (e.host, e.port)))


def peers_from_slices(slices: Iterable[Obj], own_ip: str) -> tuple[int, int]:
    """(number of ready activators, own index in their sorted IPs or -1), as Knative's activators count."""
    ips = sorted({e.host for e in endpoints_from_slices(slices) if e.ready})
    return len(ips), (ips.index(own_ip) if own_ip in ips else -1)


def _slice_informer(api: client.ApiClient, namespace: str, selector: str, **kwargs: Any) -> Informer:
    return Informer(
        client.DiscoveryV1Api(api).list_namespaced_endpoint_slice,
        namespace,
        label_selector=selector,
        name=f"endpointslices[{namespace}:{selector}]",
        **kwargs,
    )


class KubeEndpointSource:
    """The activator's and autoscaler's ``EndpointSource`` on Kubernetes: one informer per namespace.

    ``subscribe(revision, callback)`` calls back with the whole endpoint list now (once the first
    list is in) and after every change to that revision's slices.
    """

    def __init__(self, api: client.ApiClient, namespace: str, **informer_kwargs: Any) -> None:
        self.namespace = namespace
        self.informer = _slice_informer(
            api, namespace, SERVICE_LABEL, on_change=self._changed, **informer_kwargs
        )
        self._lists: dict[RevisionKey, tuple[Endpoint, ...]] = {}
        self._subs: dict[RevisionKey, list[EndpointCallback]] = {}
        self._slices: dict[RevisionKey, set[ObjKey]] = {}  # each Service's slices, by cache key

    @property
    def synced(self) -> bool:
        return self.informer.synced.is_set()

    def get(self, revision: RevisionKey) -> tuple[Endpoint, ...]:
        return self._lists.get(revision, ())

    def ready(self, revision: RevisionKey) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.get(revision) if e.ready)

    def subscribe(self, revision: RevisionKey, callback: EndpointCallback) -> Callable[[], None]:
        subs = self._subs.setdefault(revision, [])
        subs.append(callback)
        if self.synced:
            callback(self.get(revision))

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                subs.remove(callback)

        return unsubscribe

    def _changed(self, changes: list[Change]) -> None:
        touched: set[RevisionKey] = set()
        for ch in changes:
            for obj, present in ((ch.old, False), (ch.new, True)):
                if obj is None:
                    continue
                labels = (obj.get("metadata") or {}).get("labels") or {}
                if SERVICE_LABEL not in labels:
                    continue
                rev = RevisionKey(ch.key[0] or self.namespace, labels[SERVICE_LABEL])
                touched.add(rev)
                keys = self._slices.setdefault(rev, set())
                if present:
                    keys.add(ch.key)
                else:
                    keys.discard(ch.key)
        for rev in sorted(touched):
            keys = self._slices.get(rev, set())
            new = endpoints_from_slices(
                self.informer.cache[k] for k in sorted(keys) if k in self.informer.cache
            )
            if not keys:
                self._slices.pop(rev, None)
            if self._lists.get(rev, ()) == new:
                continue
            if new:
                self._lists[rev] = new
            else:
                self._lists.pop(rev, None)
            self._notify(rev, new)

    def _notify(self, rev: RevisionKey, endpoints: tuple[Endpoint, ...]) -> None:
        for cb in list(self._subs.get(rev, ())):
            try:
                cb(endpoints)
            except Exception:
                log.exception("endpoint subscriber for %s failed", rev)

    async def run(self) -> None:
        """Run the informer; once the first list is in, tell early subscribers of empty revisions so."""
        task = asyncio.create_task(self.informer.run())
        synced = asyncio.create_task(self.informer.synced.wait())
        try:
            await asyncio.wait([task, synced], return_when=asyncio.FIRST_COMPLETED)
            for rev in list(self._subs):
                if rev not in self._lists:
                    self._notify(rev, ())
            await task
        finally:
            task.cancel()
            synced.cancel()


class ActivatorPeers:
    """How many activators are ready and where this one stands, from the activator Service's slices.

    ``own_ip`` is this pod's IP (the downward API's ``status.podIP``). Index -1 means "not listed yet"
    (starting, or draining), for which Knative's slicing takes all pods.
    """

    def __init__(
        self, api: client.ApiClient, namespace: str, service: str, own_ip: str, **informer_kwargs: Any
    ) -> None:
        self.own_ip = own_ip
        self.informer = _slice_informer(
            api, namespace, f"{SERVICE_LABEL}={service}", on_change=self._changed, **informer_kwargs
        )
        self._current = (1, -1)
        self._subs: list[PeersCallback] = []

    async def run(self) -> None:
        await self.informer.run()

    def current(self) -> tuple[int, int]:
        return self._current

    def subscribe(self, callback: PeersCallback) -> Callable[[], None]:
        self._subs.append(callback)
        callback(*self._current)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subs.remove(callback)

        return unsubscribe

    def _changed(self, changes: list[Change]) -> None:
        count, index = peers_from_slices(self.informer.cache.values(), self.own_ip)
        new = (max(1, count), index)
        if new == self._current:
            return
        self._current = new
        log.info("activators: %d, this one at index %d", *new)
        for cb in list(self._subs):
            cb(*new)
