"""The handler's decisions with a fake responder and a fake forward (no sockets)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from queueproxy.handler import QueueHandler
from queueproxy.rewrite import forwarded_value, upstream_headers
from serving.breaker import Breaker
from serving.clock import FakeClock
from serving.drain import Drainer
from serving.httpserver import Headers, Request, Responder
from serving.stats import RequestStats
from serving.timeouts import RequestTimeouts
from serving.upstream import Upstream, UpstreamError


# The fakes subclass the engine's classes: a compiled handler checks its arguments' types (the engine
# allows these subclasses, as serving.h2_stream's). They set only what the handler reads.
class FakeRequest(Request):
    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.method = b"GET"
        self.target = b"/"
        self.headers = Headers([(b"host", b"app"), *(headers or [])])


class FakeResponder(Responder):
    def __init__(self) -> None:
        self.started = False
        self.status: int | None = None
        self.last_write = time.monotonic()
        self.body = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.aborted = False

    async def send(
        self, status: int, body: bytes | str = b"", headers: Any = (), content_type: bytes = b""
    ) -> None:
        self.started, self.status = True, status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = list(headers)

    def abort(self) -> None:
        self.aborted = True


class Ready:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls = 0

    async def check(self) -> bool:
        self.calls += 1
        return self.ok


class Drain:
    def __init__(self) -> None:
        self.d = Drainer(1, 10, FakeClock())

    @property
    def draining(self) -> bool:
        return self.d.draining

    def request_started(self) -> None:
        self.d.request_started()

    def request_finished(self) -> None:
        self.d.request_finished()


def make(forward: Any, **kw: Any) -> tuple[QueueHandler, RequestStats, Drain]:
    stats = RequestStats(time.monotonic())
    drain = Drain()
    h = QueueHandler(
        upstream=Upstream("127.0.0.1", 9),  # never dialled: forward is a fake
        stats=stats,
        drain=drain,
        readiness=kw.pop("readiness", Ready()),
        forward_fn=forward,
        **kw,
    )
    return h, stats, drain


async def ok_forward(req: Any, resp: Any, upstream: Any, headers: list[tuple[bytes, bytes]]) -> int:
    await resp.send(200, b"ok")
    return 200


@pytest.mark.parametrize(
    ("headers", "draining", "ready", "status", "body"),
    [
        pytest.param([(b"k-network-probe", b"queue")], False, True, 200, b"queue", id="ready"),
        pytest.param(
            [(b"k-network-probe", b"queue")],
            False,
            False,
            503,
            b"user container is not ready",
            id="not-ready",
        ),
        pytest.param([(b"k-network-probe", b"queue")], True, True, 503, b"shutting down", id="draining"),
        pytest.param(
            [(b"k-network-probe", b"nope")],
            False,
            True,
            400,
            b"unexpected probe header value: nope",
            id="bad-value",
        ),
        pytest.param(
            [(b"k-network-probe", b"probe"), (b"k-network-hash", b"h1")], False, True, 200, b"", id="k-probe"
        ),
        pytest.param(
            [(b"k-network-probe", b"probe")], True, True, 503, b"shutting down", id="k-probe-draining"
        ),
        pytest.param(
            [(b"user-agent", b"kube-probe/1.30")], True, True, 503, b"shutting down", id="kubelet-drain"
        ),
        pytest.param(
            [(b"user-agent", b"Knative-Activator-Probe")], False, True, 200, b"ok", id="activator-probe"
        ),
        pytest.param([(b"k-kubelet-probe", b"1")], False, True, 200, b"ok", id="k-kubelet-probe"),
    ],
)
async def test_probes_are_answered_and_never_counted(
    headers: list[tuple[bytes, bytes]], draining: bool, ready: bool, status: int, body: bytes
) -> None:
    h, stats, drain = make(ok_forward, readiness=Ready(ready), breaker=Breaker(0, 0))
    if draining:
        drain.d.start()
    resp = FakeResponder()
    await h(FakeRequest(headers), resp)
    assert (resp.status, resp.body) == (status, body)
    assert stats.request_count == 0 and drain.d.in_flight == 0


async def test_requests_count_and_proxied_requests_count_apart() -> None:
    h, stats, drain = make(ok_forward)
    await h(FakeRequest(), FakeResponder())
    await h(FakeRequest([(b"k-proxy-request", b"activator")]), FakeResponder())
    assert (stats.request_count, stats.proxied_request_count, stats.concurrency) == (2, 1, 0)
    assert drain.d.in_flight == 0


async def test_full_breaker_is_an_immediate_503() -> None:
    gate = asyncio.Event()

    async def slow(req: Any, resp: Any, upstream: Any, headers: Any) -> int:
        await gate.wait()
        await resp.send(200, b"ok")
        return 200

    breaker = Breaker(queue_depth=1, max_concurrency=1)
    h, stats, _ = make(slow, breaker=breaker)
    a, b = FakeResponder(), FakeResponder()
    ta = asyncio.ensure_future(h(FakeRequest(), a))
    tb = asyncio.ensure_future(h(FakeRequest(), b))
    while breaker.in_flight < 2:
        await asyncio.sleep(0)
    c = FakeResponder()
    await h(FakeRequest(), c)
    assert (c.status, c.body) == (503, b"pending request queue full")
    gate.set()
    await asyncio.gather(ta, tb)
    assert a.status == b.status == 200 and breaker.in_flight == 0 and stats.concurrency == 0


async def test_a_cancelled_request_frees_its_slot_and_bookkeeping() -> None:
    async def forever(req: Any, resp: Any, upstream: Any, headers: Any) -> int:
        await asyncio.Event().wait()
        return 200

    breaker = Breaker(queue_depth=10, max_concurrency=1)
    h, stats, drain = make(forever, breaker=breaker)
    tasks = [asyncio.ensure_future(h(FakeRequest(), FakeResponder())) for _ in range(3)]
    while breaker.in_flight < 3:
        await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with pytest.raises(asyncio.CancelledError):
            await t
    assert breaker.in_flight == 0 and stats.concurrency == 0 and drain.d.in_flight == 0


async def test_total_timeout_before_the_response_is_504() -> None:
    async def hang(req: Any, resp: Any, upstream: Any, headers: Any) -> int:
        await asyncio.Event().wait()
        return 200

    h, _, _ = make(hang, timeouts=RequestTimeouts(0.05, 0, 0))
    resp = FakeResponder()
    await asyncio.wait_for(h(FakeRequest(), resp), 5)
    assert (resp.status, resp.body, resp.aborted) == (504, b"request timeout", False)
    assert resp.headers == [(b"x-zeroscale-timeout", b"total")]


async def test_timeout_after_the_response_started_cuts_the_connection() -> None:
    async def started_then_hang(req: Any, resp: Any, upstream: Any, headers: Any) -> int:
        resp.started, resp.status = True, 200
        resp.last_write = time.monotonic()
        await asyncio.Event().wait()
        return 200

    h, _, _ = make(started_then_hang, timeouts=RequestTimeouts(10, 0.01, 0.05))
    resp = FakeResponder()
    await asyncio.wait_for(h(FakeRequest(), resp), 5)
    assert resp.aborted and resp.status == 200  # idle fired; response-start did not (it had started)


async def test_upstream_failure_is_502_before_start_and_nothing_after() -> None:
    async def fail(req: Any, resp: Any, upstream: Any, headers: Any) -> int:
        raise UpstreamError("dial tcp 127.0.0.1:1: connection refused")

    h, _, _ = make(fail)
    resp = FakeResponder()
    await h(FakeRequest(), resp)
    assert (resp.status, resp.body) == (502, b"dial tcp 127.0.0.1:1: connection refused")

    async def fail_late(req: Any, resp: Any, upstream: Any, headers: Any) -> int:
        resp.started, resp.status = True, 200
        raise UpstreamError("reset", started=True)

    h, _, _ = make(fail_late)
    resp = FakeResponder()
    await h(FakeRequest(), resp)
    assert resp.status == 200 and resp.body == b""


# -- header rewrite -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xff", "xfh", "xfp", "want"),
    [
        pytest.param(b"1.2.3.4", None, None, b"for=1.2.3.4", id="for"),
        pytest.param(
            b"1.2.3.4, 5.6.7.8",
            b"a.example",
            b"https",
            b"for=1.2.3.4;host=a.example;proto=https, for=5.6.7.8",
            id="hops",
        ),
        pytest.param(b"2001:db8::1", None, b"http", b'for="[2001:db8::1]";proto=http', id="ipv6-quoted"),
        pytest.param(b"", b"a.example:8080", None, b'host="a.example:8080"', id="host-with-port-quoted"),
        pytest.param(b"unknown", None, None, b"for=unknown", id="token"),
    ],
)
def test_forwarded_value(xff: bytes, xfh: bytes | None, xfp: bytes | None, want: bytes) -> None:
    assert forwarded_value(xff, xfh, xfp) == want


def test_upstream_headers_rewrites() -> None:
    items = [
        (b"host", b"pod-ip:8012"),
        (b"k-original-host", b"hello.example.com"),
        (b"knative-serving-revision", b"r"),
        (b"knative-serving-namespace", b"n"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"x-a", b"1"),
    ]
    assert upstream_headers(items) == [
        (b"host", b"hello.example.com"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"x-a", b"1"),
        (b"forwarded", b"for=1.1.1.1, for=2.2.2.2"),
    ]
    plain = [(b"host", b"h"), (b"x-a", b"1")]
    assert upstream_headers(plain) is plain  # nothing to do: the list passes untouched
