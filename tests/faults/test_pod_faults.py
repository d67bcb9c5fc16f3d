"""A pod's user process killed mid-load, and a pod scaled away while it holds a long request and a websocket.

Real pods (fault_app behind a real queue-proxy, started by cluster.local) behind the real gateway.
fault_app writes ``S <id>`` when a request reaches it and ``E <id>`` just before it writes the answer,
so after a SIGKILL the test knows exactly which requests were inside the killed process with no answer
(one killed between its ``E`` and its write fails too, and is checked like a request that never
reached the app: it started before the pod left traffic).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.activator.procs import wait_for
from tests.fakes import hostile
from tests.faults.load import Load, RawWebsocket
from tests.faults.plane import LocalPlane
from tests.faults.stack import routes, stack, start_pod
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


def _started_elsewhere(log_dir: Path, but: str) -> dict[int, int]:
    """Request id -> how many times it reached an app other than the one logging to ``but``."""
    counts: dict[int, int] = {}
    for log in log_dir.glob("*.log"):
        if log.name != but:
            for line in log.read_text().splitlines():
                if line.startswith("S "):
                    rid = int(line.split()[1])
                    counts[rid] = counts.get(rid, 0) + 1
    return counts


def _inside(log: Path) -> set[int]:
    """Request ids that reached the process and whose answer it never finished writing."""
    started: set[int] = set()
    ended: set[int] = set()
    for line in log.read_text().splitlines():
        kind, _, rid = line.partition(" ")
        (started if kind == "S" else ended).add(int(rid))
    return started - ended


@pytest.mark.parametrize(
    ("victim_process", "in_path"),
    [("user", True), ("user", False), ("queue-proxy", True)],
    ids=["user-activator-in-path", "user-serve-mode", "queue-proxy-activator-in-path"],
)
async def test_sigkill_of_a_user_process_fails_the_requests_inside_it_and_only_those_before_it_left(
    plane: LocalPlane, in_path: bool, victim_process: str
) -> None:
    """Every request inside the killed process gets a 502; nothing hangs; the pod is replaced; the only
    other failures are requests that reached its queue-proxy in the moment between the kill and the
    runtime taking the pod out of traffic (milliseconds: it watches the process exit).

    Killing the queue-proxy instead: the requests it was relaying (inside the app, whose connections it
    held) fail; no other request may."""
    rev = plane.revision("web", 1)
    plane.gateway.set_activator_in_path(rev.key, in_path)  # serve mode: the gateway goes straight to pods
    plane.route("web", {rev.name: 100})
    await plane.scale(rev.key, 3)
    await plane.wait_pods(rev.key, ready=3, total=3)
    await plane.healthy_in_gateway(rev.key, 3)
    load = Load(
        plane.port, plane.host("web"), lambda i: f"/sleep?ms=100&id={i}", workers=24, request_timeout=15
    )
    load.start()
    left_traffic: list[float] = []
    try:
        await load.more(200)
        victim = plane.ready(rev.key)[0]

        def on_endpoints(endpoints: object) -> None:
            eps = [e for e in endpoints if e.pod_name == victim.name]  # type: ignore[attr-defined]
            if not left_traffic and (not eps or not eps[0].ready or eps[0].terminating):
                left_traffic.append(time.monotonic())  # the activator got the same list in this call

        unsubscribe = plane.runtime.subscribe(rev.key, on_endpoints)
        pid = victim.user.pid
        killed = victim.user.pid if victim_process == "user" else victim.queue.pid
        assert pid is not None and killed is not None
        t_kill = time.monotonic()
        os.kill(killed, signal.SIGKILL)

        def replaced() -> bool:
            return victim not in plane.pods(rev.key) and len(plane.ready(rev.key)) == 3

        await until(replaced, timeout=40, what="the killed pod is replaced")
        unsubscribe()
        await plane.healthy_in_gateway(rev.key, 3)
        await load.more(200)
    finally:
        await load.stop()
    inside = _inside(plane.tmp / f"{rev.name}-{pid}.log")
    failed = {r.id: r for r in load.failed}
    assert load.sent == len(load.results)
    assert {r.status for r in failed.values()} <= {502}, load.statuses  # no hang, no other error
    assert inside, "the kill found no request inside the process: the load did not reach it"
    if victim_process == "user":
        assert inside <= set(failed), sorted(inside - set(failed))
    else:
        # A GET the dead queue-proxy was relaying may be sent again to another pod (it is idempotent);
        # then it reached exactly one other app, once.
        again = _started_elsewhere(plane.tmp, f"{rev.name}-{pid}.log")
        assert all(again.get(i) == 1 for i in inside - set(failed)), (inside - set(failed), again)
    assert left_traffic, "the pod never left traffic"
    window = left_traffic[0] - t_kill
    outside = [failed[i] for i in sorted(set(failed) - inside)]
    # Those never reached the app: its queue-proxy could not dial it (or its socket was reset unread).
    assert all(r.start <= left_traffic[0] for r in outside), [(r.id, r.start - t_kill) for r in outside]
    assert window < 1.0 and len(outside) <= 50, (window, len(outside))
    print(
        f"SIGKILL {victim_process}: {len(inside)} requests inside; {len(failed)} 502s, {len(outside)} of "
        f"them sent to its queue-proxy in the {window * 1000:.0f} ms before it left traffic; {load.summary()}"
    )


async def test_a_post_that_reached_the_app_is_not_sent_again_when_its_queue_proxy_dies(
    plane: LocalPlane,
) -> None:
    rev = plane.revision("web", 1)
    plane.route("web", {rev.name: 100})
    await plane.scale(rev.key, 3)
    await plane.wait_pods(rev.key, ready=3, total=3)
    await plane.healthy_in_gateway(rev.key, 3)
    path = "/sleep?ms=100&id={}"
    load = Load(plane.port, plane.host("web"), path.format, workers=24, request_timeout=15, method="POST")
    load.start()
    try:
        await load.more(150)
        victim = plane.ready(rev.key)[0]
        pid, qp = victim.user.pid, victim.queue.pid
        assert pid is not None and qp is not None
        os.kill(qp, signal.SIGKILL)
        await until(lambda: len(plane.ready(rev.key)) == 3 and victim not in plane.pods(rev.key), timeout=40)
        await load.more(50)
    finally:
        await load.stop()
    inside = _inside(plane.tmp / f"{rev.name}-{pid}.log")
    again = _started_elsewhere(plane.tmp, f"{rev.name}-{pid}.log")
    assert inside
    twice = sorted(i for i in inside if again.get(i))
    assert twice == [], f"POSTs run in two apps: {twice}"


async def test_requests_for_a_listed_pod_whose_app_is_dead_go_to_another_pod(tmp_path: Path) -> None:
    """Kubernetes' view of a pod lags its processes (until the readiness probe fails): requests sent
    to a pod whose app just died must go elsewhere, as none of them reached the app."""
    with stack(tmp_path) as s:
        spare = start_pod(s.procs, "web-00001b")
        doc = routes([s.web, s.other])
        doc["revisions"][0]["endpoints"].append({"pod": "spare", "host": "127.0.0.1", "port": spare.port})
        s.gateway.write(doc)
        healthy = "zeroscale_activator_healthy_pods"
        wait_for(lambda: s.gateway.metric(healthy, 'revision="web-00001"') == 2, 20, "both pods healthy")
        pid = int(hostile.request(s.web.app_port, "GET", "/pid", "h").body)
        os.kill(pid, signal.SIGKILL)
        # The app has died once its port refuses connections (its other sockets, the queue-proxy's
        # pooled ones among them, close at the same moment). A request racing the death itself may
        # have reached the app and keeps its 502: that is test_sigkill_..., not this test.
        wait_for(lambda: _refused(s.web.app_port), 10, "the app's port refuses connections")
        replies = [hostile.request(s.gateway.port, "GET", "/rev", s.host("web")) for _ in range(20)]
        assert [r.status for r in replies] == [200] * 20, [(r.status, r.body[:60]) for r in replies]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _app_get(port: int, path: str) -> object:
    return json.loads(hostile.request(port, "GET", path, "h").body)


@pytest.mark.parametrize("in_path", [True, False], ids=["activator-in-path", "serve-mode"])
async def test_scale_down_takes_the_pod_out_first_then_lets_it_finish_its_work_then_stops_it(
    plane: LocalPlane, in_path: bool
) -> None:
    rev = plane.revision("web", 1, timeout=30)
    plane.gateway.set_activator_in_path(rev.key, in_path)
    plane.route("web", {rev.name: 100})
    await plane.scale(rev.key, 2)
    await plane.wait_pods(rev.key, ready=2, total=2)
    await plane.healthy_in_gateway(rev.key, 2)
    host = plane.host("web")
    # 4 long requests and 4 websockets through the gateway; the activator spreads them over both pods.
    longs = Load(plane.port, host, lambda i: f"/sleep?ms=5000&id={10_000_000 + i}", workers=4, max_requests=4)
    longs.start()
    sockets = [await RawWebsocket.open(plane.port, host) for _ in range(4)]
    pods = plane.ready(rev.key)
    await until(
        lambda: all(_app_get(p.ports.user, "/inflight")["now"] >= 2 for p in pods),  # type: ignore[index]
        timeout=10,
        what="both pods hold a long request or a websocket",
    )
    load = Load(plane.port, host, lambda i: f"/sleep?ms=5&id={i}", workers=4)
    load.start()
    try:
        await load.more(100)
        await plane.scale(rev.key, 1)  # the runtime picks the pod to go and marks it terminating
        t_term = time.monotonic()
        (gone,) = [p for p in pods if p.terminating]
        held = _app_get(gone.ports.user, "/inflight")["now"]  # type: ignore[index]
        assert held >= 2, held
        await load.more(200)
        await until(lambda: len(longs.results) == 4, timeout=20, what="the long requests finish")
        # Long requests done, websockets still open: the pod is still there, and they still work.
        assert gone.queue.running and gone.user.running, gone.state
        assert [await ws.echo(f"still {i}") for i, ws in enumerate(sockets)] == [
            f"still {i}" for i in range(4)
        ]
        t_closed = asyncio.get_running_loop().time()
        for ws in sockets:
            await ws.close()
        await until(lambda: gone not in plane.pods(rev.key), timeout=30, what="the drained pod is gone")
        await load.more(50)
    finally:
        await load.stop()
        await longs.stop()
    assert [r.status for r in longs.results] == [200] * 4
    assert load.sent == len(load.results) and load.failed == [], load.statuses
    # After it was chosen, no request that left the client after that moment reached it.
    starts = {r.id: r.start for r in load.results}
    journal = _app_journal_from_log(plane.tmp / f"{rev.name}-{gone.user.pid}.log")
    late = [rid for rid in journal if rid in starts and starts[rid] > t_term]
    assert late == [], late[:5]
    assert gone.queue.returncode == 0, gone.queue.last_lines(20)
    assert gone.queue.exited_at is not None and gone.queue.exited_at >= t_closed
    print(
        f"scale-down: the pod held {held} (long requests + websockets), exited after them; {load.summary()}"
    )


def _app_journal_from_log(log: Path) -> list[int]:
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("S ")]
