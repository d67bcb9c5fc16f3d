"""The local runtime with real processes: real queue-proxies in front of real apps, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from cluster.local import LocalRuntime, PodSettings, PodState, UnknownRevisionError
from serving.spec import Revision, RevisionHistory, load_services, parse_services
from serving.types import Endpoint, RevisionKey

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FAST = PodSettings(ready_timeout=30.0, drain_quiet_period=0.2, termination_grace=10.0, kill_grace=2.0)


async def until(
    cond: Callable[[], Awaitable[object] | object], timeout: float = 30.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def revision_of(text: str, base_dir: Path) -> Revision:
    return RevisionHistory().admit(parse_services(text, "test.yaml", base_dir=base_dir)[0])[0]


def service_yaml(name: str, command: list[str], **template_spec: object) -> str:
    doc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"command": command}], **template_spec}}},
    }
    return yaml.safe_dump(doc)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
async def runtime() -> AsyncIterator[LocalRuntime]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rt = LocalRuntime(FAST)
    try:
        yield rt
    finally:
        await rt.close(timeout=20)
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and alive(p.pid)]
        for p in left:
            p.kill()
        assert not left, f"processes left behind: {left}"


def pids_of(rt: LocalRuntime, key: RevisionKey) -> list[int]:
    """Every process of the revision's pods, what they spawned included."""
    out: list[int] = []
    for pod in rt.pods(key):
        for proc in (pod.user, pod.queue):
            if proc.pid is not None:
                out.append(proc.pid)
                try:
                    out += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
    return out


async def test_hello_scales_0_to_2_to_0_through_real_queue_proxies(runtime: LocalRuntime) -> None:
    revision = RevisionHistory().admit(load_services(ROOT / "examples/hello/service.yaml")[0])[0]
    key = revision.key
    runtime.add_revision(revision)
    seen: list[Sequence[Endpoint]] = []
    runtime.subscribe(key, seen.append)
    assert seen == [()]
    assert await runtime.ready_pods(key) == 0

    await runtime.scale(key, 2)
    assert runtime.desired(key) == 2
    assert len(runtime.endpoints(key)) == 2  # published at once, not ready yet
    await until(lambda: runtime.ready_pods(key), what="a first ready pod")
    await until(lambda: _eq(runtime.ready_pods(key), 2), what="two ready pods")
    endpoints = runtime.endpoints(key)
    assert all(e.ready and not e.terminating and e.host == "127.0.0.1" for e in endpoints)
    assert len({e.port for e in endpoints}) == 2
    async with httpx.AsyncClient() as client:
        for e in endpoints:
            r = await client.get(f"http://{e.address}/")
            assert r.status_code == 200
            assert r.text == "Hello zeroscale! (revision hello-00001)\n"
            # the queue-proxy's readiness answer, as the activator and kubelet see it
            r = await client.get(f"http://{e.address}/", headers={"K-Network-Probe": "queue"})
            assert (r.status_code, r.text) == (200, "queue")
    pids = pids_of(runtime, key)
    assert len(pids) >= 4

    await runtime.scale(key, 0)
    assert all(e.terminating and not e.ready for e in runtime.endpoints(key))  # out of traffic first
    await until(lambda: runtime.endpoints(key) == (), what="pods gone")
    assert seen[-1] == ()
    assert await runtime.ready_pods(key) == 0
    assert not [p for p in pids if alive(p)]
    assert runtime.failures(key) == []


async def _eq(aw: Awaitable[int], n: int) -> bool:
    return await aw == n


async def test_a_killed_user_process_is_replaced(runtime: LocalRuntime) -> None:
    revision = RevisionHistory().admit(load_services(ROOT / "examples/hello/service.yaml")[0])[0]
    key = revision.key
    runtime.add_revision(revision)
    await runtime.scale(key, 1)
    await until(lambda: _eq(runtime.ready_pods(key), 1), what="ready")
    [first] = runtime.pods(key)
    assert first.user.pid is not None
    os.kill(first.user.pid, signal.SIGKILL)
    await until(lambda: runtime.failures(key), what="the death reported")
    failure = runtime.failures(key)[0]
    assert (failure.pod, failure.reason) == (first.name, "user-container exited with code -9")
    assert any("listening on 127.0.0.1" in line for line in failure.output["user-container"])
    await until(
        lambda: [p for p in runtime.pods(key) if p.name != first.name and p.state is PodState.READY],
        what="a replacement ready",
    )
    assert first.queue.returncode is not None  # the dead pod's queue-proxy went with it
    assert [p.name for p in runtime.pods(key)] != [first.name]


async def test_a_pod_never_ready_is_reported_with_its_output_and_retried(tmp_path: Path) -> None:
    settings = PodSettings(ready_timeout=1.0, drain_quiet_period=0.1, kill_grace=1.0)
    cmd = ["python3", "-c", "print('warming up forever', flush=True); import time; time.sleep(60)"]
    revision = revision_of(service_yaml("slow", cmd), tmp_path)
    async with LocalRuntime(settings) as rt:
        rt.add_revision(revision)
        await rt.scale(revision.key, 1)
        await until(lambda: len(rt.failures(revision.key)) >= 2, what="two failed attempts")
        first, second = rt.failures(revision.key)[:2]
        assert first.reason == "not ready after 1 s"
        assert "warming up forever" in first.output["user-container"]
        assert "warming up forever" in first.describe()
        assert first.pod != second.pod
        assert second.at - first.at >= 0.5  # back-off between attempts
        assert await rt.ready_pods(revision.key) == 0
        pids = pids_of(rt, revision.key)
    assert not [p for p in pids if alive(p)]


