"""gRPC end to end on loopback: a grpcio client -> the gateway (routing + activator, h2c) -> a real
queue-proxy (h2c) -> the examples/grpc app (grpcio), pods started by cluster.local's runtime.

Cold start of unary and bidi calls, trailers, a 40/60 split, an h2c client to an HTTP/1.1 app, and
abusive frames on the gateway's h2c listener while a gRPC channel keeps working.
The test plays the autoscaler (it scales when the activator holds a request), so a cold start
happens exactly when it wants. ``zeroscale up`` with its own autoscaler is tests/e2e/test_grpc_up.py.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from cluster.gateway_app import GatewayApp
from cluster.local import LocalRuntime, PodSettings
from cluster.local_pod import PodPorts, queue_env
from queueproxy.config import QueueProxyConfig
from routing.table import RouteSpec, RouteTable, TableHolder
from routing.traffic import Flattened, Split, Target
from serving.h2_guard import ENHANCE_YOUR_CALM, FRAME_SIZE_ERROR, PROTOCOL_ERROR
from serving.h2upstream import H2Upstream
from serving.spec import Revision, RevisionHistory, parse_services
from serving.types import RevisionKey
from tests.conftest import ROOT
from tests.fakes.grpc_frames import (
    CONTINUATION,
    DATA,
    HEADERS,
    PING,
    RST_STREAM,
    RawH2,
    frame,
    settings_frame,
)
from tests.util import until

pytestmark = pytest.mark.e2e

EXAMPLES = ROOT / "examples"
GREETER = "/zeroscale.example.Greeter"
DOMAIN = "example.com"
SETTINGS = PodSettings(ready_timeout=30.0, drain_quiet_period=0.2, termination_grace=5.0, kill_grace=2.0)


def example(directory: str, version: int = 1) -> tuple[str, Path]:
    """The example's Service file, with an env var that makes each version a new revision."""
    path = EXAMPLES / directory / "service.yaml"
    doc = yaml.safe_load(path.read_text())
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container.setdefault("env", []).append({"name": "VERSION", "value": str(version)})
    return yaml.safe_dump(doc), path.parent


class Plane:
    def __init__(self) -> None:
        self.runtime = LocalRuntime(SETTINGS)
        self.holder = TableHolder(RouteTable([], domain=DOMAIN))
        self.gateway = GatewayApp(self.holder, self.runtime, lambda _stats: None)
        self.history = RevisionHistory()
        self.port = 0

    def revision(self, directory: str, version: int = 1) -> Revision:
        text, base = example(directory, version)
        (svc,) = parse_services(text, f"{directory}-v{version}.yaml", base_dir=base)
        rev, _ = self.history.admit(svc)
        t = rev.template
        self.runtime.add_revision(rev)
        self.gateway.add_revision(
            rev.key, t.container_concurrency, timeout_seconds=t.timeout_seconds, protocol=t.container.protocol
        )
        return rev

    def route(self, service: str, split: Mapping[str, int]) -> None:
        """A table where ``service`` (the only one) sends ``split`` (revision name -> percent)."""
        targets = tuple(Target(name, pct) for name, pct in split.items())
        self.holder.swap(
            RouteTable([RouteSpec(service, "default", Flattened(Split(targets), {}))], domain=DOMAIN)
        )

    async def ready(self, key: RevisionKey, pods: int = 1) -> None:
        await self.runtime.scale(key, pods)

        async def check() -> bool:
            fails = self.runtime.failures(key)
            assert not fails, fails[0].describe()
            return len(self.gateway.activator.healthy(key)) >= pods

        deadline = asyncio.get_running_loop().time() + 30
        while not await check():
            assert asyncio.get_running_loop().time() < deadline, f"{key}: {pods} pods not ready in 30 s"
            await asyncio.sleep(0.05)

    def channel(self, service: str) -> grpc.Channel:
        options = [("grpc.default_authority", f"{service}.default.{DOMAIN}"), ("grpc.enable_http_proxy", 0)]
        return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=options)


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    p = Plane()
    try:
        p.port = await p.gateway.start("127.0.0.1", 0)
        yield p
    finally:
        try:
            await p.gateway.shutdown(5.0)
        finally:
            await p.runtime.close(timeout=15.0)


def test_local_pods_tell_the_queue_proxy_the_port_name() -> None:
    ports = PodPorts(serving=20001, admin=20002, metrics=20003, user_metrics=20004, user=20005)
    for directory, protocol in (("grpc", "h2c"), ("hello", "http1")):
        text, base = example(directory)
        (svc,) = parse_services(text, "x.yaml", base_dir=base)
        rev, _ = RevisionHistory().admit(svc)
        env = queue_env(rev, "pod", ports, 0.2, {})
        assert env["QUEUE_USER_PROTOCOL"] == protocol
        assert QueueProxyConfig.from_env(env).user_protocol == protocol


def _bidi(ch: grpc.Channel, names: list[bytes]) -> tuple[list[bytes], list[str]]:
    """Chat: the second message is sent only once the first answer came back through every hop."""
    log: list[str] = []
    first = threading.Event()

    def requests() -> Iterator[bytes]:
        yield names[0]
        first.wait(30)
        for n in names[1:]:
            log.append(f"send {n.decode()}")
            yield n

    out = []
    for msg in ch.stream_stream(f"{GREETER}/Chat")(requests(), timeout=60):
        log.append(f"got {msg.decode()}")
        out.append(msg)
        first.set()
    return out, log


