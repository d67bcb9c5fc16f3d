"""The rendered Roles grant exactly the verbs the Kubernetes code calls: no more, no less.

Each component's backend runs against the fake API server through its own client; the server logs
(apiGroup, resource, verb) of every request, and that set must equal what the component's Role grants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from cluster.k8s_names import ACTIVATOR, AUTOSCALER, LEASE
from cluster.k8s_system import ACTIVATOR_RULES, AUTOSCALER_RULES
from cluster.kubernetes import ActivatorBackend, AutoscalerBackend
from cluster.render import build
from serving.spec import parse_services
from serving.types import RevisionKey
from tests.fakes.fake_apiserver import FakeApiServer, running_apiserver
from tests.fakes.k8s_controller import FakeDeploymentController
from tests.fakes.k8s_helpers import background, configmap, deployment, endpoint_slice, eventually

NS = "default"
REV = RevisionKey(NS, "hello-00001")


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver(bookmark_interval=0.1) as s:
        s.store.create(
            "configmaps", NS, configmap("config-autoscaler", {}, {"app.kubernetes.io/part-of": "zeroscale"})
        )
        s.store.create(
            "endpointslices", NS, endpoint_slice("act-1", ACTIVATOR, [("a", "10.0.0.1", True, True, False)])
        )
        s.store.create(
            "deployments",
            NS,
            deployment("hello-00001-deployment", 0, {"serving.knative.dev/revision": "hello-00001"}),
        )
        yield s


def test_rendered_roles_are_the_rules_checked_here() -> None:
    text = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: hello}\nspec:\n  template:\n"
    text += "    spec:\n      containers: [{image: example.com/hello}]\n"
    roles = {d["metadata"]["name"]: d for d in build(parse_services(text), {}) if d["kind"] == "Role"}
    assert roles[ACTIVATOR]["rules"] == ACTIVATOR_RULES
    assert roles[AUTOSCALER]["rules"] == AUTOSCALER_RULES


async def test_the_activator_uses_exactly_its_grants(server: FakeApiServer) -> None:
    api = server.client("activator")
    configs: list[str] = []

    def on_config(name: str, data: Mapping[str, str] | None) -> None:
        configs.append(name)

    try:
        backend = ActivatorBackend.create(api, NS, on_config)
        backend.peers.own_ip = "10.0.0.1"
        async with background(backend.run()):
            await eventually(
                lambda: backend.peers.current() == (1, 0) and configs == ["config-autoscaler"],
                what="activator synced",
            )
            await eventually(lambda: server.open_watches == 3, what="three watches open")
    finally:
        await api.close()
    assert server.verbs("activator") == granted(ACTIVATOR_RULES)


async def test_the_autoscaler_uses_exactly_its_grants(server: FakeApiServer) -> None:
    FakeDeploymentController(server.store, NS, auto_ready=True)
    api = server.client("autoscaler")
    timing = {"lease_duration": 10.0, "renew_deadline": 6.0, "retry_period": 0.2}
    try:
        backend = AutoscalerBackend.create(
            api, NS, lambda n, d: None, identity="autoscaler-0", elector_kwargs=timing
        )
        async with background(backend.run()):
            await eventually(lambda: backend.elector.is_leader, what="leader")
            await backend.scaler.scale(REV, 1)
            await eventually(lambda: backend.scaler.ready_pods(REV) == 1, what="pod ready")
            await eventually(lambda: len(backend.endpoints.ready(REV)) == 1, what="endpoint ready")
            n = len(server.requests)
            await eventually(
                lambda: any(r.verb == "update" and r.resource == "leases" for r in server.requests[n:]),
                what="renewal",
            )
    finally:
        await api.close()
    used = server.verbs("autoscaler")
    # one lease rule is limited to its name: check the names, then compare verbs
    lease_names = {r.name for r in server.requests if r.resource == "leases" and r.verb in ("get", "update")}
    assert lease_names == {LEASE}
    assert used == granted(AUTOSCALER_RULES)
