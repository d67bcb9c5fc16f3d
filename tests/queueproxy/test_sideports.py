"""The side ports (admin, autoscaler metrics, user metrics) on the engine: answers as aiohttp gave them,
and a queue-proxy that imports neither aiohttp nor protobuf until it needs them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from queueproxy import reporter
from queueproxy.app import QueueProxy
from queueproxy.config import QueueProxyConfig
from queueproxy.sideports import request_path, serve_side_port
from serving import stat
from serving.httpserver import Request, Responder
from tests.conftest import ROOT, free_port


def test_import_queueproxy_app_loads_neither_aiohttp_nor_protobuf() -> None:
    code = (
        "import sys\n"
        "import queueproxy.app\n"
        "print(','.join(m for m in ('aiohttp', 'google.protobuf', 'serving.stat') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_protobuf_content_type_agrees_with_the_kernel() -> None:
    assert reporter.PROTOBUF_CONTENT_TYPE == stat.PROTOBUF_CONTENT_TYPE


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/metrics", b"/metrics"),
        (b"/metrics?x=1", b"/metrics"),
        (b"/wait%2Dfor-drain", b"/wait-for-drain"),
        (b"http://h:9/metrics?q", b"/metrics"),
        (b"http://h:9", b"/"),
        (b"/metrics/", b"/metrics/"),
    ],
)
def test_request_path(target: bytes, path: bytes) -> None:
    assert request_path(target) == path


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_router_answers_404_405_and_head_as_aiohttp_did() -> None:
    async def ok(req: Request, resp: Responder) -> None:
        await resp.send(200, "hello")

    server = await serve_side_port({"/x": ok}, "127.0.0.1", 0)
    try:
        close = b"Host: a\r\nConnection: close\r\n\r\n"
        got = await _raw(server.port, b"GET /x?a=1 HTTP/1.1\r\n" + close)
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nhello")
        got = await _raw(server.port, b"HEAD /x HTTP/1.1\r\n" + close)
        assert got.startswith(b"HTTP/1.1 200 ") and b"content-length: 5\r\n" in got.lower()
        assert got.endswith(b"\r\n\r\n")
        for target in (b"/y", b"/x/", b"/"):
            got = await _raw(server.port, b"GET " + target + b" HTTP/1.1\r\n" + close)
            assert got.startswith(b"HTTP/1.1 404 ") and got.endswith(b"\r\n\r\n404: Not Found"), got
        for method in (b"POST", b"PUT", b"OPTIONS", b"DELETE"):
            got = await _raw(server.port, method + b" /x HTTP/1.1\r\nContent-Length: 0\r\n" + close)
            assert got.startswith(b"HTTP/1.1 405 ") and got.endswith(b"\r\n\r\n405: Method Not Allowed"), got
            assert b"\r\nallow: GET,HEAD\r\n" in got
    finally:
        await server.shutdown(1.0)


@pytest.fixture
async def qp() -> AsyncIterator[QueueProxy]:
    ports = [free_port() for _ in range(5)]
    cfg = QueueProxyConfig.from_env(
        {
            "QUEUE_BIND_ADDRESS": "127.0.0.1",
            "QUEUE_SERVING_PORT": str(ports[0]),
            "QUEUE_ADMIN_PORT": str(ports[1]),
            "QUEUE_METRICS_PORT": str(ports[2]),
            "USER_METRICS_PORT": str(ports[3]),
            "USER_PORT": str(ports[4]),
            "SERVING_NAMESPACE": "ns",
            "SERVING_SERVICE": "svc",
            "SERVING_CONFIGURATION": "cfg",
            "SERVING_REVISION": "rev",
            "SERVING_POD": "rev-pod",
        }
    )
    proxy = QueueProxy(cfg)
    try:
        await proxy.start()
        yield proxy
    finally:
        await proxy.stop()


async def test_side_ports_of_a_running_queue_proxy(qp: QueueProxy) -> None:
    cfg = qp.cfg
    qp.reporter.tick()
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(
            f"http://127.0.0.1:{cfg.metrics_port}/metrics", headers={"Accept": "application/protobuf"}
        )
        assert (r.status_code, r.headers["content-type"]) == (200, "application/protobuf")
        assert stat.decode_stat(r.content).pod_name == "rev-pod"
        r = await c.get(f"http://127.0.0.1:{cfg.metrics_port}/metrics")
        assert (r.status_code, r.headers["content-type"]) == (200, CONTENT_TYPE_LATEST)
        names = {f.name for f in text_string_to_metric_families(r.text)}
        assert "queue_requests_per_second" in names
        for path in ("/metrics", "/"):
            r = await c.get(f"http://127.0.0.1:{cfg.user_metrics_port}{path}")
            assert (r.status_code, r.headers["content-type"]) == (200, CONTENT_TYPE_LATEST)
            assert "kn_serving_queue_depth" in r.text
        for port, path in (
            (cfg.admin_port, "/nope"),
            (cfg.metrics_port, "/"),
            (cfg.user_metrics_port, "/metrics/x"),
        ):
            r = await c.get(f"http://127.0.0.1:{port}{path}")
            assert (r.status_code, r.text) == (404, "404: Not Found")
        r = await c.post(f"http://127.0.0.1:{cfg.admin_port}/wait-for-drain")
        assert (r.status_code, r.headers["allow"]) == (405, "GET,HEAD")
        assert not qp.drain.draining  # a refused method starts nothing
        r = await c.post(f"http://127.0.0.1:{cfg.metrics_port}/metrics")
        assert r.status_code == 405
