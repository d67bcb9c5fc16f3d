"""The activator's Kubernetes backend: subscriptions made before connecting, peers, routes from ConfigMaps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
from kubernetes_asyncio import client

from cluster.k8s_activator import KubeActivatorBackend, make_backend
from serving.types import Endpoint, RevisionKey
from tests.fakes.fake_apiserver import FakeApiServer, running_apiserver
from tests.fakes.k8s_helpers import background, configmap, endpoint_slice, eventually

NS = "default"
REV = RevisionKey(NS, "hello-00001")
PART_OF = {"app.kubernetes.io/part-of": "zeroscale"}


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver(bookmark_interval=0.1) as s:
        s.store.create(
            "endpointslices",
            NS,
            endpoint_slice("hello-00001-a", "hello-00001", [("p1", "10.1.0.1", True, True, False)]),
        )
        s.store.create(
            "endpointslices",
            NS,
            endpoint_slice(
                "act",
                "zeroscale-activator",
                [("a1", "10.2.0.9", True, True, False), ("a2", "10.2.0.3", True, True, False)],
            ),
        )
        s.store.create("configmaps", NS, configmap("zeroscale-routes", {"services.yaml": "v1"}, PART_OF))
        yield s


def test_make_backend_reads_the_pod_environment() -> None:
    b = make_backend({"SYSTEM_NAMESPACE": "zs", "POD_IP": "10.2.0.9"})
    assert (b.namespace, b.own_ip) == ("zs", "10.2.0.9")
    assert b.autoscaler_url == "ws://zeroscale-autoscaler.zs.svc:8080"


async def test_early_subscribers_peers_and_routes(server: FakeApiServer) -> None:
    async def connect(_: str | None) -> client.ApiClient:
        return server.client("activator")

    backend = KubeActivatorBackend(NS, own_ip="10.2.0.9", connect=connect)
    lists: list[tuple[Endpoint, ...]] = []
    peers: list[tuple[int, int]] = []
    routes: list[str | None] = []

    def on_endpoints(eps: Sequence[Endpoint]) -> None:
        lists.append(tuple(eps))

    async def on_config(name: str, data: Mapping[str, str] | None) -> None:
        if name == "zeroscale-routes":
            routes.append(None if data is None else data["services.yaml"])

    unsubscribe = backend.endpoints.subscribe(REV, on_endpoints)  # before any API client exists
    backend.peers.subscribe(lambda n, i: peers.append((n, i)))
    backend.add_config_listener(on_config)
    assert backend.endpoints.get(REV) == () and peers == [(1, -1)]
    async with background(backend.run()):
        await eventually(lambda: [e.host for e in (lists[-1] if lists else ())] == ["10.1.0.1"], what="pods")
        await eventually(lambda: peers[-1] == (2, 1), what="peers")
        await eventually(lambda: routes == ["v1"], what="routes")
        server.store.update("configmaps", NS, configmap("zeroscale-routes", {"services.yaml": "v2"}, PART_OF))
        await eventually(lambda: routes == ["v1", "v2"], what="routes updated")
        unsubscribe()
        n = len(lists)
        server.store.delete("endpointslices", NS, "hello-00001-a")
        await eventually(lambda: backend.endpoints.get(REV) == (), what="slice gone")
        assert len(lists) == n
    assert backend.parts is None and backend.endpoints.get(REV) == ()
