"""A stand-in for the Deployment controller, kubelet and EndpointSlice controller on the fake API server.

When a revision Deployment's ``spec.replicas`` changes, it "starts" or "stops" pods: the revision
Service's EndpointSlice gets one endpoint per pod (IP 10.0.<n>.<i>, port 8012), not ready at first;
``make_ready(deployment)`` then marks every pod ready and sets ``status.readyReplicas``, as a passing
readiness probe would. ``auto_ready=True`` does both at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.fakes.k8s_store import Event, Store

__all__ = ["FakeDeploymentController"]


class FakeDeploymentController:
    def __init__(
        self,
        store: Store,
        namespace: str = "default",
        *,
        auto_ready: bool = False,
        port: int = 8012,
        ip_for: Callable[[str, int], str] | None = None,
    ) -> None:
        """``ip_for(revision, i)`` picks pod i's address (default 10.0.<n>.<i+1>, never dialled);
        tests that probe the pods give 127.0.0.1 and the ``port`` of a local responder."""
        self.store = store
        self.namespace = namespace
        self.auto_ready = auto_ready
        self.port = port
        self.ip_for = ip_for or (lambda rev, i: f"10.0.{sum(ord(c) for c in rev) % 250}.{i + 1}")
        self._ready: dict[str, int] = {}
        store.listeners.append(self._on_event)

    def _on_event(self, ev: Event) -> None:
        if ev.resource != "deployments" or ev.type == "DELETED":
            return
        name = ev.obj["metadata"]["name"]
        want = int(ev.obj["spec"].get("replicas", 1))
        have = int((ev.obj.get("status") or {}).get("replicas", -1))
        if want != have:  # a spec change: reconcile after the write that triggered us has finished
            asyncio.get_running_loop().call_soon(self._reconcile, name)

    @staticmethod
    def revision_of(deployment: str) -> str:
        return deployment.removesuffix("-deployment")

    def _reconcile(self, name: str) -> None:
        dep = self.store.get("deployments", self.namespace, name)
        want = int(dep["spec"].get("replicas", 1))
        ready = min(self._ready.get(name, 0), want)
        if self.auto_ready:
            ready = want
        self._ready[name] = ready
        self._write(name, want, ready)

    def make_ready(self, name: str) -> None:
        dep = self.store.get("deployments", self.namespace, name)
        want = int(dep["spec"].get("replicas", 1))
        self._ready[name] = want
        self._write(name, want, want)

    def _write(self, name: str, replicas: int, ready: int) -> None:
        dep = self.store.get("deployments", self.namespace, name)
        dep["status"] = {
            "replicas": replicas,
            "readyReplicas": ready,
            "observedGeneration": dep["metadata"].get("generation", 1),
        }
        self.store.update("deployments", self.namespace, dep, check_rv=False)
        rev = self.revision_of(name)
        endpoints: list[dict[str, Any]] = [
            {
                "addresses": [self.ip_for(rev, i)],
                "conditions": {"ready": i < ready, "serving": i < ready, "terminating": False},
                "targetRef": {"kind": "Pod", "name": f"{name}-pod{i + 1}", "namespace": self.namespace},
            }
            for i in range(replicas)
        ]
        slice_: dict[str, Any] = {
            "metadata": {"name": f"{rev}-abcde", "labels": {"kubernetes.io/service-name": rev}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": self.port, "protocol": "TCP"}],
            "endpoints": endpoints,
        }
        try:
            current = self.store.get("endpointslices", self.namespace, slice_["metadata"]["name"])
        except Exception:
            self.store.create("endpointslices", self.namespace, slice_)
            return
        current["endpoints"] = endpoints
        self.store.update("endpointslices", self.namespace, current, check_rv=False)
