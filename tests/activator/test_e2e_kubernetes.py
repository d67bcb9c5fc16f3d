"""``activator --backend kubernetes`` against the fake API server: routes from the zeroscale-routes
ConfigMap, pods from EndpointSlices, stats to a websocket double of the autoscaler."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from aiohttp import WSMsgType, web

from serving.stat import WireStat, decode_wire_stats
from tests.conftest import ROOT, free_port
from tests.fakes.fake_apiserver import running_apiserver
from tests.fakes.k8s_helpers import configmap, endpoint_slice, eventually

pytestmark = pytest.mark.e2e

NS = "default"
HOST = f"hello.{NS}.svc.cluster.local"


def _routes() -> dict[str, str]:
    svc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": NS},
        "spec": {"template": {"metadata": {"name": "hello-00001"}}},
    }
    rev = {"name": "hello-00001", "namespace": NS, "service": "hello", "containerConcurrency": 1}
    return {"services.yaml": yaml.safe_dump_all([svc]), "revisions.json": json.dumps([rev])}


async def test_kubernetes_backend_routes_and_holds_until_endpoints(tmp_path: Path) -> None:
    stats: list[WireStat] = []

    async def pod_handler(request: web.Request) -> web.Response:
        if request.path == "/healthz" and request.headers.get("K-Network-Probe") == "queue":
            return web.Response(text="queue")
        return web.Response(text=f"pod saw {request.headers.get('K-Original-Host')}")

    async def stat_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                stats.extend(decode_wire_stats(msg.data))
        return ws

    runners = []
    for handler, path in ((pod_handler, "/{tail:.*}"), (stat_ws, "/")):
        app = web.Application()
        app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
    pod_port, ws_port = free_port(), free_port()
    await web.TCPSite(runners[0], "127.0.0.1", pod_port).start()
    await web.TCPSite(runners[1], "127.0.0.1", ws_port).start()
    proc = None
    try:
        async with running_apiserver(bookmark_interval=0.2) as server:
            server.store.create(
                "configmaps",
                NS,
                configmap("zeroscale-routes", _routes(), {"app.kubernetes.io/part-of": "zeroscale"}),
            )
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(
                "apiVersion: v1\nkind: Config\n"
                f"clusters: [{{name: fake, cluster: {{server: '{server.url}'}}}}]\n"
                "users: [{name: me, user: {token: t}}]\n"
                "contexts: [{name: fake, context: {cluster: fake, user: me}}]\ncurrent-context: fake\n"
            )
            port, admin, h2c_port = free_port(), free_port(), free_port()
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "KUBECONFIG": str(kubeconfig),
                "SYSTEM_NAMESPACE": NS,
                "POD_NAME": "activator-test-0",
                "POD_IP": "127.0.0.1",
                "ACTIVATOR_HOST": "127.0.0.1",
                "AUTOSCALER_URL": f"ws://127.0.0.1:{ws_port}/",
                "DRAIN_TIMEOUT_SECONDS": "0",
                "ACTIVATOR_H2C_PORT": str(h2c_port),
            }
            log_path = tmp_path / "activator.log"
            with log_path.open("wb") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "activator", "--backend", "kubernetes", "--port", str(port),
                    "--admin-port", str(admin), cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                )  # fmt: skip
            async with httpx.AsyncClient(timeout=30) as c:

                async def healthy() -> bool:
                    try:
                        return (await c.get(f"http://127.0.0.1:{admin}/healthz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                ok = False
                for _ in range(600):
                    if proc.returncode is not None or (ok := await healthy()):
                        break
                    await asyncio.sleep(0.05)
                assert ok, log_path.read_text()
                # Ready means the ConfigMap was read; the revision has no pod yet: the request waits.
                req = asyncio.create_task(c.get(f"http://127.0.0.1:{port}/", headers={"Host": HOST}))
                await eventually(lambda: any(s.name == "hello-00001" for s in stats), 30, "the poke")
                assert not req.done()
                pod = ("hello-pod", "127.0.0.1", True, True, False)
                slice_ = endpoint_slice("hello-00001-abc", "hello-00001", [pod], port=pod_port)
                server.store.create("endpointslices", NS, slice_)
                r = await asyncio.wait_for(req, 30)
                assert r.status_code == 200 and r.text == f"pod saw {HOST}"
                assert float(r.headers["x-zeroscale-cold-start"]) > 0
                # the second listener (Knative's 8013) takes h2c with prior knowledge
                async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as h2:
                    r2 = await h2.get(f"http://127.0.0.1:{h2c_port}/", headers={"Host": HOST})
                assert r2.status_code == 200 and r2.http_version == "HTTP/2" and r2.text == f"pod saw {HOST}"
                unknown = await c.get(
                    f"http://127.0.0.1:{port}/", headers={"Host": "nope.default.svc.cluster.local"}
                )
                assert unknown.status_code == 404
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log_path.read_text()
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        for runner in runners:
            await runner.cleanup()
