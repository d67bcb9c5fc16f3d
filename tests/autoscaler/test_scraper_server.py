"""Scraping real HTTP servers of encoded Stats; the stat websocket and /metrics over real sockets."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from autoscaler.kpa import PAState
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.multiscaler import Decision
from autoscaler.scraper import PodScraper, ScrapeError, sample_size, scale_stats
from autoscaler.server import metrics_app, stat_app
from serving.clock import FakeClock
from serving.stat import Stat, WireStat, encode_wire_stats
from serving.types import Endpoint, RevisionKey

from .statpods import stat_pods

REV = RevisionKey("default", "hello-00001")


@pytest.mark.parametrize(
    ("pods", "n"),
    [(0, 0), (1, 1), (3, 3), (4, 4), (5, 4), (10, 7), (100, 14), (1000, 16)],
    ids=lambda v: str(v),
)
def test_sample_size(pods: int, n: int) -> None:
    assert sample_size(pods) == n


def test_scale_stats_sums_then_scales_to_all_pods() -> None:
    out = scale_stats([Stat("a", 2.0, 1.0, 10.0, 4.0), Stat("b", 4.0, 0.0, 20.0, 0.0)], 2, 10)
    assert (out.average_concurrent_requests, out.average_proxied_concurrent_requests) == (30.0, 5.0)
    assert (out.request_count, out.proxied_request_count) == (150.0, 20.0)


class Targets:
    def __init__(self, eps: Sequence[Endpoint]) -> None:
        self.eps = list(eps)

    def get(self, revision: RevisionKey) -> Sequence[Endpoint]:
        return self.eps


async def test_scrape_all_pods_revision_total() -> None:
    async with stat_pods([Stat("a", 3.0, 1.0, 6.0, 2.0), Stat("b", 5.0, 0.0, 8.0, 0.0)]) as pods:
        scraper = PodScraper(Targets([p.endpoint for p in pods]))
        try:
            stat = await scraper.scrape(REV, 60.0)
        finally:
            await scraper.close()
    assert stat is not None
    assert (stat.average_concurrent_requests, stat.average_proxied_concurrent_requests) == (8.0, 1.0)
    assert all(p.hits == 1 and p.accept == ["application/protobuf"] for p in pods)


async def test_sampling_prefers_old_pods_and_skips_unready() -> None:
    clock = FakeClock(0.0)
    stats = [Stat(f"p{i}", 1.0) for i in range(10)]
    async with stat_pods(stats) as pods:
        eps = [p.endpoint for p in pods[:8]]
        targets = Targets(
            [
                *eps,
                Endpoint("gone", "127.0.0.1", 1, ready=False),
                Endpoint("bye", "127.0.0.1", 1, terminating=True),
            ]
        )
        scraper = PodScraper(targets, clock=clock, rng=random.Random(7))
        try:
            await scraper.scrape(REV, 60.0)  # all 8 first seen at t = 0
            clock.advance(60.0)
            targets.eps = [*eps, pods[8].endpoint, pods[9].endpoint]  # two young pods join
            for p in pods:
                p.hits = 0
            stat = await scraper.scrape(REV, 60.0)
        finally:
            await scraper.close()
    assert stat is not None
    n = sample_size(10)  # 7 of 10, all from the 8 old pods
    assert sum(p.hits for p in pods) == n
    assert pods[8].hits == pods[9].hits == 0
    assert stat.average_concurrent_requests == pytest.approx(10.0)  # 7 x 1.0 / 7 x 10


async def test_failed_pod_is_replaced_by_the_next() -> None:
    async with stat_pods(
        [Stat("a", 2.0), Stat("b", 2.0), Stat("c", 2.0), Stat("d", 2.0), Stat("e", 2.0)]
    ) as pods:
        pods[0].status = 503
        pods[1].content_type = "text/plain"
        scraper = PodScraper(Targets([p.endpoint for p in pods]))  # 5 pods: sample 4, one spare
        try:
            with pytest.raises(ScrapeError, match="only 3 of 4"):
                await scraper.scrape(REV, 60.0)  # two bad, one spare: one worker runs dry
            pods[1].content_type = "application/protobuf"
            stat = await scraper.scrape(REV, 60.0)
        finally:
            await scraper.close()
    assert stat is not None and stat.average_concurrent_requests == pytest.approx(10.0)


async def test_no_pod_answers_and_no_pods() -> None:
    scraper = PodScraper(Targets([Endpoint("x", "127.0.0.1", 1, metrics_port=1)]), timeout=2.0)
    try:
        with pytest.raises(ScrapeError, match="no pod answered"):
            await scraper.scrape(REV, 60.0)
        assert await PodScraper(Targets([])).scrape(REV, 60.0) is None
    finally:
        await scraper.close()


async def test_slow_pod_times_out() -> None:
    async with stat_pods([Stat("slow", 1.0)]) as pods:
        pods[0].stall = True
        scraper = PodScraper(Targets([pods[0].endpoint]), timeout=0.3)
        try:
            with pytest.raises(ScrapeError, match="Timeout"):
                await scraper.scrape(REV, 60.0)
        finally:
            await scraper.close()


class Intake:
    def __init__(self) -> None:
        self.got: list[WireStat] = []
        self.event = asyncio.Event()

    def send(self, stats: list[WireStat]) -> None:
        self.got.extend(stats)
        self.event.set()


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


async def test_stat_websocket_intake_skips_bad_messages() -> None:
    intake = Intake()
    runner, port = await _serve(stat_app(intake))
    batch = [WireStat("default", "hello-00001", Stat("activator-0", 2.0, 0, 3.0, 0, 0, 1700000000))]
    try:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"http://127.0.0.1:{port}/") as ws:
                await ws.send_bytes(b"\xff\xff\xff not protobuf")
                await ws.send_str("hello")
                await ws.send_bytes(encode_wire_stats(batch))
                await asyncio.wait_for(intake.event.wait(), 10.0)
            async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
    assert intake.got == batch


async def test_metrics_endpoint_renders_decisions() -> None:
    registry = CollectorRegistry()
    m = AutoscalerMetrics(registry)
    m.observe(
        Decision(
            REV,
            0.0,
            3,
            True,
            3,
            2,
            True,
            -5,
            True,
            3,
            "concurrency",
            150.0,
            210.0,
            70.0,
            PAState.ACTIVE,
            True,
        )
    )
    runner, port = await _serve(metrics_app(registry))
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
    finally:
        await runner.cleanup()
    labels = 'namespace_name="default",revision_name="hello-00001"'
    for line in (
        f"autoscaler_desired_pods{{{labels}}} 3.0",
        f"autoscaler_panic_mode{{{labels}}} 1.0",
        f"autoscaler_excess_burst_capacity{{{labels}}} -5.0",
        f"autoscaler_stable_request_concurrency{{{labels}}} 150.0",
        f"autoscaler_panic_request_concurrency{{{labels}}} 210.0",
    ):
        assert line in text
    m.forget(REV)
    assert "hello-00001" not in repr(list(m.desired.collect()))
