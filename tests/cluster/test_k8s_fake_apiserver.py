"""The fake API server speaks the wire format the real client expects (checked through that client)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakes.fake_apiserver import FakeApiServer, running_apiserver
from tests.fakes.k8s_helpers import configmap, deployment
from tests.fakes.k8s_store import match_labels

NS = "default"


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver(bookmark_interval=0.05) as s:
        yield s


@pytest.fixture
async def api(server: FakeApiServer) -> AsyncIterator[client.ApiClient]:
    a = server.client()
    try:
        yield a
    finally:
        await a.close()


@pytest.mark.parametrize(
    ("selector", "labels", "match"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1,b", {"a": "1"}, False),
        ("a!=1", {}, True),
        ("!a", {"a": "x"}, False),
        ("a in (x, y)", {"a": "y"}, True),
        ("a notin (x,y),b=2", {"a": "z", "b": "2"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], match: bool) -> None:
    assert match_labels(selector, labels) is match


async def test_typed_list_and_get_deserialize_in_the_real_client(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    server.store.create("deployments", NS, deployment("web", 3))
    apps = client.AppsV1Api(api)
    deps = await apps.list_namespaced_deployment(NS)
    assert [d.metadata.name for d in deps.items] == ["web"]
    assert deps.metadata.resource_version == str(server.store.rv)
    dep = await apps.read_namespaced_deployment("web", NS)
    assert dep.spec.replicas == 3 and dep.metadata.generation == 1


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/merge-patch+json", {"spec": {"replicas": 4}}),
        ("application/strategic-merge-patch+json", {"spec": {"replicas": 4}}),
        ("application/json-patch+json", [{"op": "replace", "path": "/spec/replicas", "value": 4}]),
    ],
)
async def test_scale_subresource_patches(
    server: FakeApiServer, api: client.ApiClient, content_type: str, body: object
) -> None:
    server.store.create("deployments", NS, deployment("web", 1))
    apps = client.AppsV1Api(api)
    scale = await apps.read_namespaced_deployment_scale("web", NS)
    assert scale.kind == "Scale" and scale.spec.replicas == 1 and scale.status.selector == "app=web"
    out = await apps.patch_namespaced_deployment_scale("web", NS, body, _content_type=content_type)  # type: ignore[call-arg]
    assert out.spec.replicas == 4
    dep = server.store.get("deployments", NS, "web")
    assert dep["spec"]["replicas"] == 4 and dep["metadata"]["generation"] == 2


async def test_errors_are_kubernetes_status_objects(server: FakeApiServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_config_map(NS, configmap("c", {"k": "v"}))  # type: ignore[arg-type]
    with pytest.raises(ApiException) as exists:
        await core.create_namespaced_config_map(NS, configmap("c", {}))  # type: ignore[arg-type]
    assert exists.value.status == 409 and json.loads(exists.value.body or b"{}")["reason"] == "AlreadyExists"
    stale = {**configmap("c", {"k": "w"}), "metadata": {"name": "c", "resourceVersion": "1"}}
    with pytest.raises(ApiException) as conflict:
        await core.replace_namespaced_config_map("c", NS, stale)  # type: ignore[arg-type]
    assert conflict.value.status == 409 and json.loads(conflict.value.body or b"{}")["reason"] == "Conflict"
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_config_map("nope", NS)
    assert missing.value.status == 404
    with pytest.raises(ApiException) as unsupported:
        await core.patch_namespaced_config_map(
            "c", NS, {"data": {}}, _content_type="application/apply-patch+yaml"
        )  # type: ignore[call-arg]
    assert unsupported.value.status == 415


async def test_watch_from_zero_lists_first_then_streams_with_bookmarks(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    server.store.create("configmaps", NS, configmap("a", {}))
    core = client.CoreV1Api(api)
    resp: Any = await core.list_namespaced_config_map(
        NS,
        watch=True,
        resource_version="0",
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        _preload_content=False,
    )
    events = []
    try:
        async for raw in resp.content:
            ev = json.loads(raw)
            events.append(ev["type"])
            if ev["type"] == "BOOKMARK":
                assert ev["object"]["metadata"]["resourceVersion"] == str(server.store.rv)
                break
    finally:
        resp.release()
    assert events == ["ADDED", "BOOKMARK"]


async def test_objects_entering_and_leaving_a_selector_are_added_and_deleted(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    """As the API server's watch cache does: a relabelled object shows up as ADDED or DELETED."""
    from cluster.k8s_informer import Informer
    from tests.fakes.k8s_helpers import background, eventually

    server.store.create("configmaps", NS, configmap("a", {}, {"app": "x"}))
    kinds: list[tuple[str, str]] = []
    inf = Informer(
        client.CoreV1Api(api).list_namespaced_config_map,
        NS,
        label_selector="app=x",
        on_change=lambda chs: kinds.extend((c.kind, c.key[1]) for c in chs),
    )
    async with background(inf.run()):
        await eventually(lambda: server.open_watches == 1, what="watching")
        server.store.update("configmaps", NS, configmap("a", {}, {"app": "y"}))
        server.store.create("configmaps", NS, configmap("b", {}, {"app": "y"}))
        server.store.update("configmaps", NS, configmap("b", {}, {"app": "x"}))
        await eventually(lambda: len(kinds) == 3, what="three changes")
    assert kinds == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "b")]
    assert set(k[1] for k in inf.cache) == {"b"}
