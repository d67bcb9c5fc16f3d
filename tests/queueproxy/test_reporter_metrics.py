from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from queueproxy.admin import DrainControl
from queueproxy.reporter import StatsReporter, wants_protobuf
from queueproxy.usermetrics import DURATION_BUCKETS, UserMetrics
from serving.clock import FakeClock
from serving.drain import Drainer
from serving.stat import decode_stat
from serving.stats import RequestStats

LABELS = {
    "destination_namespace": "ns",
    "destination_configuration": "cfg",
    "destination_revision": "rev",
    "destination_pod": "pod-a",
}


def samples(text: bytes) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[s.name] = s.value
    return out


def test_one_period_folds_into_a_stat() -> None:
    clock = FakeClock(100.0)
    stats = RequestStats(clock.now())
    rep = StatsReporter(stats, pod_name="pod-a", labels=LABELS, clock=clock, started_at=90.0)
    # two 500 ms requests one after the other (average 1.0), one of them from the activator
    stats.request_in(clock.now())
    clock.advance(0.5)
    stats.request_out(clock.now())
    stats.request_in(clock.now(), proxied=True)
    clock.advance(0.5)
    stats.request_out(clock.now(), proxied=True)
    stat = rep.tick()
    assert stat.pod_name == "pod-a"
    assert stat.average_concurrent_requests == pytest.approx(1.0)
    assert stat.average_proxied_concurrent_requests == pytest.approx(0.5)
    assert (stat.request_count, stat.proxied_request_count) == (2.0, 1.0)
    assert stat.process_uptime == pytest.approx(11.0)
    assert decode_stat(rep.render_protobuf()) == stat
    got = samples(rep.render_prometheus())
    assert got["queue_average_concurrent_requests"] == pytest.approx(1.0)
    assert got["queue_requests_per_second"] == 2.0
    assert got["queue_average_proxied_concurrent_requests"] == pytest.approx(0.5)
    assert got["queue_proxied_operations_per_second"] == 1.0
    assert got["process_uptime"] == pytest.approx(11.0)
    assert b'destination_revision="rev"' in rep.render_prometheus()
    # next period: nothing new arrives, counts restart
    clock.advance(1.0)
    stat2 = rep.tick()
    assert (stat2.request_count, stat2.average_concurrent_requests) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("accept", "proto"),
    [
        ("application/protobuf", True),
        ("text/plain, application/protobuf;q=0.9", True),
        ("text/plain", False),
        ("", False),
        ("*/*", False),
    ],
)
def test_accept_negotiation(accept: str, proto: bool) -> None:
    assert wants_protobuf(accept) is proto


def test_user_metrics_by_code_with_knative_buckets() -> None:
    m = UserMetrics(CollectorRegistry(), namespace="ns", service="svc", configuration="cfg", revision="rev")
    m.observe(200, 0.02)
    m.observe(200, 3.0)
    m.observe(503, 0.001)
    m.queue_depth(4)
    text = m.render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    hist = fams["kn_serving_invocation_duration_seconds"]
    counts = {
        s.labels["http_response_status_code"]: s.value for s in hist.samples if s.name.endswith("_count")
    }
    assert counts == {"200": 2.0, "503": 1.0}
    bounds = sorted({float(s.labels["le"]) for s in hist.samples if s.name.endswith("_bucket")})
    assert bounds[:-1] == list(DURATION_BUCKETS) and bounds[-1] == float("inf")
    le_005 = [
        s.value
        for s in hist.samples
        if s.name.endswith("_bucket")
        and s.labels["le"] == "0.025"
        and s.labels["http_response_status_code"] == "200"
    ]
    assert le_005 == [1.0]
    depth = fams["kn_serving_queue_depth"].samples[0]
    assert depth.value == 4.0
    assert depth.labels == {
        "k8s_namespace_name": "ns",
        "kn_service_name": "svc",
        "kn_configuration_name": "cfg",
        "kn_revision_name": "rev",
    }


async def test_wait_for_drain_is_called_off_without_sigterm() -> None:
    control = DrainControl(Drainer(quiet_period=30, hard_cap=300), reset_after=0.1)
    await asyncio.wait_for(control.wait_for_drain(), 5)
    assert not control.draining  # reset: the user container restarted alone, keep serving


async def test_wait_for_drain_completes_with_sigterm() -> None:
    clock = FakeClock()
    drainer = Drainer(quiet_period=1, hard_cap=300, clock=clock)
    control = DrainControl(drainer, reset_after=0.05)
    waiter = asyncio.ensure_future(control.wait_for_drain())
    control.terminate()
    await asyncio.sleep(0.1)  # past reset_after: the reset must not happen after a SIGTERM
    assert control.draining and not waiter.done()
    clock.advance(1.0)
    await asyncio.wait_for(waiter, 5)
    assert drainer.complete()
