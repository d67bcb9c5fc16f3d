"""Call the gRPC example through zeroscale: ``python examples/grpc/client.py [--port 8080] [names...]``.

The gateway picks the Service by the call's authority (the HTTP/2 ``Host``), so the channel is given
``grpc.default.example.com`` as its authority while it connects to 127.0.0.1.
"""

from __future__ import annotations

import argparse

import grpc

SERVICE = "zeroscale.example.Greeter"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8080, help="the gateway's port (default 8080)")
    ap.add_argument("--authority", default="grpc.default.example.com", help="the Service's host name")
    ap.add_argument("names", nargs="*", default=["zeroscale"])
    args = ap.parse_args()
    options = [("grpc.default_authority", args.authority), ("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{args.port}", options=options) as ch:
        hello = ch.unary_unary(f"/{SERVICE}/SayHello")
        reply, call = hello.with_call(args.names[0].encode(), timeout=60)
        print(reply.decode(), dict(call.trailing_metadata() or ()))
        chat = ch.stream_stream(f"/{SERVICE}/Chat")
        for answer in chat(iter(n.encode() for n in args.names), timeout=60):
            print(answer.decode())


if __name__ == "__main__":
    main()
