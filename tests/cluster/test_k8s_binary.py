"""The real `autoscaler` process on the Kubernetes backend, reading a kubeconfig, against the fake API server.

The process is started as the rendered Deployment starts it: `python -m autoscaler --backend kubernetes`
(here with `--kubeconfig` instead of the in-cluster service account).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.fakes.fake_apiserver import running_apiserver
from tests.fakes.k8s_helpers import configmap, deployment, eventually

ROOT = Path(__file__).resolve().parents[2]
NS = "zs-system"
LEASE = "zeroscale-autoscaler-leader"


@pytest.mark.e2e
async def test_autoscaler_binary_leads_adopts_and_releases_the_lease_on_sigterm(tmp_path: Path) -> None:
    async with running_apiserver(bookmark_interval=0.5) as server:
        server.store.create(
            "configmaps", NS, configmap("config-autoscaler", {}, {"app.kubernetes.io/part-of": "zeroscale"})
        )
        server.store.create(
            "deployments",
            NS,
            deployment("hello-00001-deployment", 1, {"serving.knative.dev/revision": "hello-00001"}),
        )
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: fake, cluster: {{server: '{server.url}'}}}}]\n"
            "users: [{name: me, user: {token: t}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: me}}]\ncurrent-context: fake\n"
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "SYSTEM_NAMESPACE": NS,
            "POD_NAME": "autoscaler-test-0",
            "POD_IP": "127.0.0.1",
            "AUTOSCALER_HOST": "127.0.0.1",
            "AUTOSCALER_STAT_PORT": str(free_port()),
            "AUTOSCALER_METRICS_PORT": str(free_port()),
            "PYTHONPATH": str(ROOT),
        }
        log_path = tmp_path / "autoscaler.log"
        log_file = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "autoscaler",
            "--backend",
            "kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:

            def holder() -> str | None:
                try:
                    return server.store.get("leases", NS, LEASE)["spec"].get("holderIdentity")
                except Exception:
                    return None

            await eventually(
                lambda: holder() == "autoscaler-test-0" or proc.returncode is not None,
                timeout=30,
                what="the binary takes the lease",
            )
            assert proc.returncode is None, log_path.read_text()
            await eventually(
                lambda: (
                    {
                        ("apps", "deployments", "watch"),
                        ("discovery.k8s.io", "endpointslices", "watch"),
                        ("", "configmaps", "watch"),
                    }
                    <= server.verbs()
                ),
                timeout=30,
                what="watches",
            )
            # the revision Deployment was adopted: the autoscaler decides for it (its gauges appear)
            metrics_url = f"http://127.0.0.1:{env['AUTOSCALER_METRICS_PORT']}/metrics"

            async def scrape() -> str:
                async with httpx.AsyncClient() as c:
                    try:
                        return (await c.get(metrics_url, timeout=2.0)).text
                    except httpx.HTTPError:
                        return ""

            seen = [""]

            async def poll_metrics() -> None:
                while 'revision_name="hello-00001"' not in seen[0]:
                    seen[0] = await scrape()
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(poll_metrics(), timeout=30)
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), timeout=30)
            out = log_path.read_text()
            assert proc.returncode == 0, out
            assert holder() is None, out  # released on the way out: a successor need not wait 60 s
            assert "became the leader" in out and "released lease" in out
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log_file.close()
