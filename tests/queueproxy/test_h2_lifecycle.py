"""gRPC streams and the queue-proxy's life: a drain lets an open bidirectional stream finish, and the
revision timeout cuts one call (504 before its response started, a reset of that stream only after)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from tests.fakes.grpc_echo import EchoServer, channel, method
from tests.queueproxy.procs import queue_proxy
from tests.queueproxy.test_h2_grpc import HoldServer
from tests.util import until

pytestmark = pytest.mark.e2e


async def _probe_status(port: int) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
        r = await c.get(f"http://127.0.0.1:{port}/", headers={"K-Network-Probe": "queue"})
        return r.status_code


async def test_sigterm_lets_an_open_bidi_stream_finish() -> None:
    echo = EchoServer().start()
    try:
        with queue_proxy(echo.port, QUEUE_USER_PROTOCOL="h2c", QUEUE_DRAIN_QUIET_PERIOD_SECONDS="0.3") as qp:
            ch = channel(qp.port)
            steps = [threading.Event() for _ in range(2)]
            got: list[bytes] = []

            def requests() -> Iterator[bytes]:
                yield b"m0"
                for i, step in enumerate(steps, 1):
                    step.wait(30)
                    yield b"m%d" % i

            def run() -> None:
                for msg in method(ch, "Bidi")(requests(), timeout=60):
                    got.append(msg)

            call = asyncio.create_task(asyncio.to_thread(run))
            try:
                await until(lambda: got == [b"echo:m0"], timeout=20, what="first answer")
                qp.terminate()
                deadline = time.monotonic() + 20
                while await _probe_status(qp.port) != 503:
                    assert time.monotonic() < deadline, "queue-proxy never reported draining"
                    await asyncio.sleep(0.05)
                # past the quiet period, the open stream keeps the queue-proxy alive and serving it
                watch_until = time.monotonic() + 1.0
                while time.monotonic() < watch_until:
                    assert qp.proc.proc.poll() is None, "queue-proxy exited with a stream open"
                    await asyncio.sleep(0.05)
                steps[0].set()
                await until(lambda: len(got) == 2, timeout=20, what="answer during the drain")
                steps[1].set()
                await asyncio.wait_for(call, 30)
                assert got == [b"echo:m0", b"echo:m1", b"echo:m2"]
                assert await asyncio.to_thread(qp.wait_exit, 20) == 0
            finally:
                for step in steps:
                    step.set()
                ch.close()
    finally:
        echo.stop()


async def test_revision_timeout_answers_504_before_the_response_starts() -> None:
    hold = HoldServer()
    hold.server.start()
    try:
        with queue_proxy(hold.port, QUEUE_USER_PROTOCOL="h2c", REVISION_TIMEOUT_SECONDS="1") as qp:
            ch = channel(qp.port)
            try:
                call = ch.unary_unary("/zeroscale.test.Hold/Hold")
                t0 = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    await asyncio.to_thread(call, b"slow", timeout=30)
                assert time.monotonic() - t0 < 10
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # gRPC's mapping of HTTP 504
                assert "504" in (err.value.details() or "")
                hold.release.release()  # the app's handler ends; the connection is still usable
                await until(lambda: hold.running == 0, what="app handler done")
                hold.release.release()
                assert await asyncio.to_thread(call, b"quick", timeout=30) == b"held:quick"
            finally:
                ch.close()
    finally:
        for _ in range(3):
            hold.release.release()
        hold.server.stop(grace=None)


async def test_revision_timeout_mid_stream_resets_only_that_stream() -> None:
    echo = EchoServer().start()
    gate = threading.Event()
    echo.service.gates = [gate]  # the second message waits for a gate the test opens only at the end
    try:
        with queue_proxy(echo.port, QUEUE_USER_PROTOCOL="h2c", REVISION_TIMEOUT_SECONDS="1") as qp:
            ch = channel(qp.port)
            got: list[bytes] = []

            def run() -> None:
                for msg in method(ch, "ServerStream")(b"3x10", timeout=30):
                    got.append(msg)

            try:
                t0 = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    await asyncio.to_thread(run)
                assert time.monotonic() - t0 < 10
                assert len(got) == 1  # the first message came, then the stream was cut: never "complete"
                # RST_STREAM(INTERNAL_ERROR) from the queue-proxy, not a status the app never sent
                assert err.value.code() == grpc.StatusCode.INTERNAL, err.value
                assert "RST_STREAM" in (err.value.details() or "")
                # the same connection still carries other calls
                assert await asyncio.to_thread(method(ch, "Unary"), b"next", timeout=20) == b"echo:next"
            finally:
                gate.set()
                ch.close()
    finally:
        gate.set()
        echo.stop()
