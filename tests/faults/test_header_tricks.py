"""Host and internal-header tricks against the gateway (activator path), as real processes.

Two services, ``web`` and ``other``, each with its own pod. Whatever a client sends, a request for
``web`` reaches only web's pod, an unknown or internal Host reaches no pod at all, the client's
values of Knative's internal headers never reach the user container, and none changes what the
queue-proxy reports to the autoscaler.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import hostile
from tests.faults.stack import Stack, stack

pytestmark = pytest.mark.e2e

INTERNAL = ("knative-serving-", "k-")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(Path(tmp_path_factory.mktemp("tricks"))) as s:
        yield s


def _marked(plane: Stack, marker: str) -> dict[str, list[dict[str, Any]]]:
    return {
        pod.revision: [e for e in pod.journal() if f"case={marker}" in e["target"]]
        for pod in (plane.web, plane.other)
    }


def _headers(entry: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in entry["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def _hosts(plane: Stack) -> list[str]:
    gw, web = plane.gateway, plane.web
    return [
        "nope.default.example.com",
        "example.com",
        "web.default",
        "web",
        "web-00001.default.svc.cluster.local",
        f"127.0.0.1:{gw.port}",
        f"127.0.0.1:{gw.admin_port}",
        f"127.0.0.1:{web.port}",
        f"127.0.0.1:{web.app_port}",
        f"127.0.0.1:{web.admin_port}",
        "127.0.0.1",
        "localhost",
        f"localhost:{web.port}",
        "[::1]",
        "web.default.example.com.evil.com",
        "evil.com/web.default.example.com",
    ]


def test_unknown_and_internal_hosts_reach_no_pod(plane: Stack) -> None:
    for i, host in enumerate(_hosts(plane)):
        marker = f"host{i}"
        reply = hostile.request(plane.gateway.port, "GET", f"/headers?case={marker}", host)
        assert reply.status == 404, (host, reply)
        assert _marked(plane, marker) == {"web-00001": [], "other-00001": []}, host


TRICKS: list[tuple[str, list[tuple[str, str]]]] = [
    ("revision", [("Knative-Serving-Revision", "other-00001"), ("Knative-Serving-Namespace", "default")]),
    ("revision-upper", [("KNATIVE-SERVING-REVISION", "other-00001")]),
    ("revision-twice", [
        ("Knative-Serving-Revision", "web-00001"), ("knative-serving-revision", "other-00001")
    ]),
    ("namespace", [("Knative-Serving-Namespace", "kube-system")]),
    ("original-host", [("K-Original-Host", "other.default.example.com")]),
    ("proxy-request", [("K-Proxy-Request", "evil")]),
    ("proxy-request-activator", [("K-Proxy-Request", "activator")]),
    ("network-probe", [("K-Network-Probe", "queue")]),
    ("network-probe-hash", [("K-Network-Probe", "probe"), ("K-Network-Hash", "evil")]),
    ("tag", [("Knative-Serving-Tag", "other")]),
    ("default-route", [("Knative-Serving-Default-Route", "true")]),
    ("forwarded-host", [("X-Forwarded-Host", "other.default.example.com")]),
    ("everything", [
        ("Knative-Serving-Revision", "other-00001"),
        ("Knative-Serving-Namespace", "default"),
        ("K-Original-Host", "other.default.example.com"),
        ("K-Proxy-Request", "evil"),
        ("K-Network-Probe", "queue"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "headers"), TRICKS, ids=[t[0] for t in TRICKS])
def test_internal_headers_from_the_client_reach_neither_another_revision_nor_the_app(
    plane: Stack, name: str, headers: list[tuple[str, str]]
) -> None:
    marker = f"trick-{name}"
    reply = hostile.request(plane.gateway.port, "GET", f"/headers?case={marker}", plane.host("web"), headers)
    assert reply.status == 200, reply
    seen = _marked(plane, marker)
    assert seen["other-00001"] == [] and len(seen["web-00001"]) == 1, seen
    got = _headers(seen["web-00001"][0])
    assert got["host"] == [plane.host("web")], got
    # The body is the app's own view (not a probe answered on the way), and it agrees with the journal.
    assert json.loads(reply.body)["target"] == f"/headers?case={marker}"
    sent_values = {v for _, v in headers}
    for hname, values in got.items():
        if hname.startswith(INTERNAL):
            # Only the data plane's own marking may arrive: K-Proxy-Request: activator, set by it.
            assert (hname, values) == ("k-proxy-request", ["activator"]), got
        elif hname != "x-forwarded-host":
            assert not sent_values & set(values), (hname, values)


@pytest.mark.parametrize(
    "headers", [[("K-Kubelet-Probe", "queue")], [("User-Agent", "kube-probe/1.30")]], ids=["header", "agent"]
)
def test_kubelet_probe_headers_are_answered_by_the_gateway_itself(
    plane: Stack, headers: list[tuple[str, str]]
) -> None:
    """Knative's activator answers kubelet probes on its serving port: its own health, nothing forwarded."""
    marker = f"kubelet-{headers[0][0]}"
    reply = hostile.request(plane.gateway.port, "GET", f"/headers?case={marker}", plane.host("web"), headers)
    assert (reply.status, reply.body) == (200, b"ok"), reply
    assert _marked(plane, marker) == {"web-00001": [], "other-00001": []}


