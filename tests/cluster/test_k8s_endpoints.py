"""EndpointSlices -> Endpoints (pure table tests), and the EndpointSource / Scaler over the real client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from cluster.k8s_endpoints import endpoints_from_slices, peers_from_slices
from cluster.kubernetes import (
    NotLeaderError,
    ScaleError,
    make_activator_peers,
    make_endpoint_source,
    make_scaler,
)
from serving.types import Endpoint, RevisionKey
from tests.fakes.fake_apiserver import FakeApiServer, running_apiserver
from tests.fakes.k8s_controller import FakeDeploymentController
from tests.fakes.k8s_helpers import background, deployment, endpoint_slice, eventually

NS = "default"
REV = RevisionKey(NS, "hello-00001")


def ep(cond: dict[str, Any], ip: str = "10.0.0.1", pod: str = "p1") -> dict[str, Any]:
    return {"addresses": [ip], "conditions": cond, "targetRef": {"kind": "Pod", "name": pod}}


def slice_of(*eps: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if ports is None:
        ports = [{"name": "http", "port": 8012}]
    return {"metadata": {"name": "s"}, "addressType": "IPv4", "ports": ports, "endpoints": list(eps)}


@pytest.mark.parametrize(
    ("cond", "ready", "terminating"),
    [
        pytest.param({"ready": True, "serving": True, "terminating": False}, True, False, id="ready"),
        pytest.param({}, True, False, id="unset-conditions-mean-ready"),
        pytest.param({"ready": False, "serving": False, "terminating": False}, False, False, id="not-ready"),
        pytest.param(
            {"ready": False, "serving": True, "terminating": True}, False, True, id="serving-terminating"
        ),
        pytest.param(
            {"ready": True, "terminating": True}, False, True, id="terminating-never-gets-new-requests"
        ),
    ],
)
def test_conditions(cond: dict[str, Any], ready: bool, terminating: bool) -> None:
    (e,) = endpoints_from_slices([slice_of(ep(cond))])
    assert (e.ready, e.terminating) == (ready, terminating)
    assert (e.pod_name, e.host, e.port) == ("p1", "10.0.0.1", 8012)


@pytest.mark.parametrize(
    ("ports", "port"),
    [
        pytest.param(
            [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8012}], 8012, id="named-http"
        ),
        pytest.param([{"name": "h2c", "port": 8013}], 8013, id="h2c"),
        pytest.param([{"name": "x", "port": 1234}], 1234, id="first-when-unnamed"),
        pytest.param([], None, id="no-port-no-endpoint"),
    ],
)
def test_port_choice(ports: list[dict[str, Any]], port: int | None) -> None:
    out = endpoints_from_slices([slice_of(ep({}), ports=ports)])
    assert [e.port for e in out] == ([] if port is None else [port])


def test_an_address_in_two_slices_keeps_its_best_state_and_lists_sort_by_address() -> None:
    a = slice_of(ep({"ready": False}, "10.0.0.9", "p9"), ep({"ready": False}, "10.0.0.2", "p2"))
    b = slice_of(ep({"ready": True}, "10.0.0.9", "p9"))
    out = endpoints_from_slices([a, b])
    assert [(e.host, e.ready) for e in out] == [("10.0.0.2", False), ("10.0.0.9", True)]


@pytest.mark.parametrize(
    ("ips", "own", "want"),
    [
        pytest.param(["10.0.0.3", "10.0.0.1", "10.0.0.2"], "10.0.0.2", (3, 1), id="middle"),
        pytest.param(["10.0.0.1"], "10.0.0.1", (1, 0), id="alone"),
        pytest.param(["10.0.0.1", "10.0.0.2"], "10.0.0.7", (2, -1), id="not-listed-yet"),
    ],
)
def test_peers(ips: list[str], own: str, want: tuple[int, int]) -> None:
    s = slice_of(*[ep({"ready": True}, ip, f"a{i}") for i, ip in enumerate(ips)])
    assert peers_from_slices([s], own) == want


def test_not_ready_peers_do_not_count() -> None:
    s = slice_of(ep({"ready": True}, "10.0.0.1"), ep({"ready": False}, "10.0.0.2"))
    assert peers_from_slices([s], "10.0.0.2") == (1, -1)


# ---- over HTTP, through the real kubernetes-asyncio client -------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver(bookmark_interval=0.1) as s:
        yield s


class Lists:
    def __init__(self) -> None:
        self.calls: list[tuple[Endpoint, ...]] = []

    def __call__(self, eps: Sequence[Endpoint]) -> None:
        self.calls.append(tuple(eps))

    @property
    def last(self) -> tuple[Endpoint, ...]:
        return self.calls[-1] if self.calls else ()

    def ready_hosts(self) -> list[str]:
        return [e.host for e in self.last if e.ready]


async def test_an_endpoint_turning_not_ready_stops_being_offered(server: FakeApiServer) -> None:
    pods = [("p1", "10.1.0.1", True, True, False), ("p2", "10.1.0.2", True, True, False)]
    server.store.create("endpointslices", NS, endpoint_slice("hello-00001-x1", "hello-00001", pods))
    server.store.create("endpointslices", NS, endpoint_slice("other-x1", "other", pods[:1]))
    api = server.client()
    try:
        source = make_endpoint_source(api, NS)
        seen = Lists()
        unsubscribe = source.subscribe(REV, seen)
        async with background(source.run()):
            await eventually(lambda: seen.ready_hosts() == ["10.1.0.1", "10.1.0.2"], what="two ready pods")
            pods[1] = ("p2", "10.1.0.2", False, False, False)
            server.store.update("endpointslices", NS, endpoint_slice("hello-00001-x1", "hello-00001", pods))
            await eventually(lambda: seen.ready_hosts() == ["10.1.0.1"], what="p2 not offered")
            assert [e.host for e in source.ready(REV)] == ["10.1.0.1"]
            assert len(source.get(REV)) == 2  # still listed: the activator may probe it
            # shutting down: serving while terminating keeps in-flight requests, gets no new ones
            pods[0] = ("p1", "10.1.0.1", False, True, True)
            server.store.update("endpointslices", NS, endpoint_slice("hello-00001-x1", "hello-00001", pods))
            await eventually(lambda: seen.ready_hosts() == [], what="p1 terminating")
            assert seen.last[0].terminating and not seen.last[0].ready
            server.store.delete("endpointslices", NS, "hello-00001-x1")
            await eventually(lambda: seen.last == (), what="slice gone")
            unsubscribe()
            n = len(seen.calls)
            server.store.create("endpointslices", NS, endpoint_slice("hello-00001-x2", "hello-00001", pods))
            await eventually(lambda: len(source.get(REV)) == 2, what="new slice")
            assert len(seen.calls) == n
        # the other service's slice never reached this revision's subscriber
        assert all(e.pod_name in ("p1", "p2") for call in seen.calls for e in call)
    finally:
        await api.close()


async def test_a_subscriber_of_a_revision_without_slices_hears_the_empty_list(server: FakeApiServer) -> None:
    api = server.client()
    try:
        source = make_endpoint_source(api, NS)
        seen = Lists()
        source.subscribe(REV, seen)
        async with background(source.run()):
            await eventually(lambda: seen.calls == [()], what="empty list after first sync")
    finally:
        await api.close()


async def test_activator_peers_follow_the_activator_service(server: FakeApiServer) -> None:
    acts = [("a1", "10.2.0.5", True, True, False), ("a2", "10.2.0.3", True, True, False)]
    server.store.create("endpointslices", NS, endpoint_slice("act-1", "zeroscale-activator", acts))
    api = server.client()
    try:
        peers = make_activator_peers(api, NS, own_ip="10.2.0.5")
        seen: list[tuple[int, int]] = []
        peers.subscribe(lambda n, i: seen.append((n, i)))
        async with background(peers.run()):
            await eventually(lambda: peers.current() == (2, 1), what="two activators")
            acts.append(("a3", "10.2.0.4", True, True, False))
            server.store.update("endpointslices", NS, endpoint_slice("act-1", "zeroscale-activator", acts))
            await eventually(lambda: peers.current() == (3, 2), what="three activators")
        assert seen == [(1, -1), (2, 1), (3, 2)]
    finally:
        await api.close()


async def test_a_revision_with_zero_replicas_is_scaled_up_through_the_scale_subresource(
    server: FakeApiServer,
) -> None:
    """The cold-start path on Kubernetes: desired 1 goes to the scale subresource; the pod that the
    (fake) Deployment controller starts shows up in the EndpointSlices, first not ready, then ready."""
    ctl = FakeDeploymentController(server.store, NS)
    server.store.create(
        "deployments",
        NS,
        deployment("hello-00001-deployment", 0, {"serving.knative.dev/revision": "hello-00001"}),
    )
    api = server.client("autoscaler")
    try:
        source = make_endpoint_source(api, NS)
        scaler = make_scaler(api, NS)
        seen = Lists()
        source.subscribe(REV, seen)
        async with background(source.run(), scaler.run()):
            await eventually(lambda: scaler.ready_pods(REV) == 0 and seen.calls == [()], what="synced, empty")
            assert scaler.desired_pods(REV) == 0
            await scaler.scale(REV, 1)
            assert server.store.get("deployments", NS, "hello-00001-deployment")["spec"]["replicas"] == 1
            await eventually(lambda: len(seen.last) == 1, what="the new pod listed")
            assert not seen.last[0].ready  # starting: not offered yet
            ctl.make_ready("hello-00001-deployment")
            await eventually(lambda: seen.ready_hosts() != [], what="pod ready")
            await eventually(lambda: scaler.ready_pods(REV) == 1, what="readyReplicas 1")
            await scaler.scale(REV, 1)  # already there: read, no write
            await scaler.scale(REV, 0)
            await eventually(lambda: seen.last == () and scaler.ready_pods(REV) == 0, what="scaled to zero")
        scale_calls = [(r.verb, r.status) for r in server.requests if r.subresource == "scale"]
        assert scale_calls == [("get", 200), ("patch", 200), ("get", 200), ("get", 200), ("patch", 200)]
        assert scaler.writes == 2
    finally:
        await api.close()


async def test_a_scaler_without_the_lease_writes_nothing(server: FakeApiServer) -> None:
    server.store.create("deployments", NS, deployment("hello-00001-deployment", 0))

    class NoLease:
        def remaining(self) -> float:
            return 0.0

    api = server.client()
    try:
        scaler = make_scaler(api, NS, leadership=NoLease())
        with pytest.raises(NotLeaderError):
            await scaler.scale(REV, 3)
        assert [r for r in server.requests if r.subresource == "scale"] == []
    finally:
        await api.close()


async def test_scale_patch_is_a_json_patch_on_the_subresource(server: FakeApiServer) -> None:
    server.store.create("deployments", NS, deployment("hello-00001-deployment", 2))
    seen_types: list[str] = []
    from tests.fakes.fake_apiserver import Fault

    def spy(request: Any) -> bool:  # a fault that never fires, to observe the Content-Type
        if request.method == "PATCH":
            seen_types.append(request.headers.get("Content-Type", ""))
            seen_types.append(request.query.get("fieldManager", ""))
        return False

    server.add_fault(Fault(spy, count=None))
    api = server.client()
    try:
        await make_scaler(api, NS).scale(REV, 5)
    finally:
        await api.close()
    assert seen_types == ["application/json-patch+json", "zeroscale-autoscaler"]
    dep = server.store.get("deployments", NS, "hello-00001-deployment")
    assert dep["spec"]["replicas"] == 5 and dep["spec"]["template"]["spec"]["containers"][0]["name"] == "app"


async def test_a_write_is_cut_off_when_the_lease_time_it_had_runs_out(server: FakeApiServer) -> None:
    from tests.fakes.fake_apiserver import Fault

    server.store.create("deployments", NS, deployment("hello-00001-deployment", 0))
    server.add_fault(Fault(lambda r: r.method == "GET", status=0, delay=2.0))  # a slow API server

    class ShortLease:
        def remaining(self) -> float:
            return 0.2

    api = server.client()
    try:
        with pytest.raises(ScaleError, match="TimeoutError"):
            await make_scaler(api, NS, leadership=ShortLease()).scale(REV, 1)
    finally:
        await api.close()
    assert server.store.get("deployments", NS, "hello-00001-deployment")["spec"]["replicas"] == 0


def test_a_dual_stack_service_counts_each_pod_once() -> None:
    v4 = slice_of(ep({"ready": True}, "10.0.0.1", "p1"), ep({"ready": True}, "10.0.0.2", "p2"))
    v6 = {
        **slice_of(ep({"ready": True}, "fd00::1", "p1"), ep({"ready": True}, "fd00::2", "p2")),
        "addressType": "IPv6",
    }
    fqdn = {**slice_of(ep({"ready": True}, "pod.example.com", "p3")), "addressType": "FQDN"}
    assert [e.pod_name for e in endpoints_from_slices([v4, v6, fqdn])] == ["p1", "p2"]
    assert [e.host for e in endpoints_from_slices([v6])] == ["fd00::1", "fd00::2"]  # IPv6-only cluster
