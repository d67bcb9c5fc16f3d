from __future__ import annotations

import asyncio
import random

import pytest

from activator.slicing import MAX_CAPACITY
from activator.throttler import InfiniteBreaker, PodTracker, QueueFullError, RevisionThrottler
from serving.types import Endpoint, RevisionKey

from .helpers import until

KEY = RevisionKey("default", "hello-00001")


def pod(i: int) -> Endpoint:
    return Endpoint(f"pod-{i}", "127.0.0.1", 9000 + i)


async def test_requests_wait_for_a_pod_then_go_in_order_cc1() -> None:
    t = RevisionThrottler(KEY, 1, rng=random.Random(1))
    order: list[int] = []
    pods_seen: list[str] = []
    busy: set[str] = set()
    hold = asyncio.Event()

    async def request(i: int) -> None:
        p = await t.acquire()
        assert p.address not in busy, "cc=1: a pod got two requests at once"
        busy.add(p.address)
        order.append(i)
        pods_seen.append(p.address)
        await hold.wait()
        busy.discard(p.address)
        t.release(p)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(request(i)))
        await until(lambda: t.queued == len(tasks), what="request queued")
    assert t.capacity == 0 and order == []
    t.update_pods([pod(1)])
    await until(lambda: order == [0], what="first request released")
    assert t.queued == 4
    t.update_pods([pod(1), pod(2)])
    await until(lambda: order == [0, 1], what="second pod takes the second request")
    hold.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == [0, 1, 2, 3, 4]
    assert set(pods_seen) == {"127.0.0.1:9001", "127.0.0.1:9002"}
    assert t.in_flight == 0


async def test_cc0_gate_opens_for_everyone() -> None:
    t = RevisionThrottler(KEY, 0, rng=random.Random(2))
    assert isinstance(t.breaker, InfiniteBreaker)
    tasks = [asyncio.create_task(t.acquire()) for _ in range(50)]
    await until(lambda: t.queued == 50)
    t.update_pods([pod(1), pod(2)])
    got = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert t.capacity == 1 and t.queued == 0
    counts = {p.address: p.weight for p in t.pods}
    assert sum(counts.values()) == 50 and min(counts.values()) >= 20  # power of two choices spreads
    for p in got:
        t.release(p)
    assert t.in_flight == 0


@pytest.mark.parametrize("cc", [pytest.param(0, id="cc0"), pytest.param(3, id="cc3")])
async def test_full_queue_raises(cc: int) -> None:
    t = RevisionThrottler(KEY, cc, queue_depth=5)
    tasks = [asyncio.create_task(t.acquire()) for _ in range(5)]
    await until(lambda: t.queued == 5)
    with pytest.raises(QueueFullError):
        await t.acquire()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert t.queued == 0 and t.in_flight == 0


async def test_queue_bound_only_applies_to_waiting_requests() -> None:
    t = RevisionThrottler(KEY, 10, queue_depth=2)
    t.update_pods([pod(1)])
    held = [await t.acquire() for _ in range(10)]  # all run: none waits
    waiters = [asyncio.create_task(t.acquire()) for _ in range(2)]
    await until(lambda: t.queued == 2)
    with pytest.raises(QueueFullError):
        await t.acquire()
    for p in held:
        t.release(p)
    for p in await asyncio.gather(*waiters):
        t.release(p)


async def test_cancelled_waiter_leaves_at_once() -> None:
    t = RevisionThrottler(KEY, 1)
    first = asyncio.create_task(t.acquire())
    second = asyncio.create_task(t.acquire())
    await until(lambda: t.queued == 2)
    first.cancel()
    await until(lambda: t.queued == 1, what="cancelled waiter gone")
    t.update_pods([pod(1)])
    p = await asyncio.wait_for(second, 10)
    assert t.in_flight == 1
    t.release(p)
    assert first.cancelled()


