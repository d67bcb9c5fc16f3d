"""Where the queue-proxy's cost comes from: ``python -m benchmarks.floor``.

    python -m benchmarks.floor [--rounds 3] [--duration 4] [--rate 1000] [--json-out FILE]

Five proxies in front of the same trivial app, measured the same way in interleaved rounds:

* ``splice``: the least a Python proxy on asyncio protocols and uvloop can do. Every client connection
  gets its own upstream connection, and bytes are relayed as they come, in the protocols' callbacks,
  without parsing HTTP: no task, no future, no pool, no timeouts. It is not a usable proxy (one
  upstream connection per client, nothing checked); it is the floor.
* ``callbacks``: the splice plus what an HTTP proxy must do per message, still in the callbacks
  only: httptools parses the request and the answer, the request's head is written anew upstream
  and the answer's head anew to the client (keep-alive both ways, one upstream connection per
  client). No task, no future. The floor under the engine's own callback-only path (below).
* ``engine-tasks``: zeroscale's HTTP engine with nothing on top (``serving.httpserver.serve`` and
  ``serving.upstream.forward``), every request in a handler task: httptools parsing both ways, a
  keep-alive pool, streamed bodies with backpressure, errors answered.
* ``engine``: the same with the engine's callback-only fast path on, as the queue-proxy runs it
  (``HttpServer.fast`` with ``serving.upstream.forward_fast``): a body-less GET over a free pooled
  connection whose answer comes in one read takes no task; anything else still does.
* ``queue-proxy``: the real process (``python -m queueproxy``), the engine plus Knative's handler
  (probes, stats, drain bookkeeping, timeouts, metrics, header rewrite).

For each: CPU microseconds per request at saturation (``wrk -t1 -c50``, user + system of the proxy
process) and the latency it adds at an evenly spaced ``--rate`` to the app's 100 ms ``/slow`` (p50
minus the app's own, measured alone in the same rounds). The difference between two rows is what
the layer between them costs. Needs wrk for the saturation half (skipped without it). Bounded: each
load lasts ``--duration`` seconds; everything listens on 127.0.0.1; every process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from .harness import PYTHON, Procs, free_port, wait_port, write_json
from .loadgen import fixed_rate
from .paths import queue_proxy, start_upstream

# -- the two reference proxies, each run as `python -m benchmarks.floor --serve KIND PORT UPSTREAM` ------


class _SpliceUp(asyncio.Protocol):
    def __init__(self, client: _SpliceClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None:
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _SpliceClient(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.up: _SpliceUp | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []  # bounded in practice: a client waits for its first answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(self._connect(loop))

    def _up_protocol(self) -> _SpliceUp:
        return _SpliceUp(self)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, up = await loop.create_connection(self._up_protocol, *self.upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        self.up = up
        assert up.transport is not None
        for data in self.pending:
            up.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.up is None or self.up.transport is None:
            self.pending.append(data)
        else:
            self.up.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()


class _ParsedUp(_SpliceUp):
    """The upstream side of ``callbacks``: parse each answer, write it to the client in one piece."""

    def __init__(self, client: _SpliceClient) -> None:
        import httptools

        super().__init__(client)
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in (b"connection", b"keep-alive", b"transfer-encoding", b"content-length"):
            self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        status = self.parser.get_status_code()
        head = b"HTTP/1.1 %d OK\r\n%scontent-length: %d\r\n\r\n" % (status, b"".join(self.headers), len(body))
        self.headers, self.body = [], []
        if self.client.transport is not None:
            self.client.transport.write(head + body)


class _ParsedClient(_SpliceClient):
    """The client side of ``callbacks``: parse each request, write its head anew upstream."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import httptools

        super().__init__(upstream)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[bytes] = []
        self.host = b"%s:%d" % (upstream[0].encode(), upstream[1])

    def _up_protocol(self) -> _SpliceUp:
        return _ParsedUp(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in (b"host", b"connection", b"keep-alive"):
            self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (
            self.parser.get_method(),
            self.url,
            self.host,
            b"".join(self.headers),
        )
        self.url, self.headers = b"", []
        super().data_received(head)


async def _serve(kind: str, port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    if kind == "splice":
        await loop.create_server(lambda: _SpliceClient(("127.0.0.1", upstream_port)), "127.0.0.1", port)
    elif kind == "callbacks":
        await loop.create_server(lambda: _ParsedClient(("127.0.0.1", upstream_port)), "127.0.0.1", port)
    else:
        from serving.httpserver import FastRequest, Request, Responder, serve
        from serving.upstream import Upstream, forward, forward_fast

        pool = Upstream("127.0.0.1", upstream_port, max_idle=1000)

        async def handler(req: Request, resp: Responder) -> None:
            await forward(req, resp, pool, list(req.headers.items))

        def fast(req: Request, resp: Responder, marker: FastRequest) -> bool:
            return forward_fast(req, resp, pool, req.headers.items, marker) is not None

        server = await serve(handler, "127.0.0.1", port)
        if kind == "engine":
            server.fast = fast
    await asyncio.Event().wait()


# -- the measurement ---------------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _wrk(port: int, seconds: float) -> int:
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{max(1, round(seconds))}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise RuntimeError(f"cannot read wrk's output: {out[-300:]!r}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        import uvloop

        kind, port, upstream = argv[1], int(argv[2]), int(argv[3])
        uvloop.run(_serve(kind, port, upstream))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0, help="seconds of each load")
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if not (1 <= args.rounds <= 20 and 1 <= args.duration <= 60 and 10 <= args.rate <= 5000):
        p.error("--rounds 1-20, --duration 1-60, --rate 10-5000")
    have_wrk = shutil.which("wrk") is not None
    started = datetime.now(UTC)
    kinds = ("splice", "callbacks", "engine-tasks", "engine", "queue-proxy")
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    p50: dict[str, list[float]] = {"direct": [], **{k: [] for k in cpu}}
    errors = dict.fromkeys(p50, 0)
    with (
        tempfile.TemporaryDirectory(prefix="zs-floor-") as tmp,
        Procs(Path(tmp)) as procs,
        contextlib.ExitStack() as stack,
    ):
        up, _ = start_upstream(procs)
        ports: dict[str, tuple[int, int]] = {}
        for kind in kinds[:-1]:
            port = free_port()
            proc = procs.start([PYTHON, "-m", "benchmarks.floor", "--serve", kind, str(port), str(up)], kind)
            wait_port(port, proc)
            ports[kind] = (port, proc.pid)
        # the same queue-proxy as the dataplane benchmark's path of that name
        qp = stack.enter_context(queue_proxy(procs, up, Path(tmp)))
        [qp_pid] = qp.pids()
        ports["queue-proxy"] = (qp.port, qp_pid)
        for r in range(args.rounds):
            res = fixed_rate(up, rate=args.rate, duration=args.duration)
            p50["direct"].append(res.p50_ms)
            errors["direct"] += res.errors
            for kind, (port, pid) in ports.items():
                if have_wrk:
                    before = _cpu(pid)
                    n = _wrk(port, args.duration)
                    cpu[kind].append((_cpu(pid) - before) / max(n, 1) * 1e6)
                res = fixed_rate(port, rate=args.rate, duration=args.duration)
                p50[kind].append(res.p50_ms)
                errors[kind] += res.errors
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    direct = statistics.median(p50["direct"])
    rows: dict[str, dict[str, Any]] = {}
    for kind in cpu:
        rows[kind] = {
            "cpu_us_per_request": round(statistics.median(cpu[kind]), 1) if cpu[kind] else None,
            "added_p50_ms": round(statistics.median(p50[kind]) - direct, 3),
            "errors_at_rate": errors[kind],
        }
    print(f"\n{'proxy':<14}{'CPU us/req at c=50':>20}{'added p50 at ' + format(args.rate, 'g') + '/s':>22}")
    for kind, row in rows.items():
        c = row["cpu_us_per_request"]
        print(f"{kind:<14}{'-' if c is None else format(c, '.1f'):>20}{row['added_p50_ms']:>19.3f} ms")
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "duration": args.duration, "rate": args.rate, "wrk": have_wrk},
        "direct_p50_ms": round(direct, 3),
        "direct_errors_at_rate": errors["direct"],
        "rows": rows,
    }
    out = write_json(doc, "floor", started, args.json_out)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
