"""The Kubernetes backend of the activator and the autoscaler: factories over kubernetes-asyncio.

    api = await load_client(None)                       # in-cluster service account, or a kubeconfig path
    endpoints = make_endpoint_source(api, "default")    # EndpointSource: subscribe(revision, callback)
    peers = make_activator_peers(api, "default")        # (count, index) of ready activators
    elector = make_elector(api, "default")              # Lease zeroscale-autoscaler-leader
    scaler = make_scaler(api, "default", leadership=elector)   # scale(revision, n), ready_pods(revision)
    config = watch_configmaps(api, "default", on_change)       # routes and config-* without a restart

Each object has ``async run()`` (its informer or election loop) and is useful once that runs.
``ActivatorBackend`` and ``AutoscalerBackend`` bundle what each binary needs, with one ``run()``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config

from cluster.k8s_config import ConfigMapWatcher, OnChange, watch_configmaps
from cluster.k8s_endpoints import ActivatorPeers, KubeEndpointSource
from cluster.k8s_lease import LeaseElector
from cluster.k8s_names import ACTIVATOR, LEASE
from cluster.k8s_scaler import KubeScaler, Leadership, NotLeaderError, ScaleError
from serving.errors import ConfigError

__all__ = [
    "ActivatorBackend",
    "ActivatorPeers",
    "AutoscalerBackend",
    "ConfigMapWatcher",
    "KubeEndpointSource",
    "KubeScaler",
    "LeaseElector",
    "NotLeaderError",
    "ScaleError",
    "load_client",
    "make_activator_peers",
    "make_elector",
    "make_endpoint_source",
    "make_scaler",
    "pod_identity",
    "system_namespace",
    "watch_configmaps",
]

_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


async def load_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from a kubeconfig file when given, else from the pod's service account."""
    cfg = client.Configuration()
    try:
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException as e:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster service account"
        raise ConfigError(
            f"cannot load Kubernetes credentials from {where}: {e} "
            "(outside a cluster, pass --kubeconfig PATH)"
        ) from e
    return client.ApiClient(cfg)


def system_namespace(env: Mapping[str, str] | None = None) -> str:
    """SYSTEM_NAMESPACE (Knative's variable), else the pod's own namespace, else "default"."""
    env = os.environ if env is None else env
    if env.get("SYSTEM_NAMESPACE"):
        return env["SYSTEM_NAMESPACE"]
    try:
        with open(_SA_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def pod_identity(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(pod name, pod IP) from the downward-API variables POD_NAME and POD_IP."""
    env = os.environ if env is None else env
    name = env.get("POD_NAME") or socket.gethostname()
    return name, env.get("POD_IP", "")


def make_endpoint_source(api: client.ApiClient, namespace: str, **informer_kwargs: Any) -> KubeEndpointSource:
    return KubeEndpointSource(api, namespace, **informer_kwargs)


def make_activator_peers(
    api: client.ApiClient, namespace: str, own_ip: str | None = None, service: str = ACTIVATOR, **kw: Any
) -> ActivatorPeers:
    return ActivatorPeers(api, namespace, service, own_ip if own_ip is not None else pod_identity()[1], **kw)


def make_scaler(
    api: client.ApiClient, namespace: str, leadership: Leadership | None = None, **informer_kwargs: Any
) -> KubeScaler:
    return KubeScaler(api, namespace, leadership=leadership, **informer_kwargs)


def make_elector(
    api: client.ApiClient, namespace: str, identity: str | None = None, name: str = LEASE, **kw: Any
) -> LeaseElector:
    return LeaseElector(api, namespace, name, identity or pod_identity()[0], **kw)


async def _run_all(*runners: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async with asyncio.TaskGroup() as tg:
        for run in runners:
            tg.create_task(run())


@dataclass
class ActivatorBackend:
    """What the gateway/activator needs on Kubernetes: pods, peers, routes and config."""

    endpoints: KubeEndpointSource
    peers: ActivatorPeers
    config: ConfigMapWatcher

    @classmethod
    def create(
        cls, api: client.ApiClient, namespace: str, on_config: OnChange, own_ip: str | None = None, **kw: Any
    ) -> ActivatorBackend:
        return cls(
            make_endpoint_source(api, namespace, **kw),
            make_activator_peers(api, namespace, own_ip, **kw),
            watch_configmaps(api, namespace, on_config, **kw),
        )

    async def run(self) -> None:
        await _run_all(self.endpoints.run, self.peers.run, self.config.run)


@dataclass
class AutoscalerBackend:
    """What the autoscaler needs: pods to scrape, a leader-guarded scaler, the election, config."""

    endpoints: KubeEndpointSource
    scaler: KubeScaler
    elector: LeaseElector
    config: ConfigMapWatcher

    @classmethod
    def create(
        cls,
        api: client.ApiClient,
        namespace: str,
        on_config: OnChange,
        identity: str | None = None,
        elector_kwargs: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> AutoscalerBackend:
        elector = make_elector(api, namespace, identity, **dict(elector_kwargs or {}))
        return cls(
            make_endpoint_source(api, namespace, **kw),
            make_scaler(api, namespace, leadership=elector, **kw),
            elector,
            watch_configmaps(api, namespace, on_config, **kw),
        )

    async def run(self) -> None:
        await _run_all(self.endpoints.run, self.scaler.run, self.elector.run, self.config.run)