async def test_pod_that_leaves_finishes_in_flight_but_gets_nothing_new() -> None:
    gone: list[PodTracker] = []
    t = RevisionThrottler(KEY, 1, on_pod_gone=gone.append)
    t.update_pods([pod(1), pod(2)])
    a = await t.acquire()
    assert a.address == "127.0.0.1:9001"  # first available
    t.update_pods([pod(2)])  # pod 1 goes away while a request is on it
    assert a.removed and gone == []
    assert t.capacity == 2  # pod 2's slot, plus the slot the request on pod 1 still holds
    b = await asyncio.wait_for(t.acquire(), 10)  # pod 2 is free: the request on pod 1 does not block it
    assert b.address == "127.0.0.1:9002"
    waiting = asyncio.create_task(t.acquire())
    await until(lambda: t.queued == 1)
    t.release(a)  # pod 1's last request ends: its slot does not come back
    assert gone == [a]
    assert t.capacity == 1 and t.queued == 1
    t.release(b)
    c = await asyncio.wait_for(waiting, 10)
    assert c.address == "127.0.0.1:9002"
    t.release(c)


async def test_removed_idle_pod_reported_at_once() -> None:
    gone: list[PodTracker] = []
    t = RevisionThrottler(KEY, 2, on_pod_gone=gone.append)
    t.update_pods([pod(1)])
    t.update_pods([])
    assert [g.address for g in gone] == ["127.0.0.1:9001"]
    assert t.capacity == 0


@pytest.mark.parametrize(
    ("cc", "pods", "activators", "index", "capacity", "assigned"),
    [
        pytest.param(1, 20, 3, 0, 7, 7, id="20-pods-3-activators-first"),
        pytest.param(1, 20, 3, 2, 6, 6, id="20-pods-3-activators-last"),
        pytest.param(10, 2, 5, 3, 10, 1, id="more-activators-than-pods"),
        pytest.param(0, 4, 3, 1, 1, 4, id="cc0-all-pods-gate-open"),
        pytest.param(5, 3, 1, 0, 15, 3, id="one-activator"),
    ],
)
async def test_capacity_follows_slicing(
    cc: int, pods: int, activators: int, index: int, capacity: int, assigned: int
) -> None:
    t = RevisionThrottler(KEY, cc)
    t.update_pods([pod(i) for i in range(pods)])
    t.update_activators(activators, index)
    assert t.capacity == capacity
    assert len(t.assigned) == assigned


async def test_large_cc_is_capped() -> None:
    t = RevisionThrottler(KEY, 2**30)
    t.update_pods([pod(1), pod(2), pod(3)])
    assert t.capacity == MAX_CAPACITY


async def test_round_robin_for_cc4() -> None:
    t = RevisionThrottler(KEY, 4)
    t.update_pods([pod(1), pod(2), pod(3)])
    picks = [await t.acquire() for _ in range(6)]
    assert [p.endpoint.port for p in picks] == [9001, 9002, 9003, 9001, 9002, 9003]
    for p in picks:
        t.release(p)


async def test_cc1_never_two_at_once_under_churn() -> None:
    t = RevisionThrottler(KEY, 1, rng=random.Random(5))
    t.update_pods([pod(1), pod(2), pod(3)])
    busy: set[str] = set()
    done = 0

    async def worker() -> None:
        nonlocal done
        for _ in range(20):
            p = await t.acquire()
            assert p.address not in busy
            busy.add(p.address)
            await asyncio.sleep(0)
            busy.discard(p.address)
            t.release(p)
            done += 1

    workers = [asyncio.create_task(worker()) for _ in range(10)]
    t.update_pods([pod(1), pod(2)])
    t.update_pods([pod(2), pod(3), pod(4)])
    await asyncio.wait_for(asyncio.gather(*workers), 20)
    assert done == 200 and t.in_flight == 0


def test_negative_cc() -> None:
    with pytest.raises(ValueError, match="containerConcurrency of default/hello-00001 must be >= 0"):
        RevisionThrottler(KEY, -1)
