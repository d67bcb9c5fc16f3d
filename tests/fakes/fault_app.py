"""A user container for the fault tests that keeps a journal of what reached it: ``python fault_app.py``.

It listens on ``--port`` (default: ``$PORT``, as Knative gives it) and is written on a bare asyncio
protocol with httptools so that it notes a request in the same callback that read it from the socket:
what it says was inside it is what was inside it (no framework task in between).

* ``/sleep?ms=N[&id=X]``   answers ``slept N <revision>`` after N ms. With ``id``, and ``$FAULT_LOG``
                           set, it appends ``S X`` to that file when the request arrives and ``E X``
                           just before it writes the answer, so a request with no ``E`` got no
                           answer from this process (O_APPEND writes: they survive a SIGKILL).
                           ``$FAULT_LOG_DIR`` instead: the file is ``<dir>/<revision>-<pid>.log``.
* ``/rev``                 ``<revision>`` (``$K_REVISION``) at once.
* ``/headers``             JSON ``{"method", "target", "headers": [[name, value], ...]}`` as received.
* ``/journal``             JSON list of the last requests received (method, target, headers, ``t``:
                           ``time.monotonic()`` on arrival, comparable across processes), oldest
                           first; ``/journal?clear=1`` empties it (these two are not journaled).
* ``/inflight``            JSON ``{"now": n, "max": m, "connections": c}``: requests and websockets
                           open right now, the most at once, connections accepted so far.
* ``/pid``                 the process id.
* ``/upload`` (any method)  reads the whole body, then answers its length (counts as in flight).
* ``/ws``                  a websocket (RFC 6455, text and binary echo) that counts as in flight.

``--keepalive-ms N`` closes a connection that stayed idle N ms after an answer (as app servers with a
short keep-alive do: gunicorn 2 s, Node 5 s), the race behind many proxies' sporadic 502s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import os
import struct
import time
from urllib.parse import parse_qs, urlsplit

import httptools

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
JOURNAL_KEPT = 2000


class State:
    def __init__(self, log_path: str | None, keepalive: float | None = None) -> None:
        self.keepalive = keepalive
        self.journal: collections.deque[dict[str, object]] = collections.deque(maxlen=JOURNAL_KEPT)
        self.inflight = 0
        self.max_inflight = 0
        self.connections = 0  # accepted so far
        self.revision = os.environ.get("K_REVISION", "none")
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log_path else None

    def note(self, line: str) -> None:
        if self.log_fd is not None:
            os.write(self.log_fd, line.encode() + b"\n")

    def enter(self) -> None:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)


def _response(status: int, body: bytes, ctype: bytes = b"text/plain") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        ctype,
        len(body),
        body,
    )


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class Conn(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.ws = False
        self.ws_buf = b""
        self.pending: asyncio.TimerHandle | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.busy = False  # a request of this connection is being served (counted in flight)
        self.upload: int | None = None  # body bytes read so far by /upload

    # -- asyncio ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.pending, self.idle):
            if timer is not None:
                timer.cancel()
        if self.busy:
            self.busy = False
            self.state.inflight -= 1

    def data_received(self, data: bytes) -> None:
        if self.ws:
            self._ws_data(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            rest = data[int(e.args[0]) :] if e.args and isinstance(e.args[0], int) else b""
            if self.ws and rest:
                self._ws_data(rest)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_response(400, b"bad request"))
            self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        if self.upload is not None:
            self.upload += len(body)

    def on_message_complete(self) -> None:
        if self.upload is not None:
            size, self.upload = self.upload, None
            self._send(200, str(size).encode())
            if self.busy:
                self.busy = False
                self.state.inflight -= 1

    def on_headers_complete(self) -> None:
        method = self.parser.get_method().decode()
        target = self.url.decode("latin-1")
        parts = urlsplit(target)
        if parts.path != "/journal":
            self.state.journal.append(
                {
                    "method": method,
                    "target": target,
                    "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
                    "t": time.monotonic(),
                }
            )
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self._serve(method, parts.path, query, target)

    # -- serving ----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_response(status, body, ctype))
            if self.state.keepalive is not None:
                loop = asyncio.get_running_loop()
                self.idle = loop.call_later(self.state.keepalive, self.transport.close)

    def _json(self, doc: object) -> None:
        self._send(200, json.dumps(doc).encode(), b"application/json")

    def _serve(self, method: str, path: str, query: dict[str, str], target: str) -> None:
        st = self.state
        if path == "/sleep":
            ms = int(query.get("ms", "0"))
            rid = query.get("id")
            st.enter()
            self.busy = True
            if rid is not None:
                st.note(f"S {rid}")
            self.pending = asyncio.get_running_loop().call_later(ms / 1000, self._slept, ms, rid)
        elif path == "/rev":
            self._send(200, st.revision.encode())
        elif path == "/headers":
            hs = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers]
            self._json({"method": method, "target": target, "headers": hs})
        elif path == "/journal":
            entries = list(st.journal)
            if query.get("clear") == "1":
                st.journal.clear()
            self._json(entries)
        elif path == "/inflight":
            self._json({"now": st.inflight, "max": st.max_inflight, "connections": st.connections})
        elif path == "/pid":
            self._send(200, str(os.getpid()).encode())
        elif path == "/ws":
            self._upgrade()
        elif path == "/upload":
            self.upload = 0
            st.enter()
            self.busy = True
        else:
            self._send(404, b"not found")

    def _slept(self, ms: int, rid: str | None) -> None:
        self.pending = None
        if rid is not None:
            self.state.note(f"E {rid}")  # before the answer: without an E, no answer left this process
        self._send(200, f"slept {ms} {self.state.revision}".encode())
        if self.busy:
            self.busy = False
            self.state.inflight -= 1

    def _upgrade(self) -> None:
        key = dict((n.lower(), v) for n, v in self.headers).get(b"sec-websocket-key", b"")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: %s\r\n\r\n" % accept
        )
        self.ws = True
        self.state.enter()
        self.busy = True
        if self.ws_buf:
            buf, self.ws_buf = self.ws_buf, b""
            self._ws_data(buf)

    def _ws_data(self, data: bytes) -> None:
        self.ws_buf += data
        while len(self.ws_buf) >= 2:
            b0, b1 = self.ws_buf[0], self.ws_buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(self.ws_buf) < 4:
                    return
                n, pos = struct.unpack("!H", self.ws_buf[2:4])[0], 4
            elif n == 127:
                if len(self.ws_buf) < 10:
                    return
                n, pos = struct.unpack("!Q", self.ws_buf[2:10])[0], 10
            masked = b1 & 0x80
            mask = self.ws_buf[pos : pos + 4] if masked else b""
            pos += 4 if masked else 0
            if len(self.ws_buf) < pos + n:
                return
            payload = self.ws_buf[pos : pos + n]
            self.ws_buf = self.ws_buf[pos + n :]
            if masked:
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            opcode = b0 & 0x0F
            assert self.transport is not None
            if opcode == 8:  # close: answer it and end
                self.transport.write(_ws_frame(8, payload[:2]))
                self.transport.close()
                return
            if opcode == 9:
                self.transport.write(_ws_frame(10, payload))
            elif opcode in (1, 2):
                self.transport.write(_ws_frame(opcode, payload))


async def main_async(port: int, host: str, log_path: str | None, keepalive: float | None = None) -> None:
    log_dir = os.environ.get("FAULT_LOG_DIR")
    if log_dir:
        log_path = os.path.join(log_dir, f"{os.environ.get('K_REVISION', 'none')}-{os.getpid()}.log")
    state = State(log_path, keepalive)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(state), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description="user container with a request journal, for fault tests")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--keepalive-ms", type=float, help="close connections idle this long after an answer")
    args = p.parse_args()
    keepalive = args.keepalive_ms / 1000 if args.keepalive_ms is not None else None
    import uvloop

    uvloop.run(main_async(args.port, args.host, os.environ.get("FAULT_LOG"), keepalive))


if __name__ == "__main__":
    main()
