"""Queue-proxies forked from the zygote (cluster.local_standby, cluster.local_zygote) in the real local
runtime: real processes, real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from cluster import local_standby
from cluster.local import LocalRuntime
from cluster.local_pod import PROJECT_ROOT, queue_base_env
from cluster.local_process import PortAllocator
from cluster.local_standby import Backoff, StandbyPool
from cluster.local_zygote import CODE_WAIT, ForkedProcess, Zygote
from serving.spec import Revision, RevisionHistory, load_services
from tests.cluster.test_local import FAST, _eq, alive, until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def hello() -> Revision:
    return RevisionHistory().admit(load_services(ROOT / "examples/hello/service.yaml")[0])[0]


def qp_env() -> dict[str, str]:
    """A queue-proxy's environment on free loopback ports (in front of no app)."""
    ports = PortAllocator()
    names = ("QUEUE_SERVING", "QUEUE_ADMIN", "QUEUE_METRICS", "USER_METRICS", "USER")
    return {
        **queue_base_env(os.environ),
        **{f"{name}_PORT": str(ports.take()) for name in names},
        "QUEUE_BIND_ADDRESS": "127.0.0.1",
    }


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def orphans() -> list[int]:
    """Pids of queue-proxies whose zygote a test killed: no longer our descendants, still ours to stop."""
    return []


