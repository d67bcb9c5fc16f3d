"""The control API of `zeroscale up` (a real server on loopback) and the apply/delete/status client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cluster import control_client
from cluster.control import MAX_APPLY_BYTES, ControlServer, _is_loopback, _loopback_only
from serving.errors import SpecError
from tests.conftest import free_port

STATUS: dict[str, Any] = {
    "services": [
        {
            "name": "hello",
            "namespace": "default",
            "url": "http://hello.default.example.com",
            "traffic": [
                {"revision": "hello-00001", "percent": 40, "tag": None},
                {"revision": "hello-00002", "percent": 60, "tag": "next"},
            ],
            "revisions": [
                {
                    "name": "hello-00002",
                    "desired_pods": 3,
                    "ready_pods": 2,
                    "concurrency": 12.5,
                    "panic": True,
                    "activator_in_path": False,
                },
                {
                    "name": "hello-00001",
                    "desired_pods": 0,
                    "ready_pods": 0,
                    "concurrency": None,
                    "panic": False,
                    "activator_in_path": True,
                },
            ],
        }
    ]
}


class FakePlane:
    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []

    async def apply(self, text: str, source: str) -> list[dict[str, Any]]:
        if "bogus" in text:
            raise SpecError(f"{source} (document 1, Service hello): spec.template.spec.bogus: unknown field")
        self.applied.append((text, source))
        return [{"message": f"service default/hello: revision hello-0000{len(self.applied)} created"}]

    async def delete(self, name: str, namespace: str) -> bool:
        return (namespace, name) == ("default", "hello")

    def status(self) -> dict[str, Any]:
        return STATUS


@pytest.fixture
async def server() -> Any:
    plane = FakePlane()
    srv = ControlServer(plane, "127.0.0.1", 0)
    port = await srv.start()
    try:
        yield plane, port
    finally:
        await srv.stop()


async def test_apply_delete_and_status_over_http(server: tuple[FakePlane, int]) -> None:
    plane, port = server
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as c:
        r = await c.post("/v1/apply", params={"source": "/x/hello.yaml"}, content=b"kind: Service")
        assert r.status_code == 200 and r.json()["applied"][0]["message"].endswith("hello-00001 created")
        assert plane.applied == [("kind: Service", "/x/hello.yaml")]
        r = await c.post("/v1/apply", params={"source": "bad.yaml"}, content=b"bogus: 1")
        assert r.status_code == 400 and "spec.template.spec.bogus" in r.json()["error"]
        assert len(plane.applied) == 1  # the refused file changed nothing
        r = await c.post("/v1/apply", content=b"x" * (MAX_APPLY_BYTES + 1))
        assert r.status_code == 413
        assert (await c.delete("/v1/services/default/hello")).status_code == 200
        r = await c.delete("/v1/services/default/nope")
        assert r.status_code == 404 and "default/nope" in r.json()["error"]
        assert (await c.get("/v1/status")).json() == STATUS


@pytest.mark.parametrize(
    ("peer", "ok"),
    [
        pytest.param(("127.0.0.1", 5000), True, id="v4-loopback"),
        pytest.param(("127.8.9.1", 5000), True, id="v4-loopback-net"),
        pytest.param(("::1", 5000, 0, 0), True, id="v6-loopback"),
        pytest.param(("10.0.0.7", 5000), False, id="private"),
        pytest.param(("fe80::1%eth0", 5000, 0, 2), False, id="link-local"),
        pytest.param(None, False, id="unknown"),
        pytest.param(("not-an-ip", 1), False, id="garbage"),
    ],
)
def test_only_loopback_peers_count_as_local(peer: object, ok: bool) -> None:
    assert _is_loopback(peer) is ok


async def test_a_request_from_another_address_is_refused_before_the_handler() -> None:
    transport = mock.Mock()
    transport.get_extra_info.return_value = ("192.168.1.20", 40000)
    request = make_mocked_request("POST", "/v1/apply", transport=transport)
    handler = mock.AsyncMock(return_value=web.Response(text="applied"))
    resp = await _loopback_only(request, handler)
    assert resp.status == 403 and not handler.called


def test_status_table_shows_traffic_and_revisions() -> None:
    text = control_client.format_status(STATUS)
    assert "default/hello  http://hello.default.example.com" in text
    assert " 40%  hello-00001" in text and " 60%  hello-00002  tag=next" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("hello-00002"))
    assert row.split() == ["hello-00002", "3", "2", "12.50", "yes", "out"]
    row = next(line for line in text.splitlines() if line.strip().startswith("hello-00001"))
    assert row.split() == ["hello-00001", "0", "0", "-", "no", "in", "path"]
    assert control_client.format_status({"services": []}) == "no services"
    rolling = {
        **STATUS["services"][0],
        "rollout": {
            "revisions": [
                {"revision": "hello-00001", "percent": 66},
                {"revision": "hello-00002", "percent": 34},
            ],
            "step_percent": 33,
            "step_seconds": 1.0,
            "next_step_in": 0.4,
        },
    }
    text = control_client.format_status({"services": [rolling]})
    assert "  rollout: hello-00001 66%, hello-00002 34%, next step of 33% in 0.4 s" in text


async def test_the_cli_against_a_running_control_api(
    server: tuple[FakePlane, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plane, port = server
    good, bad = tmp_path / "hello.yaml", tmp_path / "bad.yaml"
    good.write_text("kind: Service\n")
    bad.write_text("bogus: 1\n")

    def cli(*args: str) -> int:
        return control_client.main([*args, "--admin-port", str(port)])

    assert await asyncio.to_thread(cli, "apply", "-f", str(good)) == 0
    assert plane.applied[0][1] == str(good.resolve())  # `up` gets the absolute path of the file
    assert "hello-00001 created" in capsys.readouterr().out
    assert await asyncio.to_thread(cli, "apply", "-f", str(bad)) == 1
    err = capsys.readouterr().err
    assert "spec.template.spec.bogus" in err
    assert err.count(str(bad.resolve())) == 1  # the file is named once, by the error itself
    assert await asyncio.to_thread(cli, "apply", "-f", str(tmp_path / "missing.yaml")) == 1
    assert "cannot read" in capsys.readouterr().err
    assert await asyncio.to_thread(cli, "status", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == STATUS
    assert await asyncio.to_thread(cli, "delete", "nope") == 1
    assert "not found" in capsys.readouterr().err
    assert await asyncio.to_thread(cli, "delete", "hello") == 0


def test_the_cli_says_when_no_up_is_running(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert control_client.main(["status", "--admin-port", str(port)]) == 1
    assert f"no `zeroscale up` answers on 127.0.0.1:{port}" in capsys.readouterr().err
