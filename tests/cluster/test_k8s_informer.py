"""The informer against the fake API server, through the real kubernetes-asyncio client over HTTP."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from cluster.k8s_cache import Backoff, Change
from cluster.k8s_informer import Informer
from serving.clock import FakeClock
from tests.fakes.fake_apiserver import FakeApiServer, Fault, go_bool, running_apiserver
from tests.fakes.k8s_helpers import background, configmap, eventually

NS = "default"


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with running_apiserver(bookmark_interval=0.1) as s:
        yield s


@pytest.fixture
async def api(server: FakeApiServer) -> AsyncIterator[client.ApiClient]:
    a = server.client("informer")
    try:
        yield a
    finally:
        await a.close()


def data_of(inf: Informer) -> dict[str, dict[str, str]]:
    return {key[1]: obj.get("data") or {} for key, obj in inf.cache.items()}


def server_data(server: FakeApiServer) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data") or {} for o in server.store.list("configmaps", NS)}


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, batch: list[Change]) -> None:
        self.changes.extend(batch)

    def seen(self, kind: str, name: str) -> bool:
        return any(c.kind == kind and c.key[1] == name for c in self.changes)


def fast_sleep(record: list[float]) -> Any:
    async def sleep(d: float) -> None:
        record.append(d)
        await asyncio.sleep(0)

    return sleep


async def test_list_then_watch_from_the_lists_version_with_bookmarks(server: FakeApiServer, api: Any) -> None:
    server.store.create("configmaps", NS, configmap("a", {"k": "1"}, {"app": "x"}))
    server.store.create("configmaps", NS, configmap("other", {"k": "1"}, {"app": "y"}))
    rec = Recorder()
    inf = Informer(
        client.CoreV1Api(api).list_namespaced_config_map, NS, label_selector="app=x", on_change=rec
    )
    async with background(inf.run()):
        await eventually(lambda: inf.synced.is_set() and server.open_watches == 1, what="list and watch")
        list_rv = inf.resource_version
        assert server.watch_starts[0] == ("configmaps", list_rv)
        assert data_of(inf) == {"a": {"k": "1"}}
        server.store.create("configmaps", NS, configmap("b", {"k": "2"}, {"app": "x"}))
        server.store.update("configmaps", NS, configmap("a", {"k": "3"}, {"app": "x"}))
        server.store.create("configmaps", NS, configmap("c", {}, {"app": "y"}))  # outside the selector
        await eventually(lambda: data_of(inf) == {"a": {"k": "3"}, "b": {"k": "2"}}, what="watch events")
        server.store.delete("configmaps", NS, "b")
        await eventually(lambda: rec.seen("DELETED", "b"), what="delete")
        # bookmarks move the version past the unrelated object's write
        await eventually(lambda: int(inf.resource_version) == server.store.rv, what="bookmark")
    assert [c.kind for c in rec.changes] == ["ADDED", "ADDED", "MODIFIED", "DELETED"]
    assert inf.lists == 1 and inf.errors == 0


@pytest.mark.parametrize("as_status", [False, True], ids=["error-event-in-stream", "http-410"])
async def test_a_410_in_the_middle_of_a_watch_loses_no_update(as_status: bool) -> None:
    async with running_apiserver(bookmark_interval=0.1, gone_as_status=as_status) as server:
        api = server.client()
        try:
            for name in ("a", "b", "c"):
                server.store.create("configmaps", NS, configmap(name, {"v": "0"}))
            rec = Recorder()
            inf = Informer(
                client.CoreV1Api(api).list_namespaced_config_map, NS, on_change=rec, rng=random.Random(1)
            )
            async with background(inf.run()):
                await eventually(lambda: inf.synced.is_set() and server.open_watches == 1, what="watching")
                server.store.update("configmaps", NS, configmap("a", {"v": "1"}))
                await eventually(lambda: data_of(inf)["a"] == {"v": "1"}, what="first update")
                # These writes happen while the watch is stuck, then the server compacts them away.
                server.hold_watches()
                server.store.update("configmaps", NS, configmap("b", {"v": "2"}))
                server.store.delete("configmaps", NS, "c")
                server.store.create("configmaps", NS, configmap("d", {"v": "3"}))
                server.expire_watches()
                await eventually(lambda: data_of(inf) == server_data(server), what="re-list after 410")
                # and the watch resumes from the new list's version
                server.store.update("configmaps", NS, configmap("d", {"v": "4"}))
                await eventually(lambda: data_of(inf) == server_data(server), what="updates after re-list")
            assert inf.gone >= 1 and inf.lists >= 2
            watch_statuses = {r.status for r in server.requests if r.verb == "watch"}
            assert (410 in watch_statuses) == as_status
            assert rec.seen("MODIFIED", "b") and rec.seen("DELETED", "c") and rec.seen("ADDED", "d")
            assert data_of(inf) == {"a": {"v": "1"}, "b": {"v": "2"}, "d": {"v": "4"}}
        finally:
            await api.close()


async def test_429_and_errors_back_off_exponentially_with_jitter(server: FakeApiServer, api: Any) -> None:
    server.store.create("configmaps", NS, configmap("a", {}))
    server.add_fault(Fault(lambda r: r.method == "GET", status=429, count=2, retry_after="0"))
    server.add_fault(Fault(lambda r: r.method == "GET", status=500, count=2))
    delays: list[float] = []
    inf = Informer(
        client.CoreV1Api(api).list_namespaced_config_map,
        NS,
        backoff=Backoff(1.0, 60.0, random.Random(7)),
        sleep=fast_sleep(delays),
    )
    async with background(inf.run()):
        await eventually(lambda: inf.synced.is_set(), what="sync after faults")
    assert inf.errors == 4
    assert len(delays) == 4
    for n, d in enumerate(delays):  # n-th failure: within [step/2, step], step = 2**n
        assert 2**n / 2 <= d <= 2**n, (n, d)


async def test_retry_after_is_honoured_on_429(server: FakeApiServer, api: Any) -> None:
    server.add_fault(Fault(lambda r: r.method == "GET", status=429, count=1, retry_after="5"))
    delays: list[float] = []
    inf = Informer(client.CoreV1Api(api).list_namespaced_config_map, NS, sleep=fast_sleep(delays))
    async with background(inf.run()):
        await eventually(lambda: inf.synced.is_set(), what="sync")
    assert delays == [5.0]


async def test_periodic_resync_repairs_a_missed_event(server: FakeApiServer, api: Any) -> None:
    server.store.create("configmaps", NS, configmap("a", {"v": "0"}))
    clock = FakeClock(0.0)
    inf = Informer(
        client.CoreV1Api(api).list_namespaced_config_map,
        NS,
        clock=clock,
        watch_timeout=1,
        resync_period=100.0,
    )
    async with background(inf.run()):
        await eventually(lambda: inf.synced.is_set(), what="sync")
        # change the object behind the watch's back: no event is ever streamed for it
        obj = server.store.objects[("configmaps", NS, "a")]
        obj["data"] = {"v": "silent"}
        server.store.rv += 1
        obj["metadata"]["resourceVersion"] = str(server.store.rv)
        clock.advance(101.0)
        await eventually(lambda: data_of(inf) == {"a": {"v": "silent"}}, what="resync")
    assert inf.lists >= 2


async def test_three_failed_watches_in_a_row_relist(server: FakeApiServer, api: Any) -> None:
    server.store.create("configmaps", NS, configmap("a", {}))
    delays: list[float] = []
    inf = Informer(client.CoreV1Api(api).list_namespaced_config_map, NS, sleep=fast_sleep(delays))
    async with background(inf.run()):
        await eventually(lambda: server.open_watches == 1, what="watching")
        server.add_fault(Fault(lambda r: go_bool(r.query.get("watch")), status=500, count=3))
        server.expire_watches()  # end the current watch; the next three attempts fail
        await eventually(lambda: inf.lists >= 3 and server.open_watches == 1, what="relist")
    assert inf.errors == 3


async def test_random_writes_with_random_410s_end_with_the_servers_state(
    server: FakeApiServer, api: Any
) -> None:
    """300 random creates/updates/deletes; every ~25 the watch is held and expired mid-stream. Whatever
    the interleaving, the cache ends equal to the server, and every object's last state was reported."""
    rng = random.Random(20261123)
    rec = Recorder()
    inf = Informer(client.CoreV1Api(api).list_namespaced_config_map, NS, on_change=rec, rng=random.Random(3))
    async with background(inf.run()):
        await eventually(lambda: inf.synced.is_set(), what="sync")
        expired: list[int] = []
        for step in range(300):
            name = f"cm{rng.randrange(12)}"
            exists = ("configmaps", NS, name) in server.store.objects
            if not exists:
                server.store.create("configmaps", NS, configmap(name, {"step": str(step)}))
            elif rng.random() < 0.25:
                server.store.delete("configmaps", NS, name)
            else:
                server.store.update("configmaps", NS, configmap(name, {"step": str(step)}))
            if step % 25 == 10:
                server.hold_watches()
            if step % 25 == 20:
                expired.append(inf.gone)
                server.expire_watches()
                await eventually(lambda: inf.gone > expired[-1] and server.open_watches == 1, what="re-watch")
            if step % 7 == 0:
                await asyncio.sleep(0)  # let the stream interleave with the writes
        await eventually(lambda: data_of(inf) == server_data(server), what="converged")
    last: dict[str, dict[str, str] | None] = {}
    for c in rec.changes:
        last[c.key[1]] = None if c.new is None else c.new.get("data")
    assert {k: v for k, v in last.items() if v is not None} == server_data(server)
    assert inf.gone == 12
    assert inf.delays == []  # each 410 came after events: re-listed at once, no back-off


