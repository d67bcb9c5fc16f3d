"""Where things listen, who the control API answers, and bad files applied to a running ``zeroscale up``.

* The control API's peer check, at the level where it decides (a fake transport's peer address: this
  machine cannot make a non-loopback connection in a test).
* A real ``zeroscale up``: every socket it and its pods listen on is on 127.0.0.1, the gateway, the
  control API and each queue-proxy's serving, admin and metrics ports are all different, and neither
  the gateway nor the control API answers the other's requests.
* Bad Service files and a ConfigMap applied to it under steady load: each refused with a message that
  names the field, the status unchanged, not one request failed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cluster.control import ControlServer, _loopback_only
from tests.fakes import hostile
from tests.faults.load import Load
from tests.faults.plane import FAULT_APP

pytestmark = pytest.mark.e2e


class _FakeTransport:
    def __init__(self, peer: object) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return False


class _Plane:
    async def apply(self, text: str, source: str) -> list[dict[str, Any]]:
        return []

    async def delete(self, name: str, namespace: str) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"services": []}


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        (("127.0.0.1", 50000), True),
        (("127.8.9.10", 50000), True),
        (("::1", 50000, 0, 0), True),
        (("10.0.0.5", 50000), False),
        (("192.168.1.20", 50000), False),
        (("0.0.0.0", 50000), False),
        (("::ffff:10.0.0.5", 50000, 0, 0), False),
        (("fe80::1%eth0", 50000, 0, 2), False),
        (("2001:db8::1", 50000, 0, 0), False),
        (None, False),
        ("/run/zeroscale.sock", False),
        (("not-an-address", 1), False),
    ],
)
async def test_control_api_answers_loopback_peers_only(peer: object, allowed: bool) -> None:
    calls = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return web.json_response({"ok": True})

    request = make_mocked_request("GET", "/v1/status", transport=_FakeTransport(peer))
    resp = await _loopback_only(request, handler)
    if allowed:
        assert (resp.status, calls) == (200, ["/v1/status"])
    else:
        assert (resp.status, calls) == (403, [])
        assert isinstance(resp, web.Response) and b"loopback" in (resp.body or b"")  # type: ignore[operator]


def test_every_control_route_goes_through_the_loopback_check() -> None:
    app = ControlServer(_Plane()).app()
    assert _loopback_only in app.middlewares
    assert {r.method for r in app.router.routes()} >= {"GET", "POST", "DELETE"}


SERVICE = f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: web
spec:
  template:
    spec:
      containers:
        - command: [python3, {FAULT_APP}]
"""

ANNOTATION = '    metadata:\n      annotations:\n        autoscaling.knative.dev/target: "-5"\n'
CONTAINERS = "\n      containers:"


def _spec(line: str) -> str:
    return SERVICE.replace(CONTAINERS, f"\n      {line}{CONTAINERS}")


BAD: list[tuple[str, str, str]] = [
    (
        "unknown-field",
        SERVICE.replace("        - command:", "        - bogus: 1\n          command:"),
        "containers[0].bogus",
    ),
    (
        "bad-annotation",
        SERVICE.replace("  template:\n", "  template:\n" + ANNOTATION),
        "autoscaling.knative.dev/target",
    ),
    ("bad-concurrency", _spec("containerConcurrency: -1"), "containerConcurrency"),
    ("bad-timeout", _spec("timeoutSeconds: abc"), "timeoutSeconds"),
    (
        "traffic-sum",
        SERVICE + "  traffic:\n    - latestRevision: true\n      percent: 90\n",
        "traffic",
    ),
    (
        "traffic-unknown-revision",
        SERVICE + "  traffic:\n    - revisionName: web-00042\n      percent: 100\n",
        "revisionName",
    ),
    ("no-command", SERVICE.replace(f"command: [python3, {FAULT_APP}]", "image: ghcr.io/x/y"), "command"),
    ("missing-program", SERVICE.replace("python3", "no-such-program-here"), "command[0]"),
    ("yaml-syntax", SERVICE.replace("kind: Service", "kind: [Service"), "yaml"),
    (
        "configmap",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n"
        "data:\n  stable-window: '5'\n",
        "stable-window",
    ),
]  # fmt: skip


def _listening(pids: list[int]) -> list[tuple[int, str, int]]:
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        out += [(pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


async def test_up_listens_on_loopback_only_and_refuses_bad_files_while_serving(tmp_path: Path) -> None:
    from tests.e2e.test_up import up_process

    good = tmp_path / "web.yaml"
    good.write_text(SERVICE)
    with up_process("-f", good) as up:
        await up.wait_up()

        async def ready() -> bool:
            return bool((await up.arevision("web"))["ready_pods"] >= 1)

        await up.poll(ready, timeout=40, what="web has a ready pod")
        # -- ports ------------------------------------------------------------------------------
        procs = [up.proc.pid, *(p.pid for p in up.track())]
        listening = _listening(procs)
        ports = [port for _, _, port in listening]
        assert {ip for _, ip, _ in listening} == {"127.0.0.1"}, listening
        assert len(ports) == len(set(ports)), f"a port is shared: {listening}"
        mine = {port for pid, _, port in listening if pid == up.proc.pid}
        assert {up.port, up.admin_port} <= mine and up.port != up.admin_port, (mine, up.port, up.admin_port)
        assert len(listening) >= 2 + 4 + 1, listening  # gateway, control, QP's 4 ports, the app
        # The control API does not route services, and the gateway does not serve the control API.
        host = "web.default.example.com"
        assert hostile.request(up.admin_port, "GET", "/sleep?ms=1", host).status == 404
        assert hostile.request(up.port, "GET", "/v1/status", "127.0.0.1").status == 404
        assert hostile.request(up.port, "GET", "/v1/status", f"127.0.0.1:{up.admin_port}").status == 404
        # -- bad files under steady load ----------------------------------------------------------
        before = await up.astatus()
        load = Load(up.port, host, lambda i: f"/sleep?ms=5&id={i}", workers=4)
        load.start()
        refusals = {}
        try:
            for name, text, field in BAD:
                path = tmp_path / f"{name}.yaml"
                path.write_text(text)
                r = await asyncio.to_thread(up.cli, "apply", "-f", path)
                err = r.stderr.replace(str(path), "<file>").strip()  # the file name holds the case name
                refusals[name] = (r.returncode, err)
                assert r.returncode != 0 and field.lower() in err.lower(), (name, r.stdout, err)
                after = await up.astatus()
                assert _shape(after) == _shape(before), (name, after)
            await load.more(100)
        finally:
            await load.stop()
        assert load.failed == [] and load.sent == len(load.results), load.statuses
        for name, (code, err) in refusals.items():
            print(f"{name}: exit {code}: {err}")


def _shape(status: dict[str, Any]) -> list[Any]:
    """What must not change: services, their traffic and revisions (not the live pod counts)."""
    return [
        (s["name"], s["url"], s["traffic"], [r["name"] for r in s["revisions"]]) for s in status["services"]
    ]
