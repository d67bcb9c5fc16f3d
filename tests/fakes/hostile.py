"""Raw-socket attacks for the fault tests: send exact bytes, see what comes back and how fast.

Every helper talks to 127.0.0.1 only and is bounded in time: a server that neither answers nor
closes within ``timeout`` shows up as ``Reply.hung``, which the tests treat as a failure.

``CASES`` is the table of malformed requests: each must get a 4xx or a closed connection, and none
may reach the user container (the target carries ``case=<id>`` so the app's journal shows it if it did).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

__all__ = ["CASES", "Reply", "exchange", "request", "trickle"]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    status: int | None  # None: the connection closed without a status line (or hung)
    raw: bytes  # what came back (bounded)
    elapsed: float  # seconds from the first byte sent to the answer (or close)
    closed: bool  # the server closed the connection
    hung: bool  # neither an answer nor a close within the timeout

    @property
    def refused(self) -> bool:
        """A 4xx, or a closed connection with no answer: how a bad request must end."""
        return not self.hung and (self.status is None or 400 <= self.status < 500)

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]


def _status(raw: bytes) -> int | None:
    line = raw.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def _read_reply(sock: socket.socket, started: float, timeout: float, limit: int = 65536) -> Reply:
    """Read until the server closes, or a full response head plus its Content-Length body arrived."""
    raw = b""
    deadline = started + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Reply(_status(raw), raw, time.monotonic() - started, False, _status(raw) is None)
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return Reply(_status(raw), raw, time.monotonic() - started, True, False)
        raw += chunk
        head, sep, body = raw.partition(b"\r\n\r\n")
        if sep and _status(raw) is not None:
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    length = int(value.strip())
            if length is not None and len(body) >= length:
                closed = b"connection: close" in head.lower() and _closed_soon(sock)
                return Reply(_status(raw), raw, time.monotonic() - started, closed, False)
        if len(raw) > limit:
            return Reply(_status(raw), raw, time.monotonic() - started, False, False)


def _closed_soon(sock: socket.socket, wait: float = 2.0) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> Reply:
    """Send ``data`` in one write on a fresh connection and read the answer."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        started = time.monotonic()
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return Reply(None, b"", time.monotonic() - started, True, False)
        return _read_reply(sock, started, timeout)


