"""``scripts/demo``: a whole scale-from-zero cycle of ``zeroscale up`` in about a minute, on loopback.

It starts ``zeroscale up`` with examples/autoscale and the short windows of examples/demo, sends a
first request to the scaled-to-zero service (the cold start), drives 50 concurrent clients for 20 s
(with ``hey`` when installed, else :class:`cluster.up_load.LoadClient`) while printing the status,
waits for the service to return to zero, and stops ``up`` with Ctrl-C's signal. Every wait is
bounded; the exit code is 0 only when every step did what it should.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .control_client import format_status
from .up_load import LoadClient, get_once

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "examples" / "autoscale" / "service.yaml"
CONFIG = ROOT / "examples" / "demo" / "config.yaml"
HOST = "autoscale.default.example.com"
LOOPBACK = "127.0.0.1"


def _port(preferred: int) -> int:
    """``preferred`` when it is free on loopback, else any free port."""
    for candidate in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


class Demo:
    def __init__(
        self, load_seconds: float, clients: int, use_hey: bool, port: int = 8080, admin_port: int = 9081
    ) -> None:
        self.port = _port(port)
        self.admin_port = _port(admin_port)
        self.load_seconds = load_seconds
        self.clients = clients
        self.hey = shutil.which("hey") if use_hey else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.AsyncClient(timeout=10, trust_env=False)

    async def status(self) -> dict[str, Any]:
        r = await self.http.get(f"http://{LOOPBACK}:{self.admin_port}/v1/status")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    async def revision(self) -> dict[str, Any]:
        rev: dict[str, Any] = (await self.status())["services"][0]["revisions"][0]
        return rev

    def start_up(self) -> None:
        argv = [sys.executable, "-m", "cluster", "up", "-f", str(SERVICE), "--config", str(CONFIG)]
        argv += ["--port", str(self.port), "--admin-port", str(self.admin_port)]
        say("zeroscale up -f examples/autoscale/service.yaml --config examples/demo/config.yaml")
        print(
            f"    (gateway 127.0.0.1:{self.port}, control API 127.0.0.1:{self.admin_port}; its log follows)"
        )
        self.proc = subprocess.Popen(argv, cwd=ROOT)

    async def wait_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"zeroscale up exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                await self.status()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"zeroscale up did not answer within {timeout:g} s")
            await asyncio.sleep(0.2)

    async def cold_start(self) -> bool:
        say(
            f"first request to the scaled-to-zero service: curl -H 'Host: {HOST}' http://127.0.0.1:{self.port}/"
        )
        t0 = time.monotonic()
        status, body = await get_once(self.port, HOST, "/?sleep=10", timeout=60)
        text = body.decode(errors="replace").strip()
        print(f"    {status} after {time.monotonic() - t0:.2f} s (cold start): {text}")
        return status == 200

    async def load(self) -> bool:
        path = "/?sleep=500"
        url = f"http://127.0.0.1:{self.port}{path}"
        if self.hey:
            say(f"hey -z {self.load_seconds:g}s -c {self.clients} -host {HOST} '{url}'")
            proc = await asyncio.create_subprocess_exec(
                self.hey, "-z", f"{self.load_seconds:g}s", "-c", str(self.clients), "-host", HOST, url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            read = asyncio.create_task(proc.communicate())
            await self._watch(self.load_seconds)
            out = (await asyncio.wait_for(read, timeout=60))[0].decode(errors="replace")
            lines = out.splitlines()
            keep = [
                ln for ln in lines if "Requests/sec" in ln or "Average" in ln or ln.strip().startswith("[")
            ]
            print("    hey: " + "; ".join(ln.strip() for ln in keep))
            codes = [ln.strip() for ln in lines if ln.strip().startswith("[")]
            return proc.returncode == 0 and bool(codes) and all(c.startswith("[200]") for c in codes)
        say(f"{self.clients} clients for {self.load_seconds:g} s (built-in client; hey when installed)")
        client = LoadClient(self.port, HOST, path, workers=self.clients, max_seconds=self.load_seconds)
        client.start()
        await self._watch(self.load_seconds)
        await client.wait()
        print(f"    load: {client.summary()}")
        return client.failed == 0 and client.sent > 0

    async def _watch(self, seconds: float) -> None:
        start = time.monotonic()
        for _ in range(int(seconds / 3) + 1):
            await asyncio.sleep(3)
            rev = await self.revision()
            conc = rev["concurrency"]
            print(
                f"    t={time.monotonic() - start:4.1f}s  pods desired {rev['desired_pods']}, ready "
                f"{rev['ready_pods']}; concurrency {'-' if conc is None else f'{conc:.1f}'}; "
                f"panic {'on' if rev['panic'] else 'off'}; "
                f"activator {'in' if rev['activator_in_path'] else 'out of'} path",
                flush=True,
            )
            if time.monotonic() - start >= seconds:
                break

    async def back_to_zero(self, timeout: float = 60.0) -> bool:
        say("load stopped: watching the revision go back to zero (6 s stable window + 2 s grace here)")
        start = time.monotonic()
        last = None
        while time.monotonic() - start < timeout:
            rev = await self.revision()
            now = (rev["desired_pods"], rev["ready_pods"], rev["pods"])
            if now != last:
                print(
                    f"    t={time.monotonic() - start:4.1f}s  pods desired {now[0]}, ready {now[1]}",
                    flush=True,
                )
                last = now
            if now[1] == 0 and now[2] == 0:
                print(f"    back to zero {time.monotonic() - start:.1f} s after the load stopped")
                return True
            await asyncio.sleep(1)
        return False

    def stop_up(self, timeout: float = 40.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            say("Ctrl-C: zeroscale up drains and stops its pods")
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10) or 1

    async def run(self) -> bool:
        started = time.monotonic()
        self.start_up()
        ok = True
        try:
            await self.wait_up()
            say("zeroscale status")
            print(format_status(await self.status()))
            ok = await self.cold_start() and ok
            ok = await self.load() and ok
            ok = await self.back_to_zero() and ok
            say("zeroscale status")
            print(format_status(await self.status()))
        finally:
            await self.http.aclose()
            code = await asyncio.to_thread(self.stop_up)
            print(f"    zeroscale up exited with {code}; the demo took {time.monotonic() - started:.0f} s")
            ok = ok and code == 0
        return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="how long the load runs (default 20)")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--port", type=int, default=8080, help="gateway port (another free one if taken)")
    p.add_argument("--admin-port", type=int, default=9081, help="control API port (another if taken)")
    p.add_argument(
        "--no-hey", action="store_true", help="use the built-in load client even if hey is installed"
    )
    a = p.parse_args(argv)
    if not 1 <= a.clients <= 500 or not 1 <= a.seconds <= 300:
        p.error("--clients must be 1-500 and --seconds 1-300")
    demo = Demo(a.seconds, a.clients, use_hey=not a.no_hey, port=a.port, admin_port=a.admin_port)
    try:
        ok = asyncio.run(demo.run())
    except KeyboardInterrupt:
        demo.stop_up()
        return 130
    except (RuntimeError, OSError, httpx.HTTPError) as e:
        print(f"demo: {e}", file=sys.stderr)
        demo.stop_up()
        return 1
    print("\ndemo: " + ("every step worked" if ok else "some step failed (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
