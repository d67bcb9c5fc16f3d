"""Leader election on one Lease: two autoscalers never both lead, and never both write a scale."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cluster.k8s_lease import LeaseElector
from cluster.kubernetes import NotLeaderError, ScaleError, make_elector, make_scaler
from serving.types import RevisionKey
from tests.fakes.fake_apiserver import CLIENT_HEADER, FakeApiServer, Fault, running_apiserver
from tests.fakes.k8s_helpers import background, deployment, eventually

NS = "default"
LEASE = "zeroscale-autoscaler-leader"
# Short but ordered as Knative's 60/40/10 s: retry < renew deadline < lease duration.
TIMING: dict[str, Any] = {"lease_duration": 2.0, "renew_deadline": 1.2, "retry_period": 0.1}


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver() as s:
        yield s


def from_client(name: str) -> Any:
    return lambda r: r.headers.get(CLIENT_HEADER) == name


class Overlap:
    """Samples both electors every few milliseconds; records any moment where both claim to lead."""

    def __init__(self, a: LeaseElector, b: LeaseElector) -> None:
        self.a, self.b = a, b
        self.both = 0
        self.samples = 0

    async def run(self) -> None:
        while True:
            self.samples += 1
            if self.a.is_leader and self.b.is_leader:
                self.both += 1
            await asyncio.sleep(0.002)


def test_timing_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaseElector(None, NS, LEASE, "a", lease_duration=10, renew_deadline=10, retry_period=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("partition", ["errors", "hang"])
async def test_two_electors_never_both_lead_and_a_partitioned_leader_steps_down_first(
    server: FakeApiServer, partition: str
) -> None:
    api_a, api_b = server.client("a"), server.client("b")
    events: list[tuple[float, str]] = []
    try:
        a = make_elector(
            api_a,
            NS,
            "autoscaler-a",
            rng=random.Random(1),
            **TIMING,
            on_started_leading=lambda: events.append((time.monotonic(), "a+")),
            on_stopped_leading=lambda: events.append((time.monotonic(), "a-")),
        )
        b = make_elector(
            api_b,
            NS,
            "autoscaler-b",
            rng=random.Random(2),
            **TIMING,
            on_started_leading=lambda: events.append((time.monotonic(), "b+")),
            on_stopped_leading=lambda: events.append((time.monotonic(), "b-")),
        )
        overlap = Overlap(a, b)
        async with background(overlap.run(), a.run()):
            await eventually(lambda: a.is_leader, what="a leads")
            async with background(b.run()):
                # b campaigns for a while against a healthy leader and never wins
                n = len(server.requests)
                await eventually(
                    lambda: sum(1 for r in server.requests[n:] if r.client == "b") >= 10, what="b campaigning"
                )
                assert a.is_leader and not b.is_leader
                # cut a off from the API server: fast errors, or requests that never answer
                fault = Fault(
                    from_client("a"), status=503, count=None, delay=5.0 if partition == "hang" else 0.0
                )
                server.add_fault(fault)
                await eventually(lambda: b.is_leader, what="b takes over")
                lease = server.store.get("leases", NS, LEASE)
                assert lease["spec"]["holderIdentity"] == "autoscaler-b"
                assert lease["spec"]["leaseTransitions"] == 1
                assert lease["spec"]["leaseDurationSeconds"] == 2
                server.faults.remove(fault)
                await eventually(lambda: overlap.samples > 50, what="samples")
        assert overlap.both == 0
        kinds = [k for _, k in events]
        assert kinds[:3] == ["a+", "a-", "b+"]
        t = dict((k, t) for t, k in events[:3])
        # a stopped before b started, with at least lease_duration - renew_deadline in between
        # (the margin that protects a leader whose clock runs late), minus scheduling noise
        assert t["b+"] - t["a-"] > 0
        # stopping released the lease: no holder, so a successor need not wait out the duration
        assert "holderIdentity" not in server.store.get("leases", NS, LEASE)["spec"]
    finally:
        await api_a.close()
        await api_b.close()


async def test_a_leader_that_stops_releases_the_lease_for_a_fast_takeover(server: FakeApiServer) -> None:
    api_a, api_b = server.client("a"), server.client("b")
    try:
        # without the release, a takeover would wait out the 30 s lease
        timing: dict[str, Any] = {**TIMING, "lease_duration": 30.0, "renew_deadline": 20.0}
        a = make_elector(api_a, NS, "autoscaler-a", **timing)
        b = make_elector(api_b, NS, "autoscaler-b", **timing)
        async with background(a.run()) as (task_a,):
            await eventually(lambda: a.is_leader, what="a leads")
            async with background(b.run()):
                task_a.cancel()  # SIGTERM: the run loop releases the lease on the way out
                started = time.monotonic()
                await eventually(lambda: b.is_leader, timeout=10.0, what="b takes over")
                assert time.monotonic() - started < 10.0
                assert not a.is_leader
    finally:
        await api_a.close()
        await api_b.close()


async def test_a_conflicting_write_loses_the_round(server: FakeApiServer) -> None:
    """Both candidates read a free lease; the second PUT carries a stale resourceVersion and gets 409."""
    api_a, api_b = server.client("a"), server.client("b")
    try:
        server.store.create("leases", NS, {"metadata": {"name": LEASE}, "spec": {}})
        a = make_elector(api_a, NS, "autoscaler-a", **TIMING)
        b = make_elector(api_b, NS, "autoscaler-b", **TIMING)
        # a's write waits at the door until b has read and written
        held = server.add_fault(
            Fault(
                lambda r: r.method == "PUT" and from_client("a")(r), status=0, count=1, gate=asyncio.Event()
            )
        )
        task_a = asyncio.create_task(a._attempt(5.0))
        await eventually(lambda: held.hits == 1, what="a read the lease and is writing")
        assert await b._attempt(5.0) is True
        assert held.gate is not None
        held.gate.set()
        assert await task_a is False
        conflicts = [r for r in server.requests if r.verb == "update" and r.status == 409]
        assert len(conflicts) == 1
    finally:
        await api_a.close()
        await api_b.close()


async def test_two_autoscalers_with_one_lease_never_both_write(server: FakeApiServer) -> None:
    """Each replica tries to write its own scale every 20 ms; the API server's log of successful
    scale writes must show one writer at a time, and the old leader never again after a takeover."""
    rev = RevisionKey(NS, "hello-00001")
    server.store.create("deployments", NS, deployment("hello-00001-deployment", 0))
    clients = {name: server.client(name) for name in ("a", "b")}
    try:
        electors = {n: make_elector(c, NS, f"autoscaler-{n}", **TIMING) for n, c in clients.items()}
        scalers = {n: make_scaler(c, NS, leadership=electors[n]) for n, c in clients.items()}
        refused = {"a": 0, "b": 0}

        async def autoscaler(name: str, replicas: tuple[int, int]) -> None:
            i = 0
            while True:
                i += 1
                try:
                    await scalers[name].scale(rev, replicas[i % 2])
                except NotLeaderError:
                    refused[name] += 1
                except ScaleError:
                    pass
                await asyncio.sleep(0.02)

        def writes() -> list[str]:
            return [r.client for r in server.requests if r.verb == "patch" and r.status == 200]

        async with background(electors["a"].run(), autoscaler("a", (1, 2))):
            await eventually(lambda: len(writes()) >= 5, what="a writing")
            async with background(electors["b"].run(), autoscaler("b", (3, 4))):
                await eventually(lambda: refused["b"] >= 10, what="b refused while a leads")
                fault = server.add_fault(Fault(from_client("a"), status=503, count=None))
                await eventually(lambda: writes().count("b") >= 5, what="b writing after takeover")
                server.faults.remove(fault)  # a is back: it must now be the one refused
                n = refused["a"]
                await eventually(lambda: refused["a"] >= n + 10, what="a refused")
        w = writes()
        first_b = w.index("b")
        assert set(w[:first_b]) == {"a"} and set(w[first_b:]) == {"b"}, w
        assert server.store.get("deployments", NS, "hello-00001-deployment")["spec"]["replicas"] in (3, 4)
    finally:
        for c in clients.values():
            await c.close()
