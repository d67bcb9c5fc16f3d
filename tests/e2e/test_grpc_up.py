"""`zeroscale up -f examples/grpc/service.yaml` end to end, with its own autoscaler: gRPC unary and
bidirectional calls from a scaled-to-zero start (the demo config's initial-scale 0)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest

from tests.conftest import ROOT
from tests.e2e.test_up import up_process

pytestmark = pytest.mark.e2e

GRPC = ROOT / "examples" / "grpc" / "service.yaml"
DEMO_CONFIG = ROOT / "examples" / "demo" / "config.yaml"
GREETER = "/zeroscale.example.Greeter"


def _calls(port: int) -> tuple[bytes, dict[str, str], list[bytes]]:
    options = [("grpc.default_authority", "grpc.default.example.com"), ("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        reply, call = ch.unary_unary(f"{GREETER}/SayHello").with_call(b"cold", timeout=60)
        first = threading.Event()

        def requests() -> Iterator[bytes]:
            yield b"one"
            first.wait(30)  # the answer to "one" comes back before "two" is sent
            yield b"two"

        out = []
        for msg in ch.stream_stream(f"{GREETER}/Chat")(requests(), timeout=60):
            out.append(msg)
            first.set()
        return reply, dict(call.trailing_metadata() or ()), out


async def test_grpc_from_zero_through_zeroscale_up() -> None:
    with up_process("-f", GRPC, "--config", DEMO_CONFIG) as up:
        await up.wait_up()
        rev = up.revision("grpc")
        assert (rev["desired_pods"], rev["ready_pods"]) == (0, 0)  # a real cold start follows
        reply, trailers, chat = await asyncio.to_thread(_calls, up.port)
        assert reply == b"Hello cold! (revision grpc-00001)"
        assert trailers.get("x-revision") == "grpc-00001"
        assert chat == [b"grpc-00001: one", b"grpc-00001: two"]