async def test_a_server_that_expires_every_fresh_version_is_not_hammered(
    server: FakeApiServer, api: Any
) -> None:
    server.store.create("configmaps", NS, configmap("a", {}))
    server.add_fault(Fault(lambda r: go_bool(r.query.get("watch")), status=410, count=4))
    delays: list[float] = []
    inf = Informer(
        client.CoreV1Api(api).list_namespaced_config_map,
        NS,
        sleep=fast_sleep(delays),
        backoff=Backoff(1.0, 60.0, random.Random(5)),
    )
    async with background(inf.run()):
        await eventually(lambda: server.open_watches == 1, what="a watch finally open")
    assert inf.gone == 4 and inf.lists == 5
    # the first 410 re-lists at once; the next ones wait, longer each time
    assert len(delays) == 3 and delays[0] < delays[1] < delays[2]


@pytest.mark.parametrize("body", ["[1, 2]", '{"items": [{"kind": "ConfigMap"}]}', "not json"])
async def test_a_malformed_answer_is_survived(server: FakeApiServer, api: Any, body: str) -> None:
    server.store.create("configmaps", NS, configmap("a", {"v": "1"}))
    server.add_fault(
        Fault(
            lambda r: r.method == "GET" and not go_bool(r.query.get("watch")), status=200, body=body, count=1
        )
    )
    delays: list[float] = []
    inf = Informer(client.CoreV1Api(api).list_namespaced_config_map, NS, sleep=fast_sleep(delays))
    async with background(inf.run()):
        await eventually(lambda: data_of(inf) == {"a": {"v": "1"}}, what="sync after a bad answer")
    assert inf.errors == 1 and len(delays) == 1
