"""Scale 0 -> N -> 0 -> N and traffic moves between revisions, under load, with not one failed request.

Real pods (fault_app behind a real queue-proxy, started by cluster.local) and the real gateway; the
test drives the scale and the routes (see tests/faults/plane.py). Every request is counted by status;
each answer names the revision that served it, checked against the routes in effect while it ran.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import hostile
from tests.faults.load import Load, RawWebsocket
from tests.faults.plane import LocalPlane
from tests.util import until

pytestmark = pytest.mark.e2e


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[LocalPlane]:
    p = LocalPlane(tmp_path)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def _revision_of(body: bytes) -> str:
    return body.decode().rsplit(" ", 1)[-1]  # "slept N <revision>"


async def test_scale_zero_to_n_and_back_repeatedly_under_changing_load(plane: LocalPlane) -> None:
    rev = plane.revision("web", 1)
    plane.route("web", {rev.name: 100})
    load = Load(plane.port, plane.host("web"), lambda i: f"/sleep?ms=20&id={i}", workers=4)
    load.start()
    counts = []
    try:
        for cycle, (n, workers) in enumerate([(3, 8), (1, 3), (2, 12)]):
            load.resize(workers)
            await plane.scale(rev.key, n)  # requests queued in the activator meanwhile are released now
            await plane.wait_pods(rev.key, ready=n, total=n)
            await plane.healthy_in_gateway(rev.key, n)
            await load.more(120)
            load.resize(max(1, workers // 2))  # the load changes while the pods go away
            await plane.scale(rev.key, 0)
            await plane.wait_pods(rev.key, ready=0, total=0)
            counts.append((cycle, n, len(load.results)))
        # ... -> N once more: the requests that arrived at zero are served, then the load stops.
        await plane.scale(rev.key, 2)
        await plane.wait_pods(rev.key, ready=2, total=2)
        await load.more(50)
    finally:
        await load.stop()
    assert load.sent == len(load.results)
    assert load.failed == [], (load.statuses, load.failed[:5])
    assert len(load.results) >= 400, load.summary()
    print(f"scale cycles {counts}: {load.summary()}")


@pytest.mark.parametrize("gradual", [False, True], ids=["immediate", "gradual"])
async def test_traffic_moves_between_revisions_ten_times_without_a_failure(
    plane: LocalPlane, gradual: bool
) -> None:
    r1 = plane.revision("web", 1)
    r2 = plane.revision("web", 2)
    plane.route("web", {r1.name: 100})
    for r in (r1, r2):
        await plane.scale(r.key, 1)
    for r in (r1, r2):
        await plane.wait_pods(r.key, ready=1, total=1)
        await plane.healthy_in_gateway(r.key, 1)
    load = Load(plane.port, plane.host("web"), lambda i: f"/sleep?ms=10&id={i}", workers=6)
    load.start()
    steps = [100, 75, 50, 25, 0] if gradual else [0]
    names = (r1.name, r2.name)
    try:
        for move in range(10):
            src, dst = names[move % 2], names[(move + 1) % 2]
            for pct in steps:
                plane.route("web", {src: pct, dst: 100 - pct})
                await load.more(15)
    finally:
        await load.stop()
    assert load.sent == len(load.results)
    assert load.failed == [], (load.statuses, load.failed[:5])
    wrong = [
        (r.id, _revision_of(r.body), sorted(plane.allowed(r.start, r.end)))
        for r in load.results
        if _revision_of(r.body) not in plane.allowed(r.start, r.end)
    ]
    assert wrong == [], wrong[:5]
    served = {name: sum(1 for r in load.results if _revision_of(r.body) == name) for name in names}
    assert all(served.values()), served
    print(f"10 moves ({'gradual' if gradual else 'immediate'}): {load.summary()}; by revision {served}")


async def test_a_request_stays_on_the_revision_its_route_named_when_it_arrived(plane: LocalPlane) -> None:
    """A 1.5 s request that arrived under route A is answered by A's revision after the swap to B."""
    r1 = plane.revision("web", 1)
    r2 = plane.revision("web", 2)
    for r in (r1, r2):
        await plane.scale(r.key, 1)
    for r in (r1, r2):
        await plane.wait_pods(r.key, ready=1, total=1)
        await plane.healthy_in_gateway(r.key, 1)
    plane.route("web", {r1.name: 100})
    slow = Load(
        plane.port, plane.host("web"), lambda i: f"/sleep?ms=1500&id=slow{i}", workers=3, max_requests=3
    )
    slow.start()
    await until(lambda: plane.gateway.activator.reporter is not None and _in_flight(plane, r1.name) == 3)
    t_swap = time.monotonic()
    plane.route("web", {r2.name: 100})
    fast = Load(
        plane.port, plane.host("web"), lambda i: f"/sleep?ms=1&id=fast{i}", workers=2, max_requests=20
    )
    fast.start()
    await asyncio.gather(
        until(lambda: len(slow.results) == 3, timeout=20), until(lambda: len(fast.results) == 20)
    )
    await slow.stop()
    await fast.stop()
    assert [(r.status, _revision_of(r.body)) for r in slow.results] == [(200, r1.name)] * 3
    assert {(r.status, _revision_of(r.body)) for r in fast.results} == {(200, r2.name)}
    assert all(r.start >= t_swap for r in fast.results)


def _in_flight(plane: LocalPlane, revision: str) -> int:
    for key in plane.gateway.activator.revisions():
        if key.name == revision:
            t = plane.gateway.activator.throttler(key)
            return t.in_flight if t is not None else 0
    return 0


async def test_a_websocket_stays_with_its_revision_when_traffic_moves(plane: LocalPlane) -> None:
    r1 = plane.revision("web", 1)
    r2 = plane.revision("web", 2)
    for r in (r1, r2):
        await plane.scale(r.key, 1)
    for r in (r1, r2):
        await plane.wait_pods(r.key, ready=1, total=1)
        await plane.healthy_in_gateway(r.key, 1)
    plane.route("web", {r1.name: 100})
    ws = await RawWebsocket.open(plane.port, plane.host("web"))
    try:
        assert await ws.echo("before") == "before"
        plane.route("web", {r2.name: 100})
        fresh = Load(
            plane.port, plane.host("web"), lambda i: f"/sleep?ms=1&id={i}", workers=2, max_requests=20
        )
        fresh.start()
        await fresh.more(20)
        await fresh.stop()
        assert {(r.status, _revision_of(r.body)) for r in fresh.results} == {(200, r2.name)}
        assert await ws.echo("after") == "after"  # still open, still on web-00001's pod
        (pod1,) = plane.pods(r1.key)
        body = hostile.request(pod1.ports.user, "GET", "/inflight", "h").body
        assert json.loads(body)["now"] == 1, body
    finally:
        await ws.close()
