"""A pod's user process killed mid-load, and a pod scaled away while it holds a long request and a websocket.

Real pods (fault_app behind a real queue-proxy, started by cluster.local) behind the real gateway.
fault_app writes ``S <id>`` when a request reaches it and ``E <id>`` once its answer is in the kernel,
so after a SIGKILL the test knows exactly which requests were inside the killed process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.activator.procs import wait_for
from tests.fakes import hostile
from tests.faults.load import Load
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


def _inside(log: Path) -> set[int]:
    """Request ids that reached the process and whose answer it never finished writing."""
    started: set[int] = set()
    ended: set[int] = set()
    for line in log.read_text().splitlines():
        kind, _, rid = line.partition(" ")
        (started if kind == "S" else ended).add(int(rid))
    return started - ended


async def test_sigkill_of_a_user_process_fails_the_requests_inside_it_and_only_those_before_it_left(
    plane: LocalPlane,
) -> None:
    """Every request inside the killed process gets a 502; nothing hangs; the pod is replaced; the only
    other failures are requests that reached its queue-proxy in the moment between the kill and the
    runtime taking the pod out of traffic (milliseconds: it watches the process exit)."""
    rev = plane.revision("web", 1)
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
        await load.more(300)
        victim = plane.ready(rev.key)[0]

        def on_endpoints(endpoints: object) -> None:
            eps = [e for e in endpoints if e.pod_name == victim.name]  # type: ignore[attr-defined]
            if not left_traffic and (not eps or not eps[0].ready or eps[0].terminating):
                left_traffic.append(time.monotonic())  # the activator got the same list in this call

        unsubscribe = plane.runtime.subscribe(rev.key, on_endpoints)
        pid = victim.user.pid
        assert pid is not None
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            return victim not in plane.pods(rev.key) and len(plane.ready(rev.key)) == 3

        await until(replaced, timeout=40, what="the killed pod is replaced")
        unsubscribe()
        await plane.healthy_in_gateway(rev.key, 3)
        await load.more(300)
    finally:
        await load.stop()
    inside = _inside(plane.tmp / f"{rev.name}-{pid}.log")
    failed = {r.id: r for r in load.failed}
    assert load.sent == len(load.results)
    assert {r.status for r in failed.values()} <= {502}, load.statuses  # no hang, no other error
    assert inside, "the kill found no request inside the process: the load did not reach it"
    assert inside <= set(failed), sorted(inside - set(failed))
    assert left_traffic, "the pod never left traffic"
    window = left_traffic[0] - t_kill
    outside = [failed[i] for i in sorted(set(failed) - inside)]
    # Those never reached the app: its queue-proxy could not dial it (or its socket was reset unread).
    assert all(r.start <= left_traffic[0] for r in outside), [(r.id, r.start - t_kill) for r in outside]
    assert window < 1.0 and len(outside) <= 50, (window, len(outside))
    print(
        f"SIGKILL: {len(inside)} requests inside the process, all 502; {len(outside)} more 502s sent to its "
        f"queue-proxy in the {window * 1000:.0f} ms before it left traffic; {load.summary()}"
    )


@pytest.mark.xfail(
    strict=True,
    reason="the activator relays the queue-proxy's 502 when the user container refuses the connection "
    "(nothing was sent to the app), instead of trying another pod. Fix: the queue-proxy marks a 502 "
    "whose dial to the user container failed (e.g. X-Zeroscale-Not-Sent: 1) and the activator treats it "
    "like its own connect failure (suspect the pod, retry elsewhere, as activator/handler._throttled "
    "does for _connect_failure)",
)
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
        replies = [hostile.request(s.gateway.port, "GET", "/rev", s.host("web")) for _ in range(20)]
        assert [r.status for r in replies] == [200] * 20, [(r.status, r.body[:60]) for r in replies]
