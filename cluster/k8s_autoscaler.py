"""The autoscaler binary's ``Backend`` on Kubernetes: ``make_backend(env)`` for ``autoscaler/__main__.py``.

What it hands the autoscaler app:
- ``scaler``: writes through the Deployment ``scale`` subresource, only while holding the Lease;
- ``pods``: ready pods from the Deployments' ``status.readyReplicas`` (None until known);
- ``targets``: the pods to scrape, from the revisions' EndpointSlices;
and ``run(app)`` keeps the caches current, adopts every revision Deployment (its
``autoscaling.knative.dev/*`` annotations and the queue-proxy's CONTAINER_CONCURRENCY) into
``app.multiscaler``, and applies ``config-autoscaler`` changes without a restart.

The API client is made inside ``run`` (aiohttp needs the running loop); until then the scaler refuses
to write, ``pods`` answers None and ``targets`` is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from kubernetes_asyncio import client

from autoscaler.config import from_mapping
from cluster.k8s_cache import Change, Obj
from cluster.k8s_scaler import NotLeaderError
from cluster.kubernetes import AutoscalerBackend, load_client, pod_identity, system_namespace
from serving.config import CONFIG_AUTOSCALER
from serving.errors import ConfigError
from serving.spec import AUTOSCALING_PREFIX
from serving.types import Endpoint, RevisionKey

__all__ = ["KubeAutoscalerBackend", "make_backend", "revision_inputs"]

log = logging.getLogger("zeroscale.k8s.autoscaler")

REVISION_LABEL = "serving.knative.dev/revision"


class _MultiScaler(Protocol):
    def upsert(
        self, revision: RevisionKey, annotations: Mapping[str, str], container_concurrency: int = 0
    ) -> Any: ...

    def update_config(self, config: Any) -> None: ...


class _App(Protocol):
    @property
    def multiscaler(self) -> _MultiScaler: ...

    def remove(self, revision: Any) -> None: ...


def revision_inputs(dep: Obj) -> tuple[RevisionKey, dict[str, str], int] | None:
    """(revision, autoscaling annotations, containerConcurrency) of a revision Deployment, or None."""
    meta = dep.get("metadata") or {}
    name = (meta.get("labels") or {}).get(REVISION_LABEL)
    if not name:
        return None
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(AUTOSCALING_PREFIX)
    }
    cc = 0
    pod = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
    for c in pod.get("containers") or []:
        if c.get("name") == "queue-proxy":
            for e in c.get("env") or []:
                if e.get("name") == "CONTAINER_CONCURRENCY":
                    try:
                        cc = int(e.get("value") or 0)
                    except ValueError:
                        log.error(
                            "Deployment %s: CONTAINER_CONCURRENCY=%r is not an integer",
                            meta.get("name"),
                            e.get("value"),
                        )
    return RevisionKey(str(meta.get("namespace") or ""), name), annotations, cc


class KubeAutoscalerBackend:
    def __init__(
        self,
        namespace: str,
        *,
        kubeconfig: str | None = None,
        identity: str | None = None,
        elector_kwargs: Mapping[str, Any] | None = None,
        connect: Callable[[str | None], Awaitable[client.ApiClient]] = load_client,
        **informer_kwargs: Any,
    ) -> None:
        self.namespace = namespace
        self._kubeconfig = kubeconfig
        self._identity = identity
        self._elector_kwargs = dict(elector_kwargs or {})
        self._connect = connect
        self._informer_kwargs = informer_kwargs
        self.parts: AutoscalerBackend | None = None
        self._known: dict[RevisionKey, tuple[dict[str, str], int]] = {}
        # the three roles the autoscaler app asks for, all served by this object
        self.scaler = self
        self.pods = self
        self.targets = self

    # ---- Scaler, ReadyPodCounter, ScrapeTargets --------------------------------------------------------
    async def scale(self, revision: RevisionKey, desired: int) -> None:
        if self.parts is None:
            raise NotLeaderError("not connected to the Kubernetes API yet")
        await self.parts.scaler.scale(revision, desired)

    def ready_pods(self, revision: RevisionKey) -> int | None:
        return None if self.parts is None else self.parts.scaler.ready_pods(revision)

    def get(self, revision: RevisionKey) -> Sequence[Endpoint]:
        return () if self.parts is None else self.parts.endpoints.get(revision)

    # ---- the loop -----------------------------------------------------------------------------------
    async def run(self, app: _App) -> None:
        api = await self._connect(self._kubeconfig)
        try:
            parts = AutoscalerBackend.create(
                api,
                self.namespace,
                lambda name, data: self._on_config(app, name, data),
                identity=self._identity,
                elector_kwargs=self._elector_kwargs,
                **self._informer_kwargs,
            )
            parts.scaler.informer.add_handler(lambda changes: self._deployments_changed(app, changes))
            self.parts = parts
            await parts.run()
        finally:
            self.parts = None
            await api.close()

    def _deployments_changed(self, app: _App, changes: list[Change]) -> None:
        for ch in changes:
            if ch.new is None:
                old = revision_inputs(ch.old or {})
                if old is not None and self._known.pop(old[0], None) is not None:
                    app.remove(old[0])
                    log.info("revision %s gone: no longer scaled", old[0])
                continue
            got = revision_inputs(ch.new)
            if got is None:
                continue
            key, annotations, cc = got
            if self._known.get(key) == (annotations, cc):
                continue  # status-only change (replicas, readiness)
            try:
                app.multiscaler.upsert(key, annotations, cc)
            except ConfigError as e:
                log.error("revision %s not scaled: %s", key, e)
                continue
            self._known[key] = (annotations, cc)

    @staticmethod
    def _on_config(app: _App, name: str, data: Mapping[str, str] | None) -> None:
        if name == CONFIG_AUTOSCALER:
            app.multiscaler.update_config(from_mapping(dict(data or {})))
            log.info("config-autoscaler applied")


def make_backend(env: Mapping[str, str]) -> KubeAutoscalerBackend:
    """For ``autoscaler`` on Kubernetes: SYSTEM_NAMESPACE, POD_NAME (Lease identity), KUBECONFIG."""
    return KubeAutoscalerBackend(
        system_namespace(env),
        kubeconfig=env.get("KUBECONFIG") or None,
        identity=pod_identity(env)[0],
    )
