"""Which pool the queue-proxy's handler forwards to: h2c for an h2c app, except websocket upgrades;
HTTP/1.1 for an HTTP/1.1 app; an h2c upstream failure is a 502 like any other."""

from __future__ import annotations

from typing import Any

import pytest

from queueproxy.handler import QueueHandler
from serving.h2upstream import H2Upstream
from serving.httpserver import Headers, Request
from serving.stats import RequestStats
from serving.upstream import Upstream, UpstreamError
from tests.queueproxy.test_handler import Drain, FakeResponder, Ready


class Req(Request):
    def __init__(self, upgrade: bytes | None = None, version: bytes = b"1.1") -> None:
        self.method = b"GET"
        self.target = b"/"
        self.version = version
        self.upgrade = upgrade
        self.headers = Headers([(b"host", b"app"), (b"te", b"trailers"), (b"knative-serving-revision", b"r")])


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, object, list[tuple[bytes, bytes]]]] = []
        self.fail = fail

    def fn(self, kind: str) -> Any:
        async def forward(req: Any, resp: Any, upstream: Any, headers: list[tuple[bytes, bytes]]) -> int:
            self.calls.append((kind, upstream, headers))
            if self.fail:
                raise UpstreamError("upstream reset the stream (REFUSED_STREAM)")
            await resp.send(200, kind)
            return 200

        return forward


H1, H2 = Upstream("127.0.0.1", 9), H2Upstream("127.0.0.1", 9)  # never dialled: the forwards are fakes


@pytest.mark.parametrize(
    ("h2c_app", "upgrade", "version", "expect"),
    [
        pytest.param(True, None, b"2", "h2", id="h2-stream-to-h2c-app"),
        pytest.param(True, None, b"1.1", "h2", id="http1-request-to-h2c-app"),
        pytest.param(True, b"websocket", b"1.1", "h1", id="websocket-stays-http1"),
        pytest.param(False, None, b"2", "h1", id="h2-stream-to-http1-app"),
        pytest.param(False, None, b"1.1", "h1", id="http1-to-http1-app"),
    ],
)
async def test_pool_choice(h2c_app: bool, upgrade: bytes | None, version: bytes, expect: str) -> None:
    rec = Recorder()
    stats = RequestStats(0.0)
    h = QueueHandler(
        upstream=H1,
        stats=stats,
        drain=Drain(),
        readiness=Ready(),
        forward_fn=rec.fn("h1"),
        h2_upstream=H2 if h2c_app else None,
        h2_forward_fn=rec.fn("h2"),
    )
    resp = FakeResponder()
    await h(Req(upgrade, version), resp)
    [(kind, upstream, headers)] = rec.calls
    assert (kind, upstream) == (expect, H2 if expect == "h2" else H1)
    assert (resp.status, resp.body) == (200, expect.encode())
    # Knative's rewrites apply on both paths; te: trailers is left for the forwarder to keep
    assert (b"te", b"trailers") in headers
    assert all(n != b"knative-serving-revision" for n, _ in headers)
    assert stats.request_count == 1


async def test_h2c_upstream_failure_is_a_502() -> None:
    rec = Recorder(fail=True)
    h = QueueHandler(
        upstream=H1,
        stats=RequestStats(0.0),
        drain=Drain(),
        readiness=Ready(),
        h2_upstream=H2,
        h2_forward_fn=rec.fn("h2"),
    )
    resp = FakeResponder()
    await h(Req(), resp)
    assert resp.status == 502
    assert b"REFUSED_STREAM" in resp.body
