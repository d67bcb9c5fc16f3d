"""The autoscaler's ``Scaler`` on Kubernetes: the apps/v1 Deployment ``scale`` subresource.

``scale(revision, desired)`` reads the revision Deployment's Scale and JSON-patches ``spec.replicas``
when it differs (on the subresource: it touches nothing else of the Deployment).
``ready_pods(revision)`` answers from a Deployment informer's cache (``status.readyReplicas``), so
that a decision tick costs no request.

With a ``leadership`` the scaler writes only while it holds the lease, and bounds each write by
the time the lease still guarantees, so a replica that lost the lease does not write late.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from cluster.k8s_informer import Informer
from cluster.k8s_names import revision_deployment
from serving.errors import ZeroscaleError
from serving.types import RevisionKey

__all__ = ["KubeScaler", "Leadership", "NotLeaderError", "ScaleError"]

log = logging.getLogger("zeroscale.k8s.scaler")

FIELD_MANAGER = "zeroscale-autoscaler"  # who owns spec.replicas in managedFields


class Leadership(Protocol):
    def remaining(self) -> float:
        """Seconds this replica is still sure to be the leader (<= 0: it is not)."""
        ...


class NotLeaderError(ZeroscaleError):
    """This replica does not hold the autoscaler lease, so it must not write a scale."""


class ScaleError(ZeroscaleError):
    """The API server refused or failed a scale read or write."""


class KubeScaler:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        *,
        leadership: Leadership | None = None,
        request_timeout: float = 10.0,
        **informer_kwargs: Any,
    ) -> None:
        self.namespace = namespace
        self._apps = client.AppsV1Api(api)
        self._leadership = leadership
        self._timeout = request_timeout
        self.informer = Informer(
            self._apps.list_namespaced_deployment,
            namespace,
            label_selector="serving.knative.dev/revision",
            name=f"deployments[{namespace}]",
            **informer_kwargs,
        )
        self.writes = 0

    async def run(self) -> None:
        """Keep the Deployment cache (for ``ready_pods``) current until cancelled."""
        await self.informer.run()

    def _budget(self) -> float:
        if self._leadership is None:
            return self._timeout
        left = self._leadership.remaining()
        if left <= 0:
            raise NotLeaderError("not the autoscaler leader: scale not written")
        return min(self._timeout, left)

    async def scale(self, revision: RevisionKey, desired: int) -> None:
        if desired < 0:
            raise ValueError(f"desired scale of {revision} must be >= 0, got {desired}")
        name = revision_deployment(revision.name)
        try:
            current = await self._apps.read_namespaced_deployment_scale(
                name, revision.namespace, _request_timeout=self._budget()
            )
            if current.spec is not None and current.spec.replicas == desired:
                return
            await self._apps.patch_namespaced_deployment_scale(
                name,
                revision.namespace,
                # a JSON patch of spec.replicas, as Knative's scaler writes it (application/json-patch+json)
                body=[{"op": "replace", "path": "/spec/replicas", "value": desired}],
                field_manager=FIELD_MANAGER,
                _request_timeout=self._budget(),
            )
        except ApiException as e:
            raise ScaleError(f"scaling {revision} to {desired}: {e.status} {e.reason}") from e
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            # includes a write cut short because the lease time it was allowed ran out
            raise ScaleError(f"scaling {revision} to {desired}: {type(e).__name__} {e}") from e
        self.writes += 1
        old = current.spec.replicas if current.spec is not None else None
        log.info("scaled %s from %s to %d", revision, old, desired)

    def ready_pods(self, revision: RevisionKey) -> int | None:
        """Ready replicas from the cache; None when the Deployment is unknown (count failed)."""
        dep = self.informer.cache.get((revision.namespace, revision_deployment(revision.name)))
        if dep is None:
            return None
        return int((dep.get("status") or {}).get("readyReplicas") or 0)

    def desired_pods(self, revision: RevisionKey) -> int | None:
        dep = self.informer.cache.get((revision.namespace, revision_deployment(revision.name)))
        if dep is None:
            return None
        return int((dep.get("spec") or {}).get("replicas", 1))