@pytest.fixture
async def runtime(orphans: list[int]) -> AsyncIterator[LocalRuntime]:
    """The runtime; afterwards nothing it started may be left: its children, the zygote's children
    (ours while the zygote lives), and queue-proxies orphaned by a killed zygote."""
    before = descendants()
    rt = LocalRuntime(FAST)
    try:
        yield rt
    finally:
        await rt.close(timeout=20)
        left = [p for p in (descendants() | set(orphans)) - before if alive(p)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind (the zygote's included): {left}"


async def ready_pool(rt: LocalRuntime) -> StandbyPool:
    pool = rt.standby
    assert pool is not None
    await until(lambda: pool.idle == 1, what="the zygote ready")
    return pool


async def test_a_pod_gets_a_queue_proxy_forked_by_the_zygote_which_drains_to_exit_0(
    runtime: LocalRuntime,
) -> None:
    revision = hello()
    key = revision.key
    runtime.add_revision(revision)
    pool = await ready_pool(runtime)
    [zygote_pid] = pool.idle_pids()

    await runtime.scale(key, 1)
    await until(lambda: _eq(runtime.ready_pods(key), 1), what="ready")
    [pod] = runtime.pods(key)
    assert isinstance(pod.queue, ForkedProcess)
    assert pod.queue.pid is not None and psutil.Process(pod.queue.pid).ppid() == zygote_pid
    assert pod.queue.name == f"{pod.name}/queue-proxy"
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{pod.endpoint.address}/")
    assert r.status_code == 200 and r.text.startswith("Hello zeroscale!")
    assert any(f"serving on 127.0.0.1:{pod.ports.serving}" in line for line in pod.queue.last_lines())
    assert (pool.taken, pool.missed, pool.idle_pids()) == (1, 0, [zygote_pid])  # the zygote stays

    await runtime.scale(key, 0)
    await until(lambda: runtime.endpoints(key) == (), what="pod gone")
    assert pod.queue.returncode == 0  # drained on SIGTERM; the code as the zygote reaped it
    assert "SIGTERM: draining" in " ".join(pod.queue.last_lines())
    assert not alive(pod.queue.pid)


async def test_a_pod_that_comes_while_the_zygote_imports_waits_for_it(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_standby, "START_WAIT", 30.0)  # however slow the imports are here
    revision = hello()
    key = revision.key
    runtime.add_revision(revision)
    await runtime.scale(key, 2)  # at once: the zygote has only just been started
    await until(lambda: _eq(runtime.ready_pods(key), 2), what="ready")
    pool = runtime.standby
    assert pool is not None and (pool.taken, pool.missed, pool.starts) == (2, 0, 1)
    assert all(isinstance(p.queue, ForkedProcess) for p in runtime.pods(key))


async def test_many_pods_at_once_all_get_forked_queue_proxies(runtime: LocalRuntime) -> None:
    revision = hello()
    key = revision.key
    runtime.add_revision(revision)
    pool = await ready_pool(runtime)
    await runtime.scale(key, 4)
    await until(lambda: _eq(runtime.ready_pods(key), 4), what="four ready", timeout=60)
    assert all(isinstance(p.queue, ForkedProcess) for p in runtime.pods(key))
    assert (pool.taken, pool.missed) == (4, 0)
    assert len({p.queue.pid for p in runtime.pods(key)}) == 4


async def test_a_killed_forked_queue_proxy_is_seen_dead_with_its_code(runtime: LocalRuntime) -> None:
    revision = hello()
    key = revision.key
    runtime.add_revision(revision)
    await ready_pool(runtime)
    await runtime.scale(key, 1)
    await until(lambda: _eq(runtime.ready_pods(key), 1), what="ready")
    [first] = runtime.pods(key)
    assert first.queue.pid is not None
    os.kill(first.queue.pid, signal.SIGKILL)
    await until(lambda: runtime.failures(key), what="the death reported")
    failure = runtime.failures(key)[0]
    assert (failure.pod, failure.reason) == (first.name, "queue-proxy exited with code -9")
    await until(
        lambda: [p for p in runtime.pods(key) if p.name != first.name and p.endpoint.ready],
        what="a replacement ready",
    )


async def test_a_killed_zygote_orphans_nothing_and_is_started_again(
    runtime: LocalRuntime, orphans: list[int]
) -> None:
    revision = hello()
    key = revision.key
    runtime.add_revision(revision)
    pool = await ready_pool(runtime)
    [zygote_pid] = pool.idle_pids()
    await runtime.scale(key, 1)
    await until(lambda: _eq(runtime.ready_pods(key), 1), what="ready")
    [first] = runtime.pods(key)
    assert isinstance(first.queue, ForkedProcess) and first.queue.pid is not None
    orphans.append(first.queue.pid)

    os.kill(zygote_pid, signal.SIGKILL)
    await until(lambda: pool.idle == 0, what="the zygote seen dead")
    # its queue-proxy keeps serving
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{first.endpoint.address}/")
    assert r.status_code == 200
    # a pod started meanwhile gets a queue-proxy all the same (its own, or from a new zygote)
    await runtime.scale(key, 2)
    await until(lambda: _eq(runtime.ready_pods(key), 2), what="a second pod ready")
    assert pool.taken + pool.missed == 2
    # and the zygote is back, after its back-off
    await until(lambda: pool.idle == 1 and pool.idle_pids() != [zygote_pid], what="a new zygote")
    assert pool.starts == 2

    # the orphan's exit is still seen (pidfd), with an unknown code
    os.kill(first.queue.pid, signal.SIGKILL)
    await until(lambda: first.queue.returncode is not None, what="the orphan's exit seen")
    assert first.queue.returncode == -1
    assert "exit code unknown (its zygote is gone)" in first.queue.last_lines()[-1]
    await until(lambda: first.failure is not None, what="the pod failed")
    assert first.failure is not None and first.failure.reason == "queue-proxy exited with code -1"


async def test_close_stops_the_zygote_and_every_forked_queue_proxy(runtime: LocalRuntime) -> None:
    revision = hello()
    key = revision.key
    runtime.add_revision(revision)
    pool = await ready_pool(runtime)
    [zygote_pid] = pool.idle_pids()
    await runtime.scale(key, 2)
    await until(lambda: _eq(runtime.ready_pods(key), 2), what="ready")
    pods = runtime.pods(key)
    assert len(pool.forked()) == 2
    await runtime.close(timeout=20)
    assert not alive(zygote_pid) and not [p for p in pods if p.queue.pid is not None and alive(p.queue.pid)]
    # drained, and closed after its pods the zygote still reported their exit codes
    assert [p.queue.returncode for p in pods] == [0, 0]
    assert pool.forked() == []


async def test_warm_starts_the_zygote_before_any_revision_and_waits_for_it(runtime: LocalRuntime) -> None:
    assert runtime.standby is None and runtime.revisions() == []
    assert await runtime.warm(30.0)  # what `zeroscale up` waits for before it says it serves
    pool = runtime.standby
    assert pool is not None and pool.idle == 1 and pool.starts == 1
    assert await runtime.warm(30.0) and pool.starts == 1  # once is enough


async def test_no_pool_when_turned_off() -> None:
    settings = dataclasses.replace(FAST, queue_proxy_zygote=False)
    async with LocalRuntime(settings) as rt:
        revision = hello()
        rt.add_revision(revision)
        assert rt.standby is None
        key = revision.key
        await rt.scale(key, 1)
        await until(lambda: _eq(rt.ready_pods(key), 1), what="ready without a zygote")
        [pod] = rt.pods(key)
        assert not isinstance(pod.queue, ForkedProcess)
        assert not await rt.warm(1.0)


async def test_other_interpreter_variables_get_no_forked_queue_proxy() -> None:
    pool = StandbyPool(python=sys.executable, env=queue_base_env(os.environ), cwd=PROJECT_ROOT)
    try:
        pool.fill()
        await until(lambda: pool.idle == 1, what="the zygote ready")
        env = {**queue_base_env(os.environ), "PYTHONOPTIMIZE": "2"}
        assert await pool.take("p/queue-proxy", env) is None
        assert (pool.taken, pool.missed) == (0, 1)
    finally:
        await pool.close()


async def test_a_late_answer_from_a_hung_zygote_leaves_no_process(caplog: pytest.LogCaptureFixture) -> None:
    z = Zygote(python=sys.executable, env=queue_base_env(os.environ), cwd=PROJECT_ROOT)
    assert await z.start() is None
    assert z.pid is not None
    zygote = psutil.Process(z.pid)
    try:
        os.kill(z.pid, signal.SIGSTOP)
        env = qp_env()
        assert await z.fork("late/queue-proxy", env, timeout=0.3) == "no answer from the zygote within 0.3 s"
        os.kill(z.pid, signal.SIGCONT)
        env["QUEUE_SERVING_PORT"] = "eighty"
        child = await z.fork("next/queue-proxy", env)  # the zygote still serves
        assert isinstance(child, ForkedProcess)
        assert await child.wait(30) == 2  # QUEUE_SERVING_PORT=eighty: the usual configuration error
        assert any("QUEUE_SERVING_PORT" in line for line in child.last_lines())
        # It answered the late request first (in order): nobody waited for that child any more, so
        # it was killed at once.
        assert "forked pid" in caplog.text and "after its request gave up: killing it" in caplog.text
        await until(lambda: not [c for c in zygote.children() if alive(c.pid)], what="the late child killed")
        assert z.children() == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(z.pid, signal.SIGCONT)
        with contextlib.suppress(psutil.NoSuchProcess):
            for c in zygote.children():
                c.kill()
        z.kill_now()
        await z.close()
    assert not alive(zygote.pid)


@pytest.mark.parametrize(
    ("lived", "delays"),
    [
        pytest.param([0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 4, 8, 16, 32, 60, 60], id="doubling-to-the-cap"),
        pytest.param([0, 0, 61, 0], [1, 2, 1, 2], id="a-healthy-life-resets-it"),
    ],
)
def test_backoff(lived: list[float], delays: list[float]) -> None:
    b = Backoff(first=1.0, most=60.0, healthy=60.0)
    assert [b.died(t) for t in lived] == delays


async def test_a_zygote_that_cannot_start_is_retried_after_the_backoff_only() -> None:
    now = [100.0]
    pool = StandbyPool(
        python="/no/such/python",
        env=queue_base_env(os.environ),
        cwd=PROJECT_ROOT,
        backoff=Backoff(first=1000.0),
        clock=lambda: now[0],
    )
    try:
        pool.fill()
        await until(lambda: pool._starting is None and pool.starts == 1, what="the first attempt done")
        pool.fill()
        assert pool._starting is None and pool.starts == 1  # not again before the back-off
        now[0] += 1000.0
        pool.fill()
        await until(lambda: pool.starts == 2, what="the second attempt")
        assert pool.idle == 0 and await pool.take("p/queue-proxy", queue_base_env(os.environ)) is None
    finally:
        await pool.close()


async def test_an_exit_the_zygote_does_not_report_is_seen_by_the_pidfd() -> None:
    z = Zygote(python=sys.executable, env=queue_base_env(os.environ), cwd=PROJECT_ROOT)
    assert await z.start() is None
    assert z.pid is not None
    zygote_pid = z.pid
    try:
        child = await z.fork("quiet/queue-proxy", qp_env())
        assert isinstance(child, ForkedProcess) and child.pid is not None
        await until(lambda: any("serving on" in line for line in child.last_lines()), what="serving")
        os.kill(zygote_pid, signal.SIGSTOP)  # alive, but reaps and reports nothing
        os.kill(child.pid, signal.SIGKILL)
        assert await child.wait(30) == -1  # its -9 is not known: -1, and said so
        assert (
            f"exit code unknown (its zygote reported none within {CODE_WAIT:g} s)" in child.last_lines()[-1]
        )
        assert any("serving on" in line for line in child.last_lines())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(zygote_pid, signal.SIGCONT)
        z.kill_now()
        await z.close()
    assert not alive(zygote_pid)