def test_absolute_form_target_naming_another_service_stays_on_the_hosts_route(plane: Stack) -> None:
    target = "http://other.default.example.com/headers?case=absolute"
    reply = hostile.request(plane.gateway.port, "GET", target, plane.host("web"))
    seen = _marked(plane, "absolute")
    assert seen["other-00001"] == [], seen
    assert reply.status in (200, 400, 404), reply


def _concurrency_seen(plane: Stack, headers: list[tuple[str, str]]) -> tuple[float, float]:
    """Hold 6 requests of 2.5 s in web's pod through the gateway and read the pod's stats meanwhile:
    (average concurrency, average proxied concurrency) of the best-filled 1-second period."""
    done: list[int | None] = []

    def one(i: int) -> None:
        r = hostile.request(
            plane.gateway.port, "GET", f"/sleep?ms=2500&case=stat{i}", plane.host("web"), headers
        )
        done.append(r.status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    best = (0.0, 0.0)
    deadline = time.monotonic() + 10
    try:
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            m = plane.web.prometheus()
            conc = m.get("queue_average_concurrent_requests", 0.0)
            if conc > best[0]:
                best = (conc, m.get("queue_average_proxied_concurrent_requests", 0.0))
            time.sleep(0.2)  # the scrape pace (the stats change once a second), not a wait for a condition
    finally:
        for t in threads:
            t.join(30)
    assert done == [200] * 6, done
    return best


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("K-Proxy-Request", "nope")],
        [("K-Proxy-Request", "activator"), ("K-Network-Probe", "queue")],
    ],
    ids=["plain", "spoofed-not-proxied", "spoofed-proxied"],
)
def test_client_headers_do_not_skew_the_autoscaler_counts(
    plane: Stack, headers: list[tuple[str, str]]
) -> None:
    conc, proxied = _concurrency_seen(plane, headers)
    assert conc >= 5.0, (conc, proxied)
    assert proxied == pytest.approx(conc, abs=0.01), "requests through the activator must count as proxied"


def test_connection_header_cannot_strip_the_activators_own_headers(plane: Stack) -> None:
    """Fields a client names in Connection go at the door, before the activator adds its own (found
    here as a strict xfail, fixed in routing/activator by fc924d9): else the queue-proxy would count
    the request as not proxied (the autoscaler would count it twice) and the app would see the pod's
    address as Host."""
    marker = "conn-strip"
    reply = hostile.request(
        plane.gateway.port,
        "GET",
        f"/headers?case={marker}",
        plane.host("web"),
        [("Connection", "k-proxy-request, k-original-host")],
    )
    assert reply.status == 200, reply
    got = _headers(_marked(plane, marker)["web-00001"][0])
    assert got["host"] == [plane.host("web")] and got.get("k-proxy-request") == ["activator"], got
    conc, proxied = _concurrency_seen(plane, [("Connection", "k-proxy-request")])
    assert proxied == pytest.approx(conc, abs=0.01), (conc, proxied)


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/wait-for-drain", "/v1/status", "/debug/pprof"])
def test_admin_paths_on_a_serving_port_belong_to_the_app(plane: Stack, path: str) -> None:
    """The gateway's and the queue-proxy's own admin, metrics and drain endpoints live on their side
    ports only: on a serving port these paths are the app's, like any other."""
    for port, host in ((plane.gateway.port, plane.host("web")), (plane.web.port, "h")):
        marker = f"admin-{port}-{path.strip('/').replace('/', '-')}"
        reply = hostile.request(port, "GET", f"{path}?case={marker}", host)
        assert reply.status == 404 and reply.body == b"not found", (port, path, reply)  # the app's 404
        assert len(_marked(plane, marker)["web-00001"]) == 1, (port, path)


def test_side_ports_do_not_proxy_to_the_app(plane: Stack) -> None:
    for port in (
        plane.gateway.admin_port,
        plane.web.admin_port,
        plane.web.metrics_port,
        plane.web.user_metrics_port,
    ):
        reply = hostile.request(port, "GET", "/headers?case=side-port", plane.host("web"))
        assert reply.status == 404, (port, reply)
    assert _marked(plane, "side-port") == {"web-00001": [], "other-00001": []}