async def test_unary_and_bidi_from_zero_with_trailers(plane: Plane) -> None:
    rev = plane.revision("grpc")
    plane.route("grpc", {rev.name: 100})
    ch = plane.channel("grpc")
    try:
        hello = ch.unary_unary(f"{GREETER}/SayHello")
        unary = hello.future(b"alice", timeout=60)  # no pod yet: the activator holds both calls
        chat = asyncio.create_task(asyncio.to_thread(_bidi, ch, [b"a", b"b", b"c"]))
        throttler = plane.gateway.activator.throttler(rev.key)
        assert throttler is not None
        await until(lambda: throttler.queued == 2, timeout=20, what="both calls held by the activator")
        assert plane.runtime.pods(rev.key) == []
        await plane.runtime.scale(rev.key, 1)  # the cold start

        reply = await asyncio.to_thread(unary.result, 60)
        assert reply == b"Hello alice! (revision grpc-00001)"
        assert ("x-revision", "grpc-00001") in tuple(unary.trailing_metadata())
        out, log = await chat
        assert out == [b"grpc-00001: a", b"grpc-00001: b", b"grpc-00001: c"]
        assert log.index("got grpc-00001: a") < log.index("send b")

        # the activator went to the pod over h2c; a grpc-status error crosses every hop in trailers
        [pod] = throttler.pods
        assert isinstance(pod.attachment, H2Upstream)
        with pytest.raises(grpc.RpcError) as err:
            await asyncio.to_thread(hello, b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "name is empty"
    finally:
        ch.close()


async def test_split_40_60_over_grpc(plane: Plane) -> None:
    v1 = plane.revision("grpc", 1)
    v2 = plane.revision("grpc", 2)
    await asyncio.gather(plane.ready(v1.key), plane.ready(v2.key))
    plane.route("grpc", {v1.name: 40, v2.name: 60})
    ch = plane.channel("grpc")
    try:
        hello = ch.unary_unary(f"{GREETER}/SayHello")
        seen: Counter[str] = Counter()
        for batch in range(10):  # 500 calls, 50 in flight at a time on one HTTP/2 connection
            calls = [hello.future(b"c%d" % (batch * 50 + i), timeout=30) for i in range(50)]
            for call in calls:
                reply = await asyncio.to_thread(call.result, 30)
                seen[reply.rsplit(b"(revision ", 1)[1].rstrip(b")").decode()] += 1
                assert dict(call.trailing_metadata() or ()).get("x-revision") in (v1.name, v2.name)
        assert sum(seen.values()) == 500
        share = seen[v1.name] / 500
        assert abs(share - 0.40) <= 0.03, seen
        assert abs(seen[v2.name] / 500 - 0.60) <= 0.03, seen
    finally:
        ch.close()


async def test_h2c_client_to_an_http1_app_through_every_hop(plane: Plane) -> None:
    rev = plane.revision("hello")
    plane.route("hello", {rev.name: 100})
    await plane.ready(rev.key)
    async with httpx.AsyncClient(http1=False, http2=True, trust_env=False, timeout=30) as c:
        r = await c.get(f"http://127.0.0.1:{plane.port}/", headers={"Host": f"hello.default.{DOMAIN}"})
    assert r.http_version == "HTTP/2"
    assert (r.status_code, r.text) == (200, f"Hello zeroscale! (revision {rev.name})\n")


def _rst(sid: int) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", 8))


GATEWAY_ABUSE: list[tuple[str, Callable[[RawH2], bytes], int]] = [
    ("even-stream-id", lambda r: r.request(2), PROTOCOL_ERROR),
    ("frame-over-max-size", lambda r: frame(DATA, 0, 1, b"", length=16385), FRAME_SIZE_ERROR),
    ("settings-flood", lambda r: settings_frame() * 3000, ENHANCE_YOUR_CALM),
    ("ping-flood", lambda r: frame(PING, 0, 0, b"12345678") * 3000, ENHANCE_YOUR_CALM),
    (
        "rst-stream-flood",
        lambda r: b"".join(r.request(s, b"/x", end_stream=False) + _rst(s) for s in range(1, 4001, 2)),
        ENHANCE_YOUR_CALM,
    ),
    (
        "header-block-past-limit",
        lambda r: (
            frame(HEADERS, 0, 1, r.header_block(extra=[(b"x-big", b"v" * 16000)]))
            + frame(CONTINUATION, 0, 1, b"\x00" * 16000) * 4
        ),
        ENHANCE_YOUR_CALM,
    ),
]


async def test_gateway_h2c_listener_answers_abuse_and_keeps_serving_grpc(plane: Plane) -> None:
    rev = plane.revision("grpc")
    plane.route("grpc", {rev.name: 100})
    await plane.ready(rev.key)
    ch = plane.channel("grpc")
    try:
        hello = ch.unary_unary(f"{GREETER}/SayHello")
        assert await asyncio.to_thread(hello, b"before", timeout=30) == b"Hello before! (revision grpc-00001)"
        for name, attack, code in GATEWAY_ABUSE:
            raw = await RawH2.connect(plane.port)
            try:
                raw.send(attack(raw))
                got = await raw.goaway()
                assert got is not None and got[1] == code, (name, got)
                assert await raw.closed(), name
            finally:
                raw.close()
            # the channel connected before the attack keeps working
            reply = await asyncio.to_thread(hello, name.encode(), timeout=30)
            assert reply == b"Hello %s! (revision grpc-00001)" % name.encode()
    finally:
        ch.close()
