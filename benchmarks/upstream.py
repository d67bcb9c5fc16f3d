"""The benchmarks' trivial app: ``python benchmarks/upstream.py [--port N] [--startup-ms N]``.

Answers ``GET /`` (any path but those below) at once with a 2-byte body, ``/slow`` after 100 ms (Knative's
dataplane-probe shape) and ``/sleep?ms=N`` after N ms; a readiness probe (``K-Network-Probe: queue``)
gets ``queue``, so the activator can point at it without a queue-proxy. Keep-alive and pipelining
work; request bodies are not expected (GET only). The port comes from ``--port`` or ``$PORT`` (what
``zeroscale up`` gives a user container). ``--startup-ms`` sleeps before listening: the app's own
start-up time in cold-start measurements.

Written on raw asyncio protocols over uvloop so that the app costs as little as possible: every
microsecond measured above it belongs to the data plane in front.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
QUEUE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nqueue"
SLOW_MS = 100


class _App(asyncio.Protocol):
    __slots__ = ("buf", "last_due", "loop", "transport")

    def __init__(self) -> None:
        self.buf = b""
        self.last_due = 0.0  # when the last delayed answer is due: later answers wait for it (order)
        self.loop = asyncio.get_running_loop()
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
        now = self.loop.time()
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
                self.loop.call_at(due, self._write, answer, close)
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
    srv = await loop.create_server(_App, "127.0.0.1", port, backlog=4096)
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
