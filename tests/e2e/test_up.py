"""`zeroscale up` end to end: a real `python -m cluster up` with real pods, driven over loopback.

Scale from zero on the first request, 50 clients bring the autoscale app (target 10) to about 5 pods,
no traffic takes it back to zero (short windows from examples/demo/config.yaml), SIGINT and SIGTERM
leave no process behind, a bad file at start-up stops it with exit code 2 naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from cluster.up_load import LoadClient, get_once
from tests.conftest import free_port
from tests.util import until

ROOT = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable
DEMO_CONFIG = ROOT / "examples" / "demo" / "config.yaml"
AUTOSCALE = ROOT / "examples" / "autoscale" / "service.yaml"
AUTOSCALE_HOST = "autoscale.default.example.com"
HELLO = ROOT / "examples" / "hello" / "service.yaml"


def _revision(status: dict[str, Any], service: str, name: str | None) -> dict[str, Any]:
    for svc in status["services"]:
        if svc["name"] == service:
            return next(r for r in svc["revisions"] if name is None or r["name"] == name)
    raise AssertionError(f"service {service} not in status")


class UpProcess:
    """One `zeroscale up` child; its stderr goes to a file (read on failure), its pods are tracked."""

    def __init__(self, *args: str | Path) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="zeroscale-up-", suffix=".log", delete=False)
        argv = [PYTHON, "-m", "cluster", "up", *map(str, args)]
        argv += ["--port", str(self.port), "--admin-port", str(self.admin_port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.seen: dict[int, psutil.Process] = {}
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def track(self) -> list[psutil.Process]:
        """Remember every descendant alive now (pods are children of `up`; orphans cannot be found later)."""
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        return list(self.seen.values())

    def status(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.admin_port}/v1/status", timeout=10, trust_env=False)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    async def astatus(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
            r = await c.get(f"http://127.0.0.1:{self.admin_port}/v1/status")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    async def arevision(self, service: str, name: str | None = None) -> dict[str, Any]:
        return _revision(await self.astatus(), service, name)

    async def poll(self, pred: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
        """Wait for an async condition (status over HTTP without blocking the loop's clients)."""
        deadline = time.monotonic() + timeout
        while not await pred():
            if self.proc.poll() is not None:
                raise AssertionError(f"zeroscale up exited with {self.proc.returncode} while waiting: {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s: {what}")
            await asyncio.sleep(0.25)

    def revision(self, service: str, name: str | None = None) -> dict[str, Any]:
        return _revision(self.status(), service, name)

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        argv = [PYTHON, "-m", "cluster", *map(str, args), "--admin-port", str(self.admin_port)]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)

    async def wait_up(self, timeout: float = 30.0) -> None:
        def answering() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"zeroscale up exited with {self.proc.returncode}:\n{self.log}")
            try:
                self.status()
            except httpx.HTTPError:
                return False
            return True

        await until(answering, timeout=timeout, interval=0.1, what="control API answers")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.track()
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        try:
            if self.proc.poll() is None:
                self.stop(signal.SIGTERM, timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            for p in self.seen.values():
                with contextlib.suppress(psutil.Error):
                    if p.is_running():
                        p.kill()
            self._log.close()
            os.unlink(self._log.name)


@contextlib.contextmanager
def up_process(*args: str | Path) -> Iterator[UpProcess]:
    up = UpProcess(*args)
    try:
        yield up
    except BaseException:
        sys.stderr.write(f"--- zeroscale up log ---\n{up.log}\n")
        raise
    finally:
        up.cleanup()


@contextlib.asynccontextmanager
async def client(up: UpProcess, host: str, limit: int = 100) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(
        base_url=up.base, headers={"Host": host}, timeout=30, trust_env=False, limits=limits
    ) as c:
        yield c


async def test_scale_from_zero_to_about_five_pods_and_back_to_zero() -> None:
    with up_process("-f", AUTOSCALE, "--config", DEMO_CONFIG) as up:
        await up.wait_up()
        rev = up.revision("autoscale")
        assert (rev["desired_pods"], rev["ready_pods"]) == (0, 0)  # initial-scale 0: nothing runs yet
        t0 = time.monotonic()
        status, body = await get_once(up.port, AUTOSCALE_HOST, "/?sleep=10")
        cold = time.monotonic() - t0
        assert status == 200, body
        # 50 clients each with a request of 0.5 s in flight: 50 in flight, 100 requests a second.
        load = LoadClient(up.port, AUTOSCALE_HOST, "/?sleep=500", workers=50, max_seconds=60)
        load.start()

        async def five_pods() -> bool:
            return bool((await up.arevision("autoscale"))["ready_pods"] >= 4)

        try:
            await up.poll(five_pods, timeout=45, what="about 5 pods under 50 clients")
            peak = await up.arevision("autoscale")
            up.track()
        finally:
            await load.stop()
        assert 4 <= peak["desired_pods"] <= 6, peak
        assert load.failed == 0, load.statuses
        assert "scaling 0 -> 1" in up.log
        t1 = time.monotonic()

        async def zero() -> bool:
            rev = await up.arevision("autoscale")
            return bool(rev["ready_pods"] == 0 and rev["pods"] == 0)

        await up.poll(zero, timeout=60, what="back to zero pods")
        to_zero = time.monotonic() - t1
        assert "scaled to zero" in up.log
        print(f"cold start {cold:.2f} s; {load.sent} requests; back to zero {to_zero:.1f} s after the load")
        assert up.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
async def test_a_signal_stops_everything_and_exits_0(sig: int) -> None:
    with up_process("-f", HELLO) as up:
        await up.wait_up()
        async with client(up, "hello.default.example.com") as c:
            r = await c.get("/")
            assert r.status_code == 200 and "hello-00001" in r.text
        await until(lambda: len(up.track()) >= 2, timeout=10, what="a pod's processes are seen")
        children = up.track()
        assert up.stop(sig) == 0
        alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [p.cmdline() for p in alive]
        assert "zeroscale up: stopped" in up.log


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        pytest.param("containers:\n        - image: nginx", "containers[0].command", id="image-only"),
        pytest.param(
            "containers:\n        - command: [python3, app.py]\n          bogus: 1",
            "containers[0].bogus",
            id="unknown-field",
        ),
    ],
)
def test_a_bad_service_file_stops_start_up_with_exit_2_naming_the_field(
    tmp_path: Path, doc: str, field: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: bad\n"
        f"spec:\n  template:\n    spec:\n      {doc}\n"
    )
    argv = [PYTHON, "-m", "cluster", "up", "-f", str(f), "--port", "0", "--admin-port", "0"]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert field in r.stderr and "bad.yaml" in r.stderr


