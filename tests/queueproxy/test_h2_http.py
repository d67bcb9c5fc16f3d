"""The queue-proxy's protocol choice and its mixed hops: h2c clients to an HTTP/1.1 app, HTTP/1.1
clients to an h2c app, and HTTP readiness probes of an h2c app sent over h2c."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from cluster.render import build
from queueproxy.config import QueueProxyConfig
from serving.errors import ConfigError
from serving.h2server import H2Server, serve_h2
from serving.httpserver import Request, Responder
from serving.spec import parse_services
from tests.fakes.grpc_frames import h2_request
from tests.queueproxy.procs import queue_proxy, user_app


@pytest.mark.parametrize(
    ("env", "protocol"),
    [
        pytest.param({}, "http1", id="default-8012"),
        pytest.param({"QUEUE_SERVING_PORT": "8013"}, "h2c", id="knative-8013-means-h2c"),
        pytest.param({"QUEUE_SERVING_PORT": "8012"}, "http1", id="knative-8012"),
        pytest.param({"QUEUE_SERVING_PORT": "31000", "QUEUE_USER_PROTOCOL": "h2c"}, "h2c", id="override-h2c"),
        pytest.param(
            {"QUEUE_SERVING_PORT": "8013", "QUEUE_USER_PROTOCOL": "http1"}, "http1", id="override-wins"
        ),
        pytest.param({"QUEUE_USER_PROTOCOL": " H2C "}, "h2c", id="case-and-space"),
        pytest.param({"QUEUE_USER_PROTOCOL": ""}, "http1", id="empty-is-unset"),
    ],
)
def test_user_protocol_from_env(env: dict[str, str], protocol: str) -> None:
    cfg = QueueProxyConfig.from_env(env)
    assert cfg.user_protocol == protocol
    assert cfg.h2c is (protocol == "h2c")


@pytest.mark.parametrize("value", ["h2", "http2", "grpc", "1"])
def test_bad_user_protocol_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"QUEUE_USER_PROTOCOL=.*expected http1 or h2c"):
        QueueProxyConfig.from_env({"QUEUE_USER_PROTOCOL": value})


RENDERED = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: PORTNAME}
spec:
  template:
    spec:
      containers:
        - image: ghcr.io/example/app:1
          ports: [{name: PORTNAME, containerPort: 9000}]
"""


@pytest.mark.parametrize(("port_name", "protocol"), [("h2c", "h2c"), ("http1", "http1")])
def test_rendered_queue_proxy_env_gives_the_port_names_protocol(port_name: str, protocol: str) -> None:
    """On Kubernetes the serving port (8013 for h2c, as Knative) is what tells the queue-proxy."""
    docs = build(parse_services(RENDERED.replace("PORTNAME", port_name), "svc.yaml"), {})
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].startswith(port_name)]
    [qp] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "queue-proxy"]
    env = {e["name"]: e["value"] for e in qp["env"] if "value" in e}
    assert QueueProxyConfig.from_env(env).user_protocol == protocol


# -- h2c clients, HTTP/1.1 app -----------------------------------------------------------------------


@pytest.mark.e2e
async def test_h2c_requests_to_an_http1_app() -> None:
    with user_app() as app, queue_proxy(app.port) as qp:
        status, _, body, _ = await h2_request(qp.port, b"/")
        assert (status, body) == (200, b"hello")
        # the app gets HTTP/1.1 with the client's authority as Host
        status, _, body, _ = await h2_request(qp.port, b"/headers")
        seen = json.loads(body)
        assert status == 200
        assert seen["host"] == "test"
        # a body larger than every HTTP/2 window, streamed both ways (the app echoes as it reads)
        payload = bytes(range(256)) * 2048  # 512 KiB
        status, _, body, _ = await h2_request(qp.port, b"/echo", method=b"POST", body=payload, timeout=30)
        assert status == 200
        assert body == payload
        status, _, body, _ = await h2_request(qp.port, b"/status?code=418")
        assert (status, body) == (418, b"status 418")


# -- HTTP/1.1 clients and probes, h2c app -------------------------------------------------------------


class H2App:
    """An h2c-only app (prior knowledge): records each request's HTTP version and User-Agent."""

    def __init__(self) -> None:
        self.ready = True
        self.seen: list[tuple[bytes, bytes, bytes]] = []  # (target, version, user-agent)

    async def __call__(self, req: Request, resp: Responder) -> None:
        self.seen.append((req.target, req.version, req.headers.get(b"user-agent") or b""))
        if req.target == b"/ready":
            await resp.send(200 if self.ready else 503, b"ready" if self.ready else b"not ready")
            return
        size = 0
        while chunk := await req.read():
            size += len(chunk)
        await resp.start(200, [(b"content-type", b"text/plain")])
        await resp.write(b"HTTP/%s %s %d" % (req.version, req.method, size))
        await resp.end([(b"x-app-trailer", b"yes")])


@pytest.fixture
async def h2app() -> AsyncIterator[tuple[H2App, H2Server]]:
    app = H2App()
    srv = await serve_h2(app, "127.0.0.1", 0)
    try:
        yield app, srv
    finally:
        await srv.shutdown(1.0)


@pytest.mark.e2e
async def test_http1_client_to_h2c_app_and_readiness_over_h2c(h2app: tuple[H2App, H2Server]) -> None:
    app, srv = h2app
    probe = json.dumps({"httpGet": {"path": "/ready", "port": srv.port}, "periodSeconds": 1})
    with queue_proxy(srv.port, QUEUE_USER_PROTOCOL="h2c", SERVING_READINESS_PROBE=probe) as qp:
        async with httpx.AsyncClient(trust_env=False, timeout=20) as c:
            r = await c.get(qp.url("/any"))
            assert (r.status_code, r.text) == (200, "HTTP/2 GET 0")
            r = await c.post(qp.url("/up"), content=b"z" * 300_000)
            assert (r.status_code, r.text) == (200, "HTTP/2 POST 300000")
            # readiness: the HTTP probe reaches the h2c app over HTTP/2, as a kubelet probe
            r = await c.get(qp.url("/"), headers={"K-Network-Probe": "queue"})
            assert (r.status_code, r.text) == (200, "queue")
            probes = [s for s in app.seen if s[0] == b"/ready"]
            assert probes and all(v == b"2" and ua.startswith(b"kube-probe/") for _, v, ua in probes)
            app.ready = False
            r = await c.get(qp.url("/"), headers={"K-Network-Probe": "queue"})
            assert r.status_code == 503
            app.ready = True
            r = await c.get(qp.url("/"), headers={"K-Network-Probe": "queue"})
            assert r.status_code == 200
        # an h2c client gets the app's trailers through
        status, _, body, trailers = await h2_request(qp.port, b"/t", headers=[(b"te", b"trailers")])
        assert (status, body) == (200, b"HTTP/2 GET 0")
        assert (b"x-app-trailer", b"yes") in trailers


@pytest.mark.e2e
async def test_http1_probe_mode_would_not_see_an_h2c_app_ready(h2app: tuple[H2App, H2Server]) -> None:
    """Why probes of h2c apps go over h2c: the same probe sent as HTTP/1.1 fails."""
    _, srv = h2app
    probe = json.dumps({"httpGet": {"path": "/ready", "port": srv.port}, "periodSeconds": 1})
    with queue_proxy(srv.port, QUEUE_USER_PROTOCOL="http1", SERVING_READINESS_PROBE=probe) as qp:
        async with httpx.AsyncClient(trust_env=False, timeout=20) as c:
            r = await c.get(qp.url("/"), headers={"K-Network-Probe": "queue"})
            assert r.status_code == 503
