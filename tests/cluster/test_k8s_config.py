"""Routes and config-* ConfigMaps reach a running component through a callback, no restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest

from cluster.kubernetes import load_client, watch_configmaps
from serving.config import DefaultsConfig
from serving.errors import ConfigError
from serving.spec import parse_services
from tests.fakes.fake_apiserver import FakeApiServer, running_apiserver
from tests.fakes.k8s_helpers import background, configmap, eventually

NS = "knative-serving"
PART_OF = {"app.kubernetes.io/part-of": "zeroscale"}

SERVICE_V1 = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  template:
    spec:
      containers: [{image: example.com/hello:1}]
"""
SERVICE_V2 = (
    SERVICE_V1.replace("hello:1", "hello:2")
    + """
  traffic:
  - {latestRevision: true, percent: 60}
  - {revisionName: hello-00001, percent: 40}
"""
)


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver(bookmark_interval=0.1) as s:
        yield s


async def test_routes_and_config_updates_are_delivered_in_order_without_restart(
    server: FakeApiServer,
) -> None:
    server.store.create(
        "configmaps", NS, configmap("zeroscale-routes", {"services.yaml": SERVICE_V1}, PART_OF)
    )
    server.store.create(
        "configmaps", NS, configmap("config-defaults", {"revision-timeout-seconds": "300"}, PART_OF)
    )
    server.store.create("configmaps", NS, configmap("unrelated", {"x": "y"}))  # not labelled: never seen
    state: dict[str, object] = {}
    calls: list[str] = []

    def on_change(name: str, data: Mapping[str, str] | None) -> None:
        calls.append(name)
        if name == "zeroscale-routes":
            state["services"] = None if data is None else parse_services(data["services.yaml"], name)
        elif name == "config-defaults":
            state["defaults"] = None if data is None else DefaultsConfig.from_mapping(data)

    api = server.client()
    try:
        watcher = watch_configmaps(api, NS, on_change)
        async with background(watcher.run()):
            await eventually(lambda: len(calls) == 2, what="initial ConfigMaps")
            assert sorted(calls) == ["config-defaults", "zeroscale-routes"]
            services = state["services"]
            assert (
                isinstance(services, list) and services[0].template.container.image == "example.com/hello:1"
            )
            server.store.update(
                "configmaps", NS, configmap("zeroscale-routes", {"services.yaml": SERVICE_V2}, PART_OF)
            )
            await eventually(lambda: len(calls) == 3, what="routes update")
            services = state["services"]
            assert isinstance(services, list)
            assert [t.percent for t in services[0].traffic] == [60, 40]
            # a labels-only change is not a config change
            server.store.update(
                "configmaps",
                NS,
                configmap(
                    "config-defaults", {"revision-timeout-seconds": "300"}, {**PART_OF, "touched": "yes"}
                ),
            )
            server.store.update(
                "configmaps", NS, configmap("config-defaults", {"revision-timeout-seconds": "120"}, PART_OF)
            )
            await eventually(lambda: len(calls) == 4, what="defaults update")
            defaults = state["defaults"]
            assert isinstance(defaults, DefaultsConfig) and defaults.revision_timeout_seconds == 120
            server.store.delete("configmaps", NS, "zeroscale-routes")
            await eventually(lambda: len(calls) == 5 and state["services"] is None, what="routes deleted")
        assert watcher.current("config-defaults") == {"revision-timeout-seconds": "120"}
        assert "unrelated" not in calls
    finally:
        await api.close()


async def test_a_bad_value_is_rejected_and_the_previous_config_stays(server: FakeApiServer) -> None:
    server.store.create(
        "configmaps", NS, configmap("config-defaults", {"revision-timeout-seconds": "300"}, PART_OF)
    )
    applied: list[int] = []

    async def on_change(name: str, data: Mapping[str, str] | None) -> None:  # async callbacks are awaited
        assert data is not None
        applied.append(DefaultsConfig.from_mapping(data).revision_timeout_seconds)

    api = server.client()
    try:
        watcher = watch_configmaps(api, NS, on_change, names=["config-defaults"])
        async with background(watcher.run()):
            await eventually(lambda: applied == [300], what="initial")
            server.store.update(
                "configmaps", NS, configmap("config-defaults", {"revision-timeout-seconds": "soon"}, PART_OF)
            )
            await eventually(lambda: watcher.rejected == 1, what="rejection")
            server.store.update(
                "configmaps", NS, configmap("config-defaults", {"revision-timeout-seconds": "60"}, PART_OF)
            )
            await eventually(lambda: applied == [300, 60], what="next good value")
    finally:
        await api.close()


def test_a_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="revision-timeout-seconds"):
        DefaultsConfig.from_mapping({"revision-timeout-seconds": "soon"})


async def test_load_client_reads_a_kubeconfig(tmp_path: object, server: FakeApiServer) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{server.url}"}}}}]
users: [{{name: me, user: {{token: secret-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: me, namespace: {NS}}}}}]
current-context: fake
"""
    )
    api = await load_client(str(kubeconfig))
    try:
        from kubernetes_asyncio import client

        await client.CoreV1Api(api).list_namespaced_config_map(NS)
    finally:
        await api.close()
    assert [r.verb for r in server.requests] == ["list"]


async def test_load_client_outside_a_cluster_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="--kubeconfig"):
        await load_client(None)
