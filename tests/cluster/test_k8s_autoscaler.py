"""The autoscaler's Kubernetes backend with the real autoscaler app: a rendered revision Deployment at zero
replicas is adopted, the activator's first stat pokes a decision, and the scale subresource takes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from autoscaler.app import AutoscalerApp, AutoscalerSettings
from autoscaler.config import from_mapping
from cluster.k8s_autoscaler import KubeAutoscalerBackend, make_backend, revision_inputs
from cluster.render import build
from serving.spec import parse_services
from serving.stat import Stat, WireStat
from serving.types import RevisionKey
from tests.fakes.fake_apiserver import FakeApiServer, running_apiserver
from tests.fakes.k8s_controller import FakeDeploymentController
from tests.fakes.k8s_helpers import background, configmap, eventually

NS = "default"
REV = RevisionKey(NS, "hello-00001")
SERVICE = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/target: "10"}
    spec:
      containerConcurrency: 4
      containers: [{image: example.com/hello:1}]
"""
ZERO = {"initial-scale": "0", "allow-zero-initial-scale": "true"}
TIMING = {"lease_duration": 10.0, "renew_deadline": 6.0, "retry_period": 0.2}


def rendered(kind: str, name: str) -> dict[str, Any]:
    for doc in build(parse_services(SERVICE), {"config-autoscaler": ZERO}):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise KeyError(name)


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver(bookmark_interval=0.1) as s:
        s.store.create("deployments", NS, rendered("Deployment", "hello-00001-deployment"))
        s.store.create("configmaps", NS, rendered("ConfigMap", "config-autoscaler"))
        yield s


def test_revision_inputs_read_the_rendered_deployment() -> None:
    got = revision_inputs(rendered("Deployment", "hello-00001-deployment"))
    assert got == (REV, {"autoscaling.knative.dev/target": "10"}, 4)


def test_make_backend_reads_the_pod_environment() -> None:
    b = make_backend({"SYSTEM_NAMESPACE": "zs", "POD_NAME": "autoscaler-7d9", "KUBECONFIG": "/k"})
    assert (b.namespace, b._identity, b._kubeconfig) == ("zs", "autoscaler-7d9", "/k")


async def test_zero_replicas_scale_up_on_the_first_request_and_config_applies_live(
    server: FakeApiServer,
) -> None:
    FakeDeploymentController(server.store, NS, auto_ready=True)

    async def connect(_: str | None) -> client.ApiClient:
        return server.client("autoscaler")

    backend = KubeAutoscalerBackend(NS, identity="autoscaler-0", elector_kwargs=TIMING, connect=connect)
    app = AutoscalerApp(
        scaler=backend.scaler,
        pods=backend.pods,
        targets=backend.targets,
        config=from_mapping(ZERO),
        settings=AutoscalerSettings(host="127.0.0.1", stat_port=0, metrics_port=-1),
    )
    assert backend.ready_pods(REV) is None and backend.get(REV) == ()
    async with background(backend.run(app)):
        await eventually(lambda: app.multiscaler.revisions() == [REV], what="revision adopted")
        await eventually(lambda: backend.parts is not None and backend.parts.elector.is_leader, what="leader")
        await eventually(lambda: backend.ready_pods(REV) == 0, what="ready count known")
        # an idle second reported (no requests), and a decision tick: it stays at zero
        app.multiscaler.send([WireStat(NS, "hello-00001", Stat(pod_name="activator-0"))])
        (decision,) = await app.multiscaler.tick()
        assert decision.valid and decision.decided == 0
        dep = server.store.get("deployments", NS, "hello-00001-deployment")
        assert dep["spec"]["replicas"] == 0
        # the activator's first stat for the idle revision: a poke, decided at once
        app.multiscaler.send(
            [
                WireStat(
                    NS,
                    "hello-00001",
                    Stat(pod_name="activator-0", average_concurrent_requests=1.0, request_count=1.0),
                )
            ]
        )
        await app.multiscaler.settle()  # no tick in between: the poke alone decided and wrote
        dep = server.store.get("deployments", NS, "hello-00001-deployment")
        assert dep["spec"]["replicas"] == 1
        await eventually(lambda: backend.ready_pods(REV) == dep["spec"]["replicas"], what="pods ready")
        await eventually(lambda: len([e for e in backend.get(REV) if e.ready]) >= 1, what="scrape targets")
        # config-autoscaler edited in the cluster reaches the running autoscaler
        server.store.update(
            "configmaps",
            NS,
            configmap(
                "config-autoscaler",
                {**ZERO, "max-scale-up-rate": "3"},
                {"app.kubernetes.io/part-of": "zeroscale"},
            ),
        )
        await eventually(lambda: app.multiscaler._config.max_scale_up_rate == 3.0, what="config applied")
        # deleting the revision's Deployment stops its scaling
        server.store.delete("deployments", NS, "hello-00001-deployment")
        await eventually(lambda: app.multiscaler.revisions() == [], what="revision removed")
    writes = [r for r in server.requests if r.subresource == "scale" and r.verb == "patch"]
    assert len(writes) == 1 and writes[0].client == "autoscaler"
