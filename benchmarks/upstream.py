"""The benchmarks' trivial app: ``python benchmarks/upstream.py [--port N] [--startup-ms N]``.

Answers ``GET /`` (any path but those below) at once with a 2-byte body, ``/slow`` after 100 ms (Knative's
dataplane-probe shape) and ``/sleep?ms=N`` after N ms; a readiness probe (``K-Network-Probe: queue``)
gets ``queue``, so the activator can point at it without a queue-proxy. Keep-alive and pipelining
work; request bodies are not expected (GET only). The port comes from ``--port`` or ``$PORT`` (what
``zeroscale up`` gives a user container). ``--startup-ms`` sleeps before listening: the app's own
start-up time in cold-start measurements.

Written on raw asyncio protocols over uvloop so that the app costs as little as possible: every
microsecond measured above it belongs to the data plane in front.

Delayed answers are timed by a thread of their own, not by the loop's timers: uvloop's timers count
whole milliseconds (libuv), so a 100 ms answer left anywhere between 99 and 101 ms after its request,
a spread ten times the latency a proxy adds, which buried the added p50 in noise. The thread sleeps
to each deadline with a 1 us timer slack and hands the due answers to the loop in one wake-up, as
precise as the Go app (time.Sleep) of Knative's dataplane-probe.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import heapq
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
QUEUE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nqueue"
SLOW_MS = 100


class _Timer:
    """Runs callbacks on the loop at monotonic deadlines, to some microseconds (see the docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.cond = threading.Condition()
        threading.Thread(target=self._run, name="timer", daemon=True).start()

    def call_at(self, due: float, fn: Callable[[], None]) -> None:
        with self.cond:
            heapq.heappush(self.heap, (due, next(self.seq), fn))
            if self.heap[0][2] is fn:  # the new earliest deadline: the thread sleeps toward it instead
                self.cond.notify()

    def _run(self) -> None:
        if sys.platform == "linux":  # the kernel's default 50 us of slack on every sleep, down to 1 us
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
        heap, cond = self.heap, self.cond
        while True:
            with cond:
                while not heap or heap[0][0] > time.monotonic():
                    cond.wait(max(0.0, heap[0][0] - time.monotonic()) if heap else None)
                now = time.monotonic()
                due: list[Callable[[], None]] = []
                while heap and heap[0][0] <= now:
                    due.append(heapq.heappop(heap)[2])
            self.loop.call_soon_threadsafe(_run_all, due)


def _run_all(fns: list[Callable[[], None]]) -> None:
    for fn in fns:
        fn()


class _App(asyncio.Protocol):
    __slots__ = ("buf", "last_due", "timer", "transport")

    def __init__(self, timer: _Timer) -> None:
        self.buf = b""
        self.last_due = 0.0  # when the last delayed answer is due: later answers wait for it (order)
        self.timer = timer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if b"\r\n\r\n" not in buf:
            self.buf = buf
            return
        out: list[bytes] = []
        close = False
        now = time.monotonic()  # not loop.time(): uvloop's is the loop's cached whole millisecond
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            buf = buf[end + 4 :]
            answer = QUEUE if b"-Probe: queue" in head or b"-probe: queue" in head else OK
            close = b"onnection: close" in head or b"onnection: Close" in head
            delay = _delay_ms(head)
            if delay or self.last_due > now:
                # pipelined answers leave in order: nothing overtakes a delayed one
                due = max(now + delay / 1000, self.last_due)
                self.last_due = due
                self.timer.call_at(due, functools.partial(self._write, answer, close))
            else:
                out.append(answer)
                if close:
                    break
        self.buf = buf
        if out:
            self._write(b"".join(out), close)

    def _write(self, data: bytes, close: bool = False) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)
            if close:
                t.close()


def _delay_ms(head: bytes) -> int:
    line = head[: head.find(b" HTTP/")]
    if line.startswith(b"GET /slow"):
        return SLOW_MS
    i = line.find(b"/sleep?ms=")
    if i >= 0:
        digits = line[i + 10 :].split(b"&", 1)[0]
        return int(digits) if digits.isdigit() else 0
    return 0


async def _main(port: int) -> None:
    loop = asyncio.get_running_loop()
    timer = _Timer(loop)
    srv = await loop.create_server(lambda: _App(timer), "127.0.0.1", port, backlog=4096)
    await srv.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=None, help="listen port on 127.0.0.1 (default: $PORT)")
    p.add_argument("--startup-ms", type=int, default=0, help="sleep this long before listening")
    args = p.parse_args()
    port = args.port if args.port is not None else int(os.environ.get("PORT", "8080"))
    if args.startup_ms:
        time.sleep(args.startup_ms / 1000)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_main(port))
        return
    uvloop.run(_main(port))


if __name__ == "__main__":
    main()
