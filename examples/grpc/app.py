"""A gRPC greeter for the h2c example: one unary and one bidirectional-streaming method.

Built from grpcio's generic handlers, so messages are UTF-8 text bytes and no protoc step is needed:

- ``/zeroscale.example.Greeter/SayHello``: b"<name>" -> b"Hello <name>! (revision <K_REVISION>)",
  with the trailing metadata ``x-revision: <K_REVISION>``; an empty name is INVALID_ARGUMENT.
- ``/zeroscale.example.Greeter/Chat``: each message is answered at once with b"<revision>: <message>".

Needs grpcio (``pip install grpcio``, or zeroscale's ``test`` extra). Listens on 127.0.0.1:$PORT.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "zeroscale.example.Greeter"
REVISION = os.environ.get("K_REVISION", "?")


def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
    if not request:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is empty")
    context.set_trailing_metadata((("x-revision", REVISION),))
    return b"Hello %s! (revision %s)" % (request, REVISION.encode())


def chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for msg in requests:
        yield REVISION.encode() + b": " + msg


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handlers = {
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    done = threading.Event()
    # SIGTERM: the queue-proxy in front has drained already; finish what runs (up to 5 s) and exit 0
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"grpc greeter: listening on 127.0.0.1:{port} (h2c)", file=sys.stderr, flush=True)
    done.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