async def test_a_crashing_app_backs_off_and_says_why(tmp_path: Path) -> None:
    cmd = ["python3", "-c", "import sys; print('DATABASE_URL is not set', file=sys.stderr); sys.exit(3)"]
    revision = revision_of(service_yaml("crash", cmd), tmp_path)
    async with LocalRuntime(FAST) as rt:
        rt.add_revision(revision)
        await rt.scale(revision.key, 1)
        await until(lambda: len(rt.failures(revision.key)) >= 3, what="three crashes")
        f = rt.failures(revision.key)
        assert f[0].reason == "user-container exited with code 3"
        assert f[0].output["user-container"] == ("DATABASE_URL is not set",)
        # 0.5 s, then 1 s between attempts
        assert f[1].at - f[0].at >= 0.5 and f[2].at - f[1].at >= 1.0


async def test_a_command_that_cannot_start(tmp_path: Path) -> None:
    revision = revision_of(service_yaml("nope", ["./does-not-exist.sh"]), tmp_path)
    async with LocalRuntime(FAST) as rt:
        rt.add_revision(revision)
        await rt.scale(revision.key, 1)
        await until(lambda: rt.failures(revision.key), what="the failure")
        assert rt.failures(revision.key)[0].reason.startswith("cannot start './does-not-exist.sh'")


SLOW_APP = """
import os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        print("got", self.path, flush=True)
        time.sleep(float(self.path.strip("/") or 0))
        body = b"done"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
def on_term(*_):
    print("SIGTERM", flush=True)
    threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGTERM, on_term)
server.serve_forever()
"""


async def test_scale_down_drains_in_flight_requests_before_stopping_the_app(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    (tmp_path / "slow.py").write_text(SLOW_APP)
    revision = revision_of(service_yaml("slow", ["python3", "slow.py"]), tmp_path)
    key = revision.key
    runtime.add_revision(revision)
    await runtime.scale(key, 1)
    await until(lambda: _eq(runtime.ready_pods(key), 1), what="ready")
    [pod] = runtime.pods(key)
    async with httpx.AsyncClient(timeout=30) as client:
        request = asyncio.create_task(client.get(f"http://{pod.endpoint.address}/1.5"))
        await until(lambda: "got /1.5" in pod.user.last_lines(), what="the request reached the app")
        await runtime.scale(key, 0)
        assert pod.state is PodState.TERMINATING and pod.endpoint.terminating
        r = await request
    assert (r.status_code, r.text) == (200, "done")
    await until(lambda: runtime.pods(key) == [], what="pod gone")
    assert pod.queue.returncode == 0  # drained and exited on its own
    assert "SIGTERM" in pod.user.last_lines()
    assert pod.queue.exited_at is not None and pod.user.exited_at is not None
    assert pod.queue.exited_at <= pod.user.exited_at  # the app is stopped only after the drain


async def test_close_stops_everything_even_what_the_app_spawned(runtime: LocalRuntime) -> None:
    doc = yaml.safe_load((ROOT / "examples/hello/service.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "sh",
        "-c",
        "sleep 300 & exec python3 app.py",
    ]
    revision = revision_of(yaml.safe_dump(doc), ROOT / "examples/hello")
    runtime.add_revision(revision)
    await runtime.scale(revision.key, 2)
    await until(lambda: _eq(runtime.ready_pods(revision.key), 2), what="ready")
    pids = pids_of(runtime, revision.key)
    names = {psutil.Process(p).name() for p in pids}
    assert "sleep" in names
    await runtime.close(timeout=20)
    assert not [p for p in pids if alive(p)]
    await runtime.close()  # twice is fine


async def test_close_while_pods_are_starting(tmp_path: Path) -> None:
    revision = RevisionHistory().admit(load_services(ROOT / "examples/hello/service.yaml")[0])[0]
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rt = LocalRuntime(FAST)
    rt.add_revision(revision)
    await rt.scale(revision.key, 3)
    await rt.close(timeout=10)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and alive(p.pid)]
    assert not left
    with pytest.raises(RuntimeError):
        rt.add_revision(revision)


async def test_unknown_revision_and_bad_scale(runtime: LocalRuntime) -> None:
    key = RevisionKey("default", "nope-00001")
    with pytest.raises(UnknownRevisionError):
        await runtime.scale(key, 1)
    with pytest.raises(UnknownRevisionError):
        await runtime.ready_pods(key)
    assert runtime.endpoints(key) == ()
    revision = RevisionHistory().admit(load_services(ROOT / "examples/hello/service.yaml")[0])[0]
    runtime.add_revision(revision)
    with pytest.raises(ValueError):
        await runtime.scale(revision.key, -1)
    await runtime.remove_revision(revision.key)
    assert runtime.revisions() == []


async def test_close_timeout_mid_drain_still_kills_every_process(tmp_path: Path) -> None:
    """A drain longer than close()'s timeout: the pods' stops are cut short, yet nothing outlives them."""
    (tmp_path / "slow.py").write_text(SLOW_APP)
    revision = revision_of(service_yaml("slow", ["python3", "slow.py"]), tmp_path)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rt = LocalRuntime(FAST)
    rt.add_revision(revision)
    await rt.scale(revision.key, 1)
    await until(lambda: _eq(rt.ready_pods(revision.key), 1), what="ready")
    [pod] = rt.pods(revision.key)
    pids = pids_of(rt, revision.key)
    async with httpx.AsyncClient(timeout=30) as client:
        request = asyncio.create_task(client.get(f"http://{pod.endpoint.address}/20"))
        await until(lambda: "got /20" in pod.user.last_lines(), what="a long request reached the app")
        await rt.close(timeout=1.0)  # the in-flight request would hold the drain for 20 s
        await until(lambda: not [p for p in pids if alive(p)], timeout=15, what="every process gone")
        request.cancel()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and alive(p.pid)]
    assert not left
