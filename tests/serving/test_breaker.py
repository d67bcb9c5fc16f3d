from __future__ import annotations

import asyncio

import pytest

from serving.breaker import Breaker, QueueFullError


async def test_cc1_admits_one_queues_ten_rejects_the_twelfth() -> None:
    b = Breaker(queue_depth=10, max_concurrency=1)
    await b.acquire()
    waiters = [asyncio.create_task(b.acquire()) for _ in range(10)]
    await asyncio.sleep(0)
    assert b.executing == 1 and b.waiting == 10
    with pytest.raises(QueueFullError, match="pending request queue full"):
        await b.acquire()
    for _ in range(11):
        b.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert b.in_flight == 0


async def test_waiters_are_released_in_arrival_order() -> None:
    b = Breaker(queue_depth=5, max_concurrency=1)
    await b.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await b.acquire()
        order.append(i)
        b.release()

    tasks = [asyncio.create_task(wait(i)) for i in range(5)]
    await asyncio.sleep(0)
    b.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_cancelled_waiter_frees_its_pending_slot_at_once() -> None:
    b = Breaker(queue_depth=1, max_concurrency=1)
    await b.acquire()
    t = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError):
        await b.acquire()
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert b.in_flight == 1
    t2 = asyncio.create_task(b.acquire())  # room again
    await asyncio.sleep(0)
    b.release()
    await t2
    assert b.executing == 1


async def test_slot_granted_to_a_cancelled_waiter_passes_on() -> None:
    b = Breaker(queue_depth=2, max_concurrency=1)
    await b.acquire()
    first = asyncio.create_task(b.acquire())
    second = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    b.release()  # hands the slot to `first` ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert b.executing == 1 and b.in_flight == 1


async def test_many_clients_giving_up_do_not_grow_the_queue() -> None:
    b = Breaker(queue_depth=100, max_concurrency=1, initial_capacity=0)
    for _ in range(50):
        tasks = [asyncio.create_task(b.acquire()) for _ in range(100)]
        await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert b.in_flight == 0
    assert len(b._waiters) <= 201


async def test_capacity_update_wakes_waiters_and_try_acquire_respects_queue() -> None:
    b = Breaker(queue_depth=10, max_concurrency=5, initial_capacity=0)
    assert not b.try_acquire()
    tasks = [asyncio.create_task(b.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert b.waiting == 3
    b.update_capacity(2)
    await asyncio.sleep(0)
    assert b.executing == 2 and b.waiting == 1
    assert not b.try_acquire()  # a live waiter is ahead
    b.update_capacity(5)
    await asyncio.gather(*tasks)
    assert b.try_acquire() and b.executing == 4
    b.update_capacity(99)
    assert b.capacity == 5


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        Breaker(queue_depth=-1, max_concurrency=1)
    with pytest.raises(ValueError):
        Breaker(queue_depth=1, max_concurrency=1, initial_capacity=2)
