"""A real grpcio server on 127.0.0.1 with the four call shapes, built from grpcio's generic handlers
(messages are raw bytes: no protoc step), and a client channel that never uses a proxy.

Service ``zeroscale.test.Echo``:
- Unary: b"echo:" + request, with trailing metadata ``x-trailer: unary``; a request b"fail" aborts
  with INVALID_ARGUMENT "bad request" (a trailers-only response).
- ServerStream: request b"<count>x<size>" -> count messages of size bytes; with ``gate`` set, each
  message after the first waits until the test sets the event named in ``gates[i]``.
- ClientStream: b"<messages>:<bytes>" of what the client sent.
- Bidi: b"echo:" + each request as it arrives.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "zeroscale.test.Echo"


class EchoService:
    def __init__(self) -> None:
        self.produced = 0  # ServerStream messages handed to grpc so far
        self.lock = threading.Lock()
        self.gates: list[threading.Event] = []

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"fail":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
        context.set_trailing_metadata((("x-trailer", "unary"),))
        return b"echo:" + request

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        count, size = (int(x) for x in request.split(b"x"))
        for i in range(count):
            if 0 < i <= len(self.gates) and not self.gates[i - 1].wait(20):
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"gate {i} never opened")
            with self.lock:
                self.produced += 1
            yield (b"%d:" % i).ljust(size, b".")

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        n = total = 0
        for msg in requests:
            n += 1
            total += len(msg)
        return b"%d:%d" % (n, total)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for msg in requests:
            yield b"echo:" + msg


class EchoServer:
    """Start with .start(); .port is the bound port; .stop() in a finally."""

    def __init__(self) -> None:
        self.service = EchoService()
        s = self.service
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(s.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(s.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(s.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(s.bidi),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def start(self) -> EchoServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None)


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])


def method(ch: grpc.Channel, name: str) -> Any:
    path = f"/{SERVICE}/{name}"
    kind = {
        "Unary": ch.unary_unary,
        "ServerStream": ch.unary_stream,
        "ClientStream": ch.stream_unary,
        "Bidi": ch.stream_stream,
    }[name]
    return kind(path)
