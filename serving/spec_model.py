"""The serving.knative.dev/v1 Service model: frozen dataclasses with Knative's defaults already applied."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec_probe import Probe

__all__ = [
    "API_VERSION",
    "AUTOSCALING_ANNOTATIONS",
    "AUTOSCALING_PREFIX",
    "Container",
    "DEFAULT_USER_PORT",
    "EnvVar",
    "ROLLOUT_DURATION",
    "RevisionTemplate",
    "Service",
    "TrafficTarget",
]

API_VERSION = "serving.knative.dev/v1"
AUTOSCALING_PREFIX = "autoscaling.knative.dev/"
AUTOSCALING_ANNOTATIONS = (
    "class",
    "metric",
    "target",
    "target-utilization-percentage",
    "target-burst-capacity",
    "window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "min-scale",
    "max-scale",
    "initial-scale",
    "activation-scale",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "metric-aggregation-algorithm",
)
ROLLOUT_DURATION = "serving.knative.dev/rollout-duration"
DEFAULT_USER_PORT = 8080


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class Container:
    """containers[0]. ``image`` is "" when absent: local mode runs ``command`` + ``args`` instead."""

    name: str = ""
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    container_port: int | None = None
    port_name: str = ""  # "", "http1" or "h2c"
    readiness_probe: Probe | None = None
    working_dir: str = ""
    # Kubernetes resource requests/limits, kept as given for `render`; local mode ignores them.
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def user_port(self) -> int:
        """The port the user container serves on in a cluster (Knative: first containerPort, else 8080)."""
        return self.container_port or DEFAULT_USER_PORT

    @property
    def protocol(self) -> str:
        return "h2c" if self.port_name == "h2c" else "http1"

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.image:
            out["image"] = self.image
        if self.command:
            out["command"] = list(self.command)
        if self.args:
            out["args"] = list(self.args)
        if self.working_dir:
            out["workingDir"] = self.working_dir
        if self.env:
            out["env"] = [{"name": e.name, "value": e.value} for e in self.env]
        if self.container_port is not None:
            port: dict[str, Any] = {"containerPort": self.container_port}
            if self.port_name:
                port["name"] = self.port_name
            out["ports"] = [port]
        if self.readiness_probe is not None:
            out["readinessProbe"] = self.readiness_probe.to_k8s()
        if self.resources:
            out["resources"] = {k: dict(v) for k, v in self.resources.items()}
        return out


@dataclass(frozen=True, slots=True)
class RevisionTemplate:
    """spec.template with Knative's defaults applied (timeouts and concurrency from config-defaults)."""

    container: Container
    name: str = ""  # spec.template.metadata.name: "" means generated ({service}-{00001})
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    container_concurrency: int = 0
    timeout_seconds: int = 300
    response_start_timeout_seconds: int = 0  # 0: off
    idle_timeout_seconds: int = 0  # 0: off

    @property
    def autoscaling(self) -> dict[str, str]:
        """The autoscaling.knative.dev/* annotations, keyed by the part after the prefix."""
        return {
            k[len(AUTOSCALING_PREFIX) :]: v
            for k, v in self.annotations.items()
            if k.startswith(AUTOSCALING_PREFIX)
        }

    def to_k8s(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.name:
            meta["name"] = self.name
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if self.labels:
            meta["labels"] = dict(self.labels)
        spec: dict[str, Any] = {
            "containerConcurrency": self.container_concurrency,
            "timeoutSeconds": self.timeout_seconds,
        }
        if self.response_start_timeout_seconds:
            spec["responseStartTimeoutSeconds"] = self.response_start_timeout_seconds
        if self.idle_timeout_seconds:
            spec["idleTimeoutSeconds"] = self.idle_timeout_seconds
        spec["containers"] = [self.container.to_k8s()]
        return {"metadata": meta, "spec": spec}

    def template_hash(self) -> str:
        """Stable across processes: equal templates (after defaults) hash the same, so re-applying a
        file makes no new revision, and any change to the template makes the next one."""
        canonical = json.dumps(self.to_k8s(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    """One entry of spec.traffic: a named revision or the latest ready one, a percent, an optional tag."""

    revision_name: str | None = None
    latest_revision: bool = False
    percent: int | None = None  # None: not set (no share of the default route; a tag-only target)
    tag: str | None = None

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tag:
            out["tag"] = self.tag
        if self.revision_name:
            out["revisionName"] = self.revision_name
        out["latestRevision"] = self.latest_revision
        if self.percent is not None:
            out["percent"] = self.percent
        return out


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    template: RevisionTemplate
    namespace: str = "default"
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    # All traffic to the latest revision when spec.traffic is absent, as Knative defaults it.
    traffic: tuple[TrafficTarget, ...] = (TrafficTarget(latest_revision=True, percent=100),)
    traffic_given: bool = False
    rollout_duration_seconds: float | None = None  # the Service's annotation; None: config-network's
    source: str = "<input>"  # "file.yaml (document 2)" for messages
    base_dir: str = "."  # the file's directory: a local process runs there

    @property
    def configuration_name(self) -> str:
        return self.name  # a Service's Configuration (and Route) share its name

    def to_k8s(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if self.labels:
            meta["labels"] = dict(self.labels)
        spec: dict[str, Any] = {"template": self.template.to_k8s()}
        if self.traffic_given:
            spec["traffic"] = [t.to_k8s() for t in self.traffic]
        return {"apiVersion": API_VERSION, "kind": "Service", "metadata": meta, "spec": spec}