def request(port: int, method: str, target: str, host: str, headers: list[tuple[str, str]] = ()) -> Reply:  # type: ignore[assignment]
    """A well-formed request with exactly these extra headers (no Connection: close, no others)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{n}: {v}" for n, v in headers)]
    return exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def trickle(
    port: int, data: bytes, *, interval: float, duration: float, prefix: bytes = b""
) -> tuple[int, Reply | None]:
    """Send ``prefix`` at once, then ``data`` one byte every ``interval`` s for at most ``duration`` s
    (a slow client; with a request head as ``prefix``, a slow body).

    Returns how many bytes went out and the server's answer if it answered or closed meanwhile
    (None: still open when the duration ran out, which the caller may expect)."""
    sent = 0
    with socket.create_connection((HOST, port), timeout=5) as sock:
        started = time.monotonic()
        if prefix:
            sock.sendall(prefix)
        sock.setblocking(False)
        while sent < len(data) and time.monotonic() - started < duration:
            try:
                got = sock.recv(65536)
            except BlockingIOError:
                got = None
            except ConnectionResetError:
                got = b""
            if got is not None:
                sock.setblocking(True)
                rest = b"" if not got else _read_reply(sock, time.monotonic(), 5.0).raw
                raw = got + rest
                return sent, Reply(_status(raw), raw, time.monotonic() - started, True, False)
            try:
                sock.send(data[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return sent, Reply(None, b"", time.monotonic() - started, True, False)
            sent += 1
            time.sleep(interval)  # the pace of the attack itself, not a wait for a condition
    return sent, None


def _req(case: str, rest: bytes, first: bytes | None = None) -> bytes:
    line = first if first is not None else b"GET /headers?case=%s HTTP/1.1" % case.encode()
    return line + b"\r\n" + rest


def _body(case: str, te: bytes, body: bytes) -> bytes:
    """A request whose head is valid and whose chunked body is not, with a request smuggled behind it.

    Only the smuggled one carries ``case=<id>``: the outer request may legitimately have reached the
    app, cut short, if its head arrived in an earlier read than the bad body."""
    return (
        b"POST /headers?body=%s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n\r\n%s"
        b"GET /headers?case=%s-smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
        % (case.encode(), te, body, case.encode())
    )


# (id, bytes). Each must be refused (4xx or closed); ``case=<id>`` must never reach the app.
CASES: list[tuple[str, bytes]] = [
    ("no-version", b"GET /headers?case=no-version\r\nHost: h\r\n\r\n"),
    ("bad-version", b"GET /headers?case=bad-version HTTP/9.9\r\nHost: h\r\n\r\n"),
    ("bad-method", b"G(T /headers?case=bad-method HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("binary-line", b"\x00\x01\x02 /headers?case=binary-line HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("space-in-target", b"GET /headers?case=space-in-target x HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("header-name-space", _req("header-name-space", b"Host: h\r\nBad Name: v\r\n\r\n")),
    ("header-name-paren", _req("header-name-paren", b"Host: h\r\nBa(d: v\r\n\r\n")),
    ("header-empty-name", _req("header-empty-name", b"Host: h\r\n: v\r\n\r\n")),
    ("space-before-colon", _req("space-before-colon", b"Host: h\r\nX-A : v\r\n\r\n")),
    ("header-value-nul", _req("header-value-nul", b"Host: h\r\nX-A: a\x00b\r\n\r\n")),
    ("header-value-ctl", _req("header-value-ctl", b"Host: h\r\nX-A: a\x01b\r\n\r\n")),
    ("header-value-bare-cr", _req("header-value-bare-cr", b"Host: h\r\nX-A: a\rb\r\n\r\n")),
    ("bare-cr-line-end", _req("bare-cr-line-end", b"Host: h\rX-A: b\r\n\r\n")),
    ("obs-fold", _req("obs-fold", b"Host: h\r\nX-A: a\r\n b\r\n\r\n")),
    (
        "cl-te",
        b"POST /headers?case=cl-te HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /headers?case=cl-te-smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    ),
    (
        "te-cl",
        b"POST /headers?case=te-cl HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 40\r\n\r\n0\r\n\r\nGET /headers?case=te-cl-smuggled HTTP/1.1\r\n\r\n",
    ),
    (
        "duplicate-cl",
        b"POST /headers?case=duplicate-cl HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!",
    ),
    (
        "cl-list",
        b"POST /headers?case=cl-list HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ),
    ("cl-negative", b"POST /headers?case=cl-negative HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"),
    ("cl-plus", b"POST /headers?case=cl-plus HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello"),
    ("cl-hex", b"POST /headers?case=cl-hex HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello"),
    (
        "te-not-chunked",
        b"POST /headers?case=te-not-chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    ),
    (
        "te-chunked-not-last",
        b"POST /headers?case=te-chunked-not-last HTTP/1.1\r\nHost: h\r\n"
        b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "te-space-name",
        b"POST /headers?case=te-space-name HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    ("te-twice", _body("te-twice", b"chunked\r\nTransfer-Encoding: chunked", b"0\r\n\r\n")),
    ("chunk-size-bad", _body("chunk-size-bad", b"chunked", b"zz\r\nhello\r\n0\r\n\r\n")),
    (
        "chunk-size-overflow",
        _body("chunk-size-overflow", b"chunked", b"fffffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
    ),
    ("chunk-data-too-long", _body("chunk-data-too-long", b"chunked", b"5\r\nhelloXX0\r\n\r\n")),
    ("chunk-ext-bare-lf", _body("chunk-ext-bare-lf", b"chunked", b"5;a\nb\r\nhello\r\n0\r\n\r\n")),
    ("chunk-size-bare-lf", _body("chunk-size-bare-lf", b"chunked", b"5\nhello\r\n0\r\n\r\n")),
    ("trailer-smuggle", _body("trailer-smuggle", b"chunked", b"0\r\nX-T: a\r\n")),
    ("two-hosts", _req("two-hosts", b"Host: h\r\nHost: other\r\n\r\n")),
    ("no-host", _req("no-host", b"X-A: b\r\n\r\n")),
    ("url-too-long", b"GET /headers?case=url-too-long&p=" + b"a" * 70000 + b" HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("header-too-large", _req("header-too-large", b"Host: h\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n")),
    (
        "too-many-headers",
        _req("too-many-headers", b"Host: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n"),
    ),
]
