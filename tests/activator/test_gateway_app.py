"""cluster.gateway_app: route documents, the LocalGateway-compatible interface, the admin port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml

from activator.backends import EndpointBoard
from cluster.gateway_app import GatewayApp, apply_snapshot, parse_routes_configmap, parse_routes_file
from routing.table import TableHolder
from serving.errors import SpecError
from serving.stat import WireStat
from serving.types import Endpoint, RevisionKey

from .helpers import until
from .test_handler import AllHealthy, PodServer


def _file(**over: Any) -> str:
    doc: dict[str, Any] = {
        "domain": "example.com",
        "services": [
            {
                "name": "s",
                "latestRevision": "s-00002",
                "traffic": [{"revisionName": "s-00001", "percent": 100}],
            }
        ],
        "revisions": [
            {"name": "s-00001", "containerConcurrency": 2, "timeoutSeconds": 30},
            {"name": "s-00002", "endpoints": [{"host": "127.0.0.1", "port": 9999, "pod": "p"}]},
        ],
    }
    doc.update(over)
    return yaml.safe_dump(doc)


def test_parse_routes_file() -> None:
    snap = parse_routes_file(_file())
    assert snap.table.hosts() == ["s.default.example.com"]
    r1 = snap.revisions[RevisionKey("default", "s-00001")]
    assert r1.settings == {
        "container_concurrency": 2,
        "timeout_seconds": 30,
        "response_start_timeout_seconds": 30,
        "idle_timeout_seconds": 0,
        "protocol": "http1",
    }
    assert r1.endpoints == ()
    assert snap.revisions[RevisionKey("default", "s-00002")].endpoints == (Endpoint("p", "127.0.0.1", 9999),)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        pytest.param(
            {"services": [{"name": "s", "traffic": [{"revisionName": "gone", "percent": 100}]}]},
            r"services\[0\] \(default/s\).traffic\[0\].revisionName: revision 'gone' is not a known",
            id="unknown-revision",
        ),
        pytest.param(
            {"revisions": [{"name": "s-00001", "containerConcurrency": -1}]},
            r"revisions\[0\].containerConcurrency: expected a whole number >= 0, got -1",
            id="bad-cc",
        ),
        pytest.param(
            {"revisions": [{"name": "s-00001", "endpoints": [{"host": "h", "port": "80"}]}]},
            r"revisions\[0\].endpoints\[0\]: expected a mapping with host and an integer port",
            id="bad-port",
        ),
        pytest.param(
            {"services": [{"traffic": []}]}, r"services\[0\]: expected a mapping with a name", id="no-name"
        ),
    ],
)
def test_parse_routes_file_errors(over: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_routes_file(_file(**over))


def test_parse_routes_configmap() -> None:
    services = yaml.safe_dump_all(
        [
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "metadata": {"name": "hello", "namespace": "prod"},
                "spec": {
                    "template": {"metadata": {"name": "hello-00002"}},
                    "traffic": [
                        {"revisionName": "hello-00001", "percent": 10, "tag": "old"},
                        {"latestRevision": True, "percent": 90},
                    ],
                },
            }
        ]
    )
    revisions = json.dumps(
        [{"name": "hello-00002", "namespace": "prod", "containerConcurrency": 5, "timeoutSeconds": 60}]
    )
    snap = parse_routes_configmap(
        {"services.yaml": services, "revisions.json": revisions}, "svc.cluster.local"
    )
    assert "hello.prod.svc.cluster.local" in snap.table.hosts()
    assert "old-hello.prod.svc.cluster.local" in snap.table.hosts()
    assert snap.revisions[RevisionKey("prod", "hello-00002")].settings["container_concurrency"] == 5
    # named in traffic but not rendered now: routed with defaults, its pods from the cluster
    assert snap.revisions[RevisionKey("prod", "hello-00001")].settings == {}


@pytest.fixture
async def app() -> AsyncIterator[tuple[GatewayApp, EndpointBoard, list[WireStat]]]:
    board = EndpointBoard()
    stats: list[WireStat] = []
    gw = GatewayApp(TableHolder(), board, stats.extend, prober=AllHealthy())
    await gw.start("127.0.0.1", 0, admin_port=0)
    try:
        yield gw, board, stats
    finally:
        await gw.shutdown(1)


async def test_app_serves_routes_metrics_and_health(
    app: tuple[GatewayApp, EndpointBoard, list[WireStat]],
) -> None:
    gw, board, stats = app
    pod = PodServer("s1")
    ep = await pod.start()
    try:
        doc = yaml.safe_load(_file())
        doc["revisions"][0]["endpoints"] = [{"host": ep.host, "port": ep.port, "pod": "s1"}]
        await apply_snapshot(gw, parse_routes_file(yaml.safe_dump(doc)), board)
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"http://127.0.0.1:{gw.port}/", headers={"Host": "s.default.example.com"})
            assert r.status_code == 200 and r.json()["pod"] == "s1"
            assert stats and stats[0].name == "s-00001"  # the poke went to the in-process sink
            metrics = (await c.get(f"http://127.0.0.1:{gw.admin_port}/metrics")).text
            assert 'zeroscale_activator_healthy_pods{namespace="default",revision="s-00001"} 1.0' in metrics
            assert (await c.get(f"http://127.0.0.1:{gw.admin_port}/healthz")).status_code == 200
            # serve mode: the autoscaler takes the activator out of the path
            key = RevisionKey("default", "s-00001")
            assert gw.activator_in_path(key)
            gw.set_activator_in_path(key, False)
            assert not gw.activator_in_path(key)
            r = await c.get(f"http://127.0.0.1:{gw.port}/", headers={"Host": "s.default.example.com"})
            seen = {k.lower() for k, _ in r.json()["headers"]}
            assert r.status_code == 200 and "k-proxy-request" not in seen
            gw.begin_drain()
            assert (await c.get(f"http://127.0.0.1:{gw.admin_port}/healthz")).status_code == 500
            probe = await c.get(f"http://127.0.0.1:{gw.port}/", headers={"User-Agent": "kube-probe/1.30"})
            assert probe.status_code == 500
        # a revision that leaves the document is removed
        doc["revisions"] = doc["revisions"][:1]
        doc["services"][0]["latestRevision"] = "s-00001"
        await apply_snapshot(gw, parse_routes_file(yaml.safe_dump(doc)), board)
        assert gw.activator.revisions() == [key]
        await until(lambda: board.get(RevisionKey("default", "s-00002")) == ())
    finally:
        await pod.stop()
