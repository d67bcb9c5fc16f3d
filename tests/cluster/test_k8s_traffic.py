"""Kubernetes pieces wired to the real activator backends and throttler, with pods that answer probes on
127.0.0.1: a queued first request is served after the scale-up, and a pod turning not ready gets no more
requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from activator.backends import HttpProber, RevisionBackends
from activator.throttler import RevisionThrottler
from autoscaler.app import AutoscalerApp
from autoscaler.config import from_mapping
from cluster.k8s_autoscaler import KubeAutoscalerBackend
from cluster.kubernetes import KubeEndpointSource, make_endpoint_source
from serving.stat import Stat, WireStat
from serving.types import RevisionKey
from tests.fakes.fake_apiserver import FakeApiServer, running_apiserver
from tests.fakes.k8s_controller import FakeDeploymentController
from tests.fakes.k8s_helpers import background, deployment, endpoint_slice, eventually

NS = "default"
REV = RevisionKey(NS, "hello-00001")
TIMING = {"lease_duration": 10.0, "renew_deadline": 6.0, "retry_period": 0.2}


class Pod:
    """A queue-proxy's probe answer, as the activator expects it: 200 "queue" while ready, else 503."""

    def __init__(self) -> None:
        self.ready = True
        self.port = 0

    async def healthz(self, request: web.Request) -> web.Response:
        assert request.headers.get("K-Network-Probe") == "queue"
        return web.Response(text="queue") if self.ready else web.Response(status=503, text="not ready")


@asynccontextmanager
async def pods(n: int) -> AsyncIterator[list[Pod]]:
    out, runners = [Pod() for _ in range(n)], []
    try:
        for pod in out:
            app = web.Application()
            app.router.add_get("/healthz", pod.healthz)
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            pod.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield out
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver(bookmark_interval=0.1) as s:
        yield s


def wire(api: client.ApiClient, throttler: RevisionThrottler) -> tuple[KubeEndpointSource, RevisionBackends]:
    source = make_endpoint_source(api, NS)
    backends = RevisionBackends(REV, throttler.update_pods, HttpProber(timeout=1.0), frequency=0.05)
    source.subscribe(REV, backends.update)
    return source, backends


async def test_a_pod_turning_not_ready_gets_no_more_requests(server: FakeApiServer) -> None:
    async with pods(2) as (p1, p2):

        def slices(ready2: bool) -> list[dict[str, object]]:
            return [
                endpoint_slice(
                    "hello-00001-a", "hello-00001", [("p1", "127.0.0.1", True, True, False)], port=p1.port
                ),
                endpoint_slice(
                    "hello-00001-b", "hello-00001", [("p2", "127.0.0.1", ready2, ready2, False)], port=p2.port
                ),
            ]

        for s in slices(True):
            server.store.create("endpointslices", NS, s)
        api = server.client("activator")
        throttler = RevisionThrottler(REV, cc=1)
        source, backends = wire(api, throttler)
        try:
            async with background(source.run()):
                await eventually(lambda: len(throttler.pods) == 2, what="both pods probed healthy")
                first, second = await throttler.acquire(), await throttler.acquire()
                assert {first.address, second.address} == {f"127.0.0.1:{p1.port}", f"127.0.0.1:{p2.port}"}
                throttler.release(first)
                throttler.release(second)
                # p2's readiness probe starts failing; the kubelet marks it not ready in its EndpointSlice
                p2.ready = False
                server.store.update("endpointslices", NS, slices(False)[1])
                await eventually(lambda: len(throttler.pods) == 1, what="p2 taken out")
                for _ in range(20):
                    pod = await throttler.acquire()
                    assert pod.address == f"127.0.0.1:{p1.port}"
                    throttler.release(pod)
                # with cc=1 and one pod, a second concurrent request waits rather than going to p2
                held = await throttler.acquire()
                waiting = asyncio.create_task(throttler.acquire())
                await eventually(lambda: throttler.queued == 1, what="second request queued")
                assert not waiting.done()
                throttler.release(held)
                pod = await asyncio.wait_for(waiting, timeout=10)
                assert pod.address == f"127.0.0.1:{p1.port}"
                throttler.release(pod)
        finally:
            await backends.close()
            await api.close()


async def test_the_first_request_waits_for_scale_from_zero_and_is_served(server: FakeApiServer) -> None:
    """Activator queue -> stat poke -> autoscaler decision -> scale subresource -> pod -> EndpointSlice ->
    probe -> the queued request gets the pod. Only the Deployment controller and kubelet are simulated."""
    async with pods(1) as (pod,):
        ctl = FakeDeploymentController(server.store, NS, port=pod.port, ip_for=lambda rev, i: "127.0.0.1")
        server.store.create(
            "deployments",
            NS,
            deployment("hello-00001-deployment", 0, {"serving.knative.dev/revision": "hello-00001"}),
        )
        zero = {"initial-scale": "0", "allow-zero-initial-scale": "true"}

        async def connect(_: str | None) -> client.ApiClient:
            return server.client("autoscaler")

        autoscaler = KubeAutoscalerBackend(
            NS, identity="autoscaler-0", elector_kwargs=TIMING, connect=connect
        )
        app = AutoscalerApp(
            scaler=autoscaler.scaler,
            pods=autoscaler.pods,
            targets=autoscaler.targets,
            config=from_mapping(zero),
        )
        api = server.client("activator")
        throttler = RevisionThrottler(REV, cc=0)
        source, backends = wire(api, throttler)
        try:
            async with background(source.run(), autoscaler.run(app)):
                await eventually(
                    lambda: (
                        autoscaler.parts is not None
                        and autoscaler.parts.elector.is_leader
                        and app.multiscaler.revisions() == [REV]
                    ),
                    what="autoscaler ready",
                )
                app.multiscaler.send([WireStat(NS, REV.name, Stat(pod_name="activator-0"))])  # an idle second
                await app.multiscaler.tick()
                request = asyncio.create_task(throttler.acquire())  # the first request: no pod, it waits
                await eventually(lambda: throttler.queued == 1, what="first request queued")
                assert not request.done()
                app.multiscaler.send(
                    [WireStat(NS, REV.name, Stat(pod_name="activator-0", average_concurrent_requests=1.0))]
                )
                await app.multiscaler.settle()
                assert server.store.get("deployments", NS, "hello-00001-deployment")["spec"]["replicas"] == 1
                await eventually(lambda: len(source.get(REV)) == 1, what="pod listed")
                ctl.make_ready("hello-00001-deployment")
                got = await asyncio.wait_for(request, timeout=15)
                assert got.address == f"127.0.0.1:{pod.port}"
                throttler.release(got)
        finally:
            await backends.close()
            await api.close()
