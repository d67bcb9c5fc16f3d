"""Malformed and slow requests against the gateway (activator path) and the queue-proxy, as real processes.

Each malformed request must get a 4xx or a closed connection within a bounded time, must never reach
the user container in any form (the app's journal is checked for its ``case=`` marker, and for the
request smuggled behind it), and must leave the process serving others.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.httpserver import Request, Responder, ServerLimits, serve
from tests.activator.procs import Gateway, Procs, wait_for
from tests.fakes import hostile
from tests.faults.stack import Stack, routes, stack, start_pod

pytestmark = pytest.mark.e2e

ANSWER_BOUND = 2.0  # seconds: a refusal is immediate (the parser), this leaves room for busy cores


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(Path(tmp_path_factory.mktemp("hostile"))) as s:
        yield s


def _target(plane: Stack, which: str) -> tuple[int, str]:
    """(port, Host to send) for the gateway or the web pod's queue-proxy."""
    if which == "gateway":
        return plane.gateway.port, plane.host("web")
    return plane.web.port, "h"


def _serves(plane: Stack, which: str) -> None:
    port, host = _target(plane, which)
    r = hostile.request(port, "GET", "/rev", host)
    assert r.status == 200 and r.body == b"web-00001", r


REFUSED = [c for c in hostile.CASES if c[0] != "no-version"]


@pytest.mark.parametrize("which", ["gateway", "queue-proxy"])
@pytest.mark.parametrize(("case", "data"), REFUSED, ids=[c[0] for c in REFUSED])
def test_malformed_request_is_refused_and_never_forwarded(
    plane: Stack, which: str, case: str, data: bytes
) -> None:
    port, host = _target(plane, which)
    plane.web.journal(clear=True)
    reply = hostile.exchange(port, data.replace(b"Host: h\r\n", f"Host: {host}\r\n".encode()))
    assert reply.refused, reply
    assert reply.elapsed < ANSWER_BOUND, reply
    assert reply.closed, f"the connection stays open after a refused request: {reply}"
    seen = [e["target"] for e in plane.web.journal() if f"case={case}" in e["target"]]
    assert seen == [], f"{case} reached the user container as {seen}"
    _serves(plane, which)


@pytest.mark.parametrize("which", ["gateway", "queue-proxy"])
def test_http09_request_line_is_refused(plane: Stack, which: str) -> None:
    port, host = _target(plane, which)
    plane.web.journal(clear=True)
    reply = hostile.exchange(port, b"GET /headers?case=no-version\r\nHost: %s\r\n\r\n" % host.encode())
    seen = [e["target"] for e in plane.web.journal() if "case=no-version" in e["target"]]
    assert reply.refused and seen == [], (reply, seen)


def test_many_bad_requests_at_once_leave_both_processes_serving(plane: Stack) -> None:
    """All the cases, 5 times each, on parallel connections, while good requests keep being answered."""
    statuses: Counter[int | str] = Counter()
    good: Counter[int | str] = Counter()
    stop = threading.Event()
    plane.web.journal(clear=True)

    def good_client(which: str) -> None:
        while not stop.is_set():
            port, host = _target(plane, which)
            r = hostile.request(port, "GET", "/rev", host)
            good[r.status if r.status is not None else "closed"] += 1

    def attacker(which: str) -> None:
        port, host = _target(plane, which)
        for _ in range(5):
            for _case, data in REFUSED:
                r = hostile.exchange(port, data.replace(b"Host: h\r\n", f"Host: {host}\r\n".encode()))
                statuses["refused" if r.refused else f"{r.status}"] += 1

    goods = [threading.Thread(target=good_client, args=(w,)) for w in ("gateway", "queue-proxy")]
    bads = [
        threading.Thread(target=attacker, args=(w,)) for w in ("gateway", "queue-proxy") for _ in range(3)
    ]
    for t in goods + bads:
        t.start()
    for t in bads:
        t.join(60)
    stop.set()
    for t in goods:
        t.join(30)
    sent = 2 * 3 * 5 * len(REFUSED)
    assert statuses == Counter({"refused": sent}), statuses
    assert set(good) == {200} and good[200] >= 10, good
    assert [e for e in plane.web.journal() if "case=" in e["target"]] == []


def test_slow_clients_do_not_hold_up_others(plane: Stack) -> None:
    """20 clients per process each send one byte a second; meanwhile others are served at once."""
    results: list[tuple[int, hostile.Reply | None]] = []
    lock = threading.Lock()
    plane.web.journal(clear=True)

    def slow(which: str) -> None:
        port, host = _target(plane, which)
        data = f"GET /headers?case=slow HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        got = hostile.trickle(port, data, interval=1.0, duration=4.0)
        with lock:
            results.append(got)

    threads = [
        threading.Thread(target=slow, args=(w,)) for w in ("gateway", "queue-proxy") for _ in range(20)
    ]
    for t in threads:
        t.start()
    latencies = []
    try:
        for _ in range(40):
            for which in ("gateway", "queue-proxy"):
                t0 = time.monotonic()
                _serves(plane, which)
                latencies.append(time.monotonic() - t0)
    finally:
        for t in threads:
            t.join(30)
    assert len(results) == 40 and all(sent >= 3 for sent, _ in results), results
    # The slow requests are incomplete: nothing was answered for them, and nothing reached the app.
    assert all(reply is None or reply.refused for _, reply in results), results
    assert [e for e in plane.web.journal() if "case=slow" in e["target"]] == []
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.5 and latencies[-1] < 3.0, latencies


