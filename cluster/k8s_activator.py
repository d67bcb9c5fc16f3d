"""The gateway/activator's Kubernetes backend: ``make_backend(env)`` for ``activator --backend kubernetes``.

What it hands the activator, all usable before the API client exists (aiohttp needs the running
loop, so the client is made inside ``run``):
- ``endpoints``: an ``EndpointSource`` (``subscribe(revision, callback) -> unsubscribe``) over the
  revisions' EndpointSlices; subscriptions made early are attached once connected;
- ``peers``: ``subscribe(callback(count, index))`` / ``current()``, the ready activators and this
  one's index in their sorted IPs, for capacity slicing;
- ``add_config_listener(callback(name, data | None))``: the routes ConfigMap (``zeroscale-routes``)
  and the ``config-*`` maps, at start and on every change, without a restart.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from kubernetes_asyncio import client

from cluster.k8s_endpoints import ActivatorPeers, KubeEndpointSource
from cluster.k8s_names import AUTOSCALER
from cluster.kubernetes import ActivatorBackend, load_client, pod_identity, system_namespace
from serving.types import Endpoint, RevisionKey

__all__ = ["KubeActivatorBackend", "LazyEndpointSource", "LazyPeers", "make_backend"]

log = logging.getLogger("zeroscale.k8s.activator")

EndpointCallback = Callable[[Sequence[Endpoint]], None]
PeersCallback = Callable[[int, int], None]
ConfigCallback = Callable[[str, Mapping[str, str] | None], Any]


class _Sub:
    __slots__ = ("callback", "detach", "revision")

    def __init__(self, revision: RevisionKey, callback: EndpointCallback) -> None:
        self.revision, self.callback = revision, callback
        self.detach: Callable[[], None] | None = None


class LazyEndpointSource:
    """An EndpointSource whose real source arrives later (and may go and come back on reconnect)."""

    def __init__(self) -> None:
        self._source: KubeEndpointSource | None = None
        self._subs: list[_Sub] = []

    def subscribe(self, revision: RevisionKey, callback: EndpointCallback) -> Callable[[], None]:
        sub = _Sub(revision, callback)
        self._subs.append(sub)
        if self._source is not None:
            sub.detach = self._source.subscribe(revision, callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subs.remove(sub)
            if sub.detach is not None:
                sub.detach()
                sub.detach = None

        return unsubscribe

    def get(self, revision: RevisionKey) -> tuple[Endpoint, ...]:
        return () if self._source is None else self._source.get(revision)

    def attach(self, source: KubeEndpointSource) -> None:
        self._source = source
        for sub in self._subs:
            sub.detach = source.subscribe(sub.revision, sub.callback)

    def detach(self) -> None:
        for sub in self._subs:
            if sub.detach is not None:
                sub.detach()
                sub.detach = None
        self._source = None


class LazyPeers:
    """(count, index) of ready activators; (1, -1) until known, which takes all pods (Knative's rule)."""

    def __init__(self) -> None:
        self._peers: ActivatorPeers | None = None
        self._subs: list[PeersCallback] = []

    def current(self) -> tuple[int, int]:
        return (1, -1) if self._peers is None else self._peers.current()

    def subscribe(self, callback: PeersCallback) -> Callable[[], None]:
        self._subs.append(callback)
        callback(*self.current())

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subs.remove(callback)

        return unsubscribe

    def _changed(self, count: int, index: int) -> None:
        for cb in list(self._subs):
            cb(count, index)

    def attach(self, peers: ActivatorPeers) -> None:
        self._peers = peers
        peers.subscribe(self._changed)


class KubeActivatorBackend:
    def __init__(
        self,
        namespace: str,
        *,
        kubeconfig: str | None = None,
        own_ip: str = "",
        connect: Callable[[str | None], Awaitable[client.ApiClient]] = load_client,
        **informer_kwargs: Any,
    ) -> None:
        self.namespace = namespace
        self.own_ip = own_ip
        # where to stream stats: the autoscaler Service, as Knative's activator finds its autoscaler
        self.autoscaler_url = f"ws://{AUTOSCALER}.{namespace}.svc:8080"
        self._kubeconfig = kubeconfig
        self._connect = connect
        self._informer_kwargs = informer_kwargs
        self.endpoints = LazyEndpointSource()
        self.peers = LazyPeers()
        self._config_listeners: list[ConfigCallback] = []
        self.parts: ActivatorBackend | None = None

    def add_config_listener(self, callback: ConfigCallback) -> None:
        self._config_listeners.append(callback)

    async def _config_changed(self, name: str, data: Mapping[str, str] | None) -> None:
        for cb in list(self._config_listeners):
            result = cb(name, data)
            if inspect.isawaitable(result):
                await result

    async def run(self) -> None:
        api = await self._connect(self._kubeconfig)
        try:
            parts = ActivatorBackend.create(
                api, self.namespace, self._config_changed, self.own_ip, **self._informer_kwargs
            )
            self.parts = parts
            self.endpoints.attach(parts.endpoints)
            self.peers.attach(parts.peers)
            await parts.run()
        finally:
            self.endpoints.detach()
            self.parts = None
            await api.close()


def make_backend(env: Mapping[str, str]) -> KubeActivatorBackend:
    """For ``activator --backend kubernetes``: SYSTEM_NAMESPACE, POD_IP (peer index), KUBECONFIG."""
    return KubeActivatorBackend(
        system_namespace(env), kubeconfig=env.get("KUBECONFIG") or None, own_ip=pod_identity(env)[1]
    )