def test_a_bad_configmap_stops_start_up_with_exit_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n"
        'data:\n  stable-window: "2s"\n'
    )
    argv = [PYTHON, "-m", "cluster", "up", "-f", str(HELLO), "--config", str(cfg), "--port", "0"]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "stable-window" in r.stderr, r.stderr


async def test_stop_lets_requests_finish_and_a_second_signal_cuts_the_wait() -> None:
    with up_process("-f", AUTOSCALE) as up:  # Knative's defaults: one pod at creation
        await up.wait_up()

        async def ready() -> bool:
            return bool((await up.arevision("autoscale"))["ready_pods"] == 1)

        await up.poll(ready, timeout=30, what="the first pod is ready")
        long = asyncio.create_task(get_once(up.port, AUTOSCALE_HOST, "/?sleep=60000", timeout=90))
        short = asyncio.create_task(get_once(up.port, AUTOSCALE_HOST, "/?sleep=3000", timeout=90))

        async def in_flight() -> bool:
            return bool(((await up.arevision("autoscale"))["concurrency"] or 0) > 0)

        await up.poll(in_flight, timeout=30, what="the autoscaler sees the requests in flight")
        up.track()
        up.proc.send_signal(signal.SIGINT)
        status, _ = await asyncio.wait_for(short, timeout=30)
        assert status == 200  # the drain let it finish
        assert up.proc.poll() is None  # still draining: the long request is in flight
        t0 = time.monotonic()
        up.proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.proc.wait, 30) == 0
        assert time.monotonic() - t0 < 20
        with contextlib.suppress(Exception):
            await asyncio.wait_for(long, timeout=10)  # cut: an error or a 5xx, but no hang
        assert long.done()
        alive = [p for p in up.seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [p.cmdline() for p in alive]
        assert "second signal" in up.log


async def test_delete_drains_requests_and_the_name_is_free_again_once_the_pods_are_gone() -> None:
    with up_process("-f", AUTOSCALE) as up:
        await up.wait_up()

        async def ready() -> bool:
            return bool((await up.arevision("autoscale"))["ready_pods"] == 1)

        await up.poll(ready, timeout=30, what="the first pod is ready")
        slow = asyncio.create_task(get_once(up.port, AUTOSCALE_HOST, "/?sleep=4000", timeout=60))

        async def in_flight() -> bool:
            return bool(((await up.arevision("autoscale"))["concurrency"] or 0) > 0)

        await up.poll(in_flight, timeout=30, what="the request is in flight")
        r = await asyncio.to_thread(up.cli, "delete", "autoscale")
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(up.cli, "apply", "-f", AUTOSCALE)
        assert r.returncode == 1 and "still draining" in r.stderr, (r.stdout, r.stderr)
        status, _ = await asyncio.wait_for(slow, timeout=30)
        assert status == 200  # the deleted revision's pod finished it before going
        await until(lambda: "revision default/autoscale-00001: removed" in up.log, timeout=30)
        r = await asyncio.to_thread(up.cli, "apply", "-f", AUTOSCALE)
        assert r.returncode == 0 and "autoscale-00001 created" in r.stdout, r.stderr
        status, body = await get_once(up.port, AUTOSCALE_HOST, "/?sleep=1", timeout=60)
        assert status == 200, body
