"""Memory of the gateway+activator under a queue and under overload: ``python -m benchmarks.overload``.

    python -m benchmarks.overload [--queued 10000] [--overload-seconds 10] [--overload-rate 1000]
        [--give-up-after 1.0] [--json-out FILE]

The gateway+activator (``python -m activator --backend file``) serves one revision that has no pod,
so every request waits in the activator's queue (Knative's breaker queue depth: 10,000).

1. *Queued*: ``--queued`` clients each open a connection and send one request, then wait. Once the
   activator reports them queued (its ``zeroscale_activator_request_queued`` gauge), its RSS is read:
   the extra memory over idle is the cost of the queue (goal: under 100 MB for 10,000). Then every
   client goes away, and the queue must empty (a client that leaves frees its place at once).
2. *Overload*: for ``--overload-seconds``, ``--overload-rate`` new clients a second send a request and
   give up after ``--give-up-after`` s without an answer (as impatient users and most HTTP clients do).
   Peak RSS over the run, RSS and queue length once the last client has left (no leak: back to ~0).

Bounded in count and time; 127.0.0.1 only; the gateway is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from .dataplane import machine
from .harness import Procs, UsageMeter, free_port, wait_port, write_json
from .paths import GATEWAY_HOST, PYTHON, QUIET

MB = 1024 * 1024

ROUTES = """\
domain: example.com
services:
  - {name: bench, namespace: default, latestRevision: bench-00001}
revisions:
  - {name: bench-00001, namespace: default, containerConcurrency: 0, endpoints: []}
"""


class _Waiter(asyncio.Protocol):
    """One client: sends its request, counts an answer (a refusal), otherwise just waits."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(  # type: ignore[attr-defined]
            f"GET / HTTP/1.1\r\nHost: {GATEWAY_HOST}\r\n\r\n".encode()
        )
        self.stats["sent"] += 1

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.stats["answered"] += 1
            if data.startswith(b"HTTP/1.1 503"):
                self.stats["refused"] += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def queued(admin_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("zeroscale_activator_request_queued{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _poll(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(cond):
            return True
        await asyncio.sleep(0.2)
    return False


async def phase_queued(port: int, admin: int, n: int, meter: UsageMeter) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = {"sent": 0, "answered": 0, "refused": 0}
    clients: list[_Waiter] = []
    t0 = time.monotonic()
    for start in range(0, n, 500):
        batch = [
            loop.create_connection(lambda: _Waiter(stats), "127.0.0.1", port)
            for _ in range(min(500, n - start))
        ]
        for res in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(res, tuple):
                clients.append(res[1])
    reached = await _poll(lambda: queued(admin) >= len(clients) - stats["refused"], 120)
    await asyncio.sleep(0.5)  # let the 50 ms RSS sampler see the settled queue
    held = await asyncio.to_thread(queued, admin)
    rss_queued = meter.peak_rss
    for c in clients:
        c.close()
    drained = await _poll(lambda: queued(admin) == 0, 60)
    return {
        "clients": len(clients),
        "queued_seen": held,
        "all_queued": reached,
        "refused": stats["refused"],
        "seconds_to_queue": round(time.monotonic() - t0, 2),
        "peak_rss_mb": round(rss_queued / MB, 1),
        "queue_empty_after_clients_left": drained,
    }


async def phase_overload(
    port: int, admin: int, seconds: float, rate: float, give_up: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = {"sent": 0, "answered": 0, "refused": 0}
    live: set[_Waiter] = set()
    t0 = time.monotonic()
    started = 0
    max_live = 0
    while time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) * rate) - started
        for _ in range(max(0, due)):
            started += 1
            try:
                _, w = await loop.create_connection(lambda: _Waiter(stats), "127.0.0.1", port)
            except OSError:
                continue
            live.add(w)

            def leave(w: _Waiter = w) -> None:
                w.close()
                live.discard(w)

            loop.call_later(give_up, leave)
        max_live = max(max_live, len(live))
        await asyncio.sleep(0.005)
    deadline = time.monotonic() + give_up + 5
    while live and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    drained = await _poll(lambda: queued(admin) == 0, 60)
    return {
        "clients": started,
        "answered": stats["answered"],
        "max_waiting_at_once": max_live,
        "queue_empty_at_end": drained,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--queued", type=int, default=10000)
    p.add_argument("--overload-seconds", type=float, default=10.0)
    p.add_argument("--overload-rate", type=float, default=1000.0, help="new clients per second")
    p.add_argument("--give-up-after", type=float, default=1.0)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if not (
        1 <= args.queued <= 15000 and 0 < args.overload_seconds <= 120 and 0 < args.overload_rate <= 5000
    ):
        p.error("--queued 1-15000, --overload-seconds up to 120, --overload-rate up to 5000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.queued + 2000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            p.error(f"--queued {args.queued} needs {need} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # the gateway inherits it
    started = datetime.now(UTC)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="zs-overload-") as tmpdir, Procs(Path(tmpdir)) as procs:
        tmp = Path(tmpdir)
        (tmp / "routes.yaml").write_text(ROUTES)
        port, admin = free_port(), free_port()
        gw = procs.start(
            [PYTHON, "-m", "activator", "--backend", "file", "--config", str(tmp / "routes.yaml"),
             "--port", str(port), "--admin-port", str(admin)],
            "gateway", {**QUIET, "AUTOSCALER_URL": ""},
        )  # fmt: skip
        wait_port(port, gw)
        wait_port(admin, gw)
        with UsageMeter(lambda: [gw.pid]) as meter:
            idle = meter.idle_rss
            q = _run(phase_queued(port, admin, args.queued, meter))
        q["extra_rss_mb"] = round(q["peak_rss_mb"] - idle / MB, 1)
        print(f"queued: {json.dumps(q)}", flush=True)
        with UsageMeter(lambda: [gw.pid]) as meter2:
            before = meter2.idle_rss
            o = _run(
                phase_overload(port, admin, args.overload_seconds, args.overload_rate, args.give_up_after)
            )
        o["rss_before_mb"] = round(before / MB, 1)
        o["peak_rss_mb"] = round(meter2.peak_rss / MB, 1)
        o["rss_after_mb"] = round(psutil.Process(gw.pid).memory_info().rss / MB, 1)
        print(f"overload: {json.dumps(o)}", flush=True)
        procs.stop(gw)
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "idle_rss_mb": round(idle / MB, 1),
        "queued": q,
        "overload": o,
        "settings": vars(args),
        "goal": {"10,000 queued: < 100 MB extra": q["extra_rss_mb"] < 100 if args.queued >= 10000 else None},
    }
    print(json.dumps(doc, indent=2))
    out = write_json(doc, "overload", started, args.json_out)
    print(f"JSON: {out}")
    return 0


def _run(coro: Any) -> dict[str, Any]:
    import uvloop

    result: dict[str, Any] = uvloop.run(coro)
    return result


if __name__ == "__main__":
    sys.exit(main())
