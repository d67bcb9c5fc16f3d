"""Autoscale: a request costs what its query asks for, like Knative's autoscale-go sample.

    GET /?sleep=100          sleep 100 ms
    GET /?prime=10000        find the largest prime below 10000 (CPU)
    GET /?bloat=50           hold 50 MB of memory while answering
Parameters combine: /?sleep=100&prime=10000&bloat=5. Standard library only.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_SLEEP_MS = 600_000
MAX_PRIME = 50_000_000
MAX_BLOAT_MB = 1024


def largest_prime_below(n: int) -> int:
    """Sieve of Eratosthenes; 0 when there is none."""
    if n <= 2:
        return 0
    sieve = bytearray([1]) * n
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(n - 1) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n, i)))
    return sieve.rindex(1)


class Autoscale(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _param(self, query: dict[str, list[str]], name: str, limit: int) -> int | None:
        raw = query.get(name, [""])[0]
        if raw == "":
            return 0
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if not 0 <= value <= limit:
            self._reply(400, f"{name}={raw!r} must be a whole number between 0 and {limit}\n")
            return None
        return value

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        sleep_ms = self._param(query, "sleep", MAX_SLEEP_MS)
        prime = self._param(query, "prime", MAX_PRIME)
        bloat = self._param(query, "bloat", MAX_BLOAT_MB)
        if sleep_ms is None or prime is None or bloat is None:
            return
        parts = []
        if sleep_ms:
            start = time.monotonic()
            time.sleep(sleep_ms / 1000)
            parts.append(f"Slept for {(time.monotonic() - start) * 1000:.2f} milliseconds.")
        if prime:
            parts.append(f"The largest prime less than {prime} is {largest_prime_below(prime)}.")
        if bloat:
            ballast = bytearray(bloat * 1024 * 1024)  # zero pages: touch them so they count
            for i in range(0, len(ballast), 4096):
                ballast[i] = 1
            parts.append(f"Allocated {bloat} Mb of memory.")
            del ballast
        self._reply(200, (" ".join(parts) or "Nothing asked; try /?sleep=100&prime=10000&bloat=5") + "\n")

    def _reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Autoscale)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"autoscale: listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