async def test_a_slow_client_gets_408_when_the_header_timeout_runs_out() -> None:
    """The bound itself, on the engine both processes run (their header timeout is 60 s; 1.5 s here)."""
    seen: list[bytes] = []

    async def handler(req: Request, resp: Responder) -> None:
        seen.append(req.target)
        await resp.send(200, b"ok")

    server = await serve(handler, "127.0.0.1", 0, limits=ServerLimits(header_timeout=1.5))
    try:
        data = b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Padding: " + b"p" * 100 + b"\r\n\r\n"
        sent, reply = await asyncio.to_thread(hostile.trickle, server.port, data, interval=0.25, duration=10)
        assert reply is not None and reply.status == 408, (sent, reply)
        assert 1.2 < reply.elapsed < 4.0, reply
        assert seen == []
    finally:
        await server.shutdown(1.0)


def test_many_idle_connections_cost_little_and_block_no_one(plane: Stack) -> None:
    """300 connections per process that never send a byte: others are served, memory barely moves."""
    import psutil

    pids = {"gateway": plane.gateway.proc.pid, "queue-proxy": _qp_pid(plane)}
    before = {w: psutil.Process(pid).memory_info().rss for w, pid in pids.items()}
    idle: list[socket.socket] = []
    try:
        for which in pids:
            port, _ = _target(plane, which)
            idle += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
        for _ in range(20):
            for which in pids:
                _serves(plane, which)
        after = {w: psutil.Process(pid).memory_info().rss for w, pid in pids.items()}
    finally:
        for s in idle:
            s.close()
    growth = {w: (after[w] - before[w]) / 2**20 for w in pids}
    assert all(g < 16 for g in growth.values()), growth  # MiB for 300 idle connections
    print(f"300 idle connections: RSS growth in MiB {growth}")


def _qp_pid(plane: Stack) -> int:
    import psutil

    for p in plane.procs.procs:
        with contextlib.suppress(psutil.Error):
            conns = psutil.Process(p.pid).net_connections(kind="inet")
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == plane.web.port for c in conns):
                return p.pid
    raise AssertionError("web's queue-proxy process not found")


@pytest.mark.parametrize("which", ["gateway", "queue-proxy"])
def test_a_slow_body_holds_its_slot_no_longer_than_the_revision_timeout(tmp_path: Path, which: str) -> None:
    """containerConcurrency 1, timeoutSeconds 3: a client that sends its body one byte every 0.5 s gets
    a 504 after 3 s, and a request waiting behind it is served right after (the bound is the revision's
    timeout: with Knative's default of 300 s, a slow uploader holds a slot that long)."""
    procs = Procs(tmp_path)
    try:
        pod = start_pod(procs, "web-00001", cc=1, extra={"REVISION_TIMEOUT_SECONDS": "3"})
        doc = routes([pod], ccs={"web-00001": 1})
        doc["revisions"][0]["timeoutSeconds"] = 3
        gw = Gateway(procs, doc)
        port, host = (gw.port, "web.default.example.com") if which == "gateway" else (pod.port, "h")
        assert hostile.request(port, "GET", "/rev", host).status == 200
        head = f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n".encode()
        slow: list[tuple[int, hostile.Reply | None]] = []
        t = threading.Thread(
            target=lambda: slow.append(
                hostile.trickle(port, b"x" * 100, interval=0.5, duration=20, prefix=head)
            )
        )
        t0 = time.monotonic()
        t.start()
        # The request behind starts a second after the slow one, so its own 3 s run out well after
        # the slow one's: what it measures is the slot coming free, not its own timeout.
        wait_for(
            lambda: (
                time.monotonic() - t0 >= 1.0
                and hostile.request(pod.app_port, "GET", "/inflight", "h").body.startswith(b'{"now": 1')
            ),
            10,
            "the slow upload has held the app's one slot for a second",
        )
        behind = hostile.request(port, "GET", "/rev", host)  # waits for the slot
        t.join(30)
    finally:
        procs.close()
    ((sent, reply),) = slow
    assert reply is not None and reply.status == 504, (sent, reply)
    assert 2.5 < reply.elapsed < 5.0 and sent < 100, (sent, reply)
    assert behind.status == 200 and behind.body == b"web-00001", behind


@pytest.mark.parametrize("which", ["gateway", "queue-proxy"])
def test_a_thousand_pipelined_requests_are_answered_once_each_in_order(plane: Stack, which: str) -> None:
    port, host = _target(plane, which)
    n = 1000
    data = b"".join(f"GET /headers?pipe={i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for i in range(n))
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        while raw.count(b"HTTP/1.1 ") < n:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            raw += chunk
    assert raw.count(b"HTTP/1.1 200 ") == n, raw[-300:]
    targets = [int(t) for t in re.findall(rb'"target": "/headers\?pipe=(\d+)"', raw)]
    assert targets == list(range(n))
