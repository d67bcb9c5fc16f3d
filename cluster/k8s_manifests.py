"""A revision's Deployment and Service, built as Knative's revision reconciler builds them.

Pure: plain dicts from the parsed Service model (serving.spec). Facts carried over from Knative
(`pkg/reconciler/revision/resources/deploy.go`, `queue.go`):
- the user container keeps its image, command, args, env and resources, gets PORT and
  K_SERVICE / K_CONFIGURATION / K_REVISION, and loses its readiness probe, which the queue-proxy
  runs instead (SERVING_READINESS_PROBE);
- its preStop hook is ``GET :8022/wait-for-drain`` on the queue-proxy admin port, so the user
  container only gets SIGTERM once the queue-proxy has drained;
- the queue-proxy sidecar carries the environment contract and a readiness probe on its serving
  port with ``K-Network-Probe: queue``;
- terminationGracePeriodSeconds = the revision's timeoutSeconds; replicas start at initial scale.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cluster.k8s_names import PART_OF, revision_deployment, revision_service
from serving.errors import SpecError
from serving.spec import Service, encode_readiness_probe

__all__ = ["RevisionPlan", "QP_PORTS", "revision_deployment_manifest", "revision_service_manifest"]

# Knative's queue-proxy ports (pkg/networking/constants.go).
QP_PORTS = {"http1": 8012, "h2c": 8013, "tls": 8112, "admin": 8022, "metrics": 9090, "user-metrics": 9091}
DRAIN_PATH = "/wait-for-drain"
PROGRESS_DEADLINE_SECONDS = 600  # Knative's config-deployment progress-deadline default
QUEUE_CPU_REQUEST = "25m"  # Knative's queue-sidecar-cpu-request default
NON_ROOT_UID = 65532

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": NON_ROOT_UID,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True, slots=True)
class RevisionPlan:
    """One revision to render: its name, the Service it belongs to, and its starting replica count."""

    name: str
    namespace: str
    service: Service
    initial_scale: int
    queue_image: str


def revision_labels(plan: RevisionPlan) -> dict[str, str]:
    return {
        "app": plan.name,
        "serving.knative.dev/service": plan.service.name,
        "serving.knative.dev/configuration": plan.service.name,
        "serving.knative.dev/revision": plan.name,
        PART_OF: "zeroscale",
        "app.kubernetes.io/managed-by": "zeroscale",
    }


def _field_ref(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def _user_container(plan: RevisionPlan) -> dict[str, Any]:
    svc = plan.service
    c = svc.template.container
    if not c.image:
        raise SpecError(
            f"{svc.source}, Service {svc.name}: spec.template.spec.containers[0].image: required on "
            "Kubernetes (only local mode runs command and args without an image)"
        )
    out: dict[str, Any] = {"name": c.name or "user-container", "image": c.image}
    if c.command:
        out["command"] = list(c.command)
    if c.args:
        out["args"] = list(c.args)
    if c.working_dir:
        out["workingDir"] = c.working_dir
    env = [{"name": e.name, "value": e.value} for e in c.env]
    env += [
        {"name": "PORT", "value": str(c.user_port)},
        {"name": "K_REVISION", "value": plan.name},
        {"name": "K_CONFIGURATION", "value": svc.name},
        {"name": "K_SERVICE", "value": svc.name},
    ]
    out["env"] = env
    out["ports"] = [{"name": c.port_name or "user-port", "containerPort": c.user_port, "protocol": "TCP"}]
    if c.resources:
        out["resources"] = {k: dict(v) for k, v in c.resources.items()}
    out["lifecycle"] = {"preStop": {"httpGet": {"path": DRAIN_PATH, "port": QP_PORTS["admin"]}}}
    out["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return out


def _queue_probe(plan: RevisionPlan, serving_port: int) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {
            "path": "/",
            "port": serving_port,
            "httpHeaders": [{"name": "K-Network-Probe", "value": "queue"}],
        }
    }
    user = plan.service.template.container.readiness_probe
    if user is not None:
        for key, value in (
            ("initialDelaySeconds", user.initial_delay_seconds),
            ("timeoutSeconds", user.timeout_seconds),
            ("periodSeconds", user.period_seconds),
            ("successThreshold", user.success_threshold),
            ("failureThreshold", user.failure_threshold),
        ):
            if value:
                probe[key] = value
    # Knative's default (periodSeconds 0) means "aggressive": the queue-proxy retries every 50 ms itself.
    # The kubelet cannot probe more often than every second; ask it to, so Ready follows quickly.
    probe.setdefault("periodSeconds", 1)
    return probe


def _queue_container(plan: RevisionPlan) -> dict[str, Any]:
    svc, tmpl = plan.service, plan.service.template
    c = tmpl.container
    serving_port = QP_PORTS["h2c"] if c.protocol == "h2c" else QP_PORTS["http1"]
    env: list[dict[str, Any]] = [
        {"name": "SERVING_NAMESPACE", "value": plan.namespace},
        {"name": "SERVING_SERVICE", "value": svc.name},
        {"name": "SERVING_CONFIGURATION", "value": svc.name},
        {"name": "SERVING_REVISION", "value": plan.name},
        {"name": "QUEUE_SERVING_PORT", "value": str(serving_port)},
        {"name": "QUEUE_SERVING_TLS_PORT", "value": str(QP_PORTS["tls"])},
        {"name": "CONTAINER_CONCURRENCY", "value": str(tmpl.container_concurrency)},
        {"name": "REVISION_TIMEOUT_SECONDS", "value": str(tmpl.timeout_seconds)},
        {
            "name": "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            "value": str(tmpl.response_start_timeout_seconds),
        },
        {"name": "REVISION_IDLE_TIMEOUT_SECONDS", "value": str(tmpl.idle_timeout_seconds)},
        {"name": "SERVING_POD", **_field_ref("metadata.name")},
        {"name": "SERVING_POD_IP", **_field_ref("status.podIP")},
        {"name": "HOST_IP", **_field_ref("status.hostIP")},
        {"name": "SYSTEM_NAMESPACE", "value": plan.namespace},
        {"name": "SERVING_LOGGING_CONFIG", "value": ""},
        {"name": "SERVING_LOGGING_LEVEL", "value": ""},
        {"name": "USER_PORT", "value": str(c.user_port)},
        {"name": "SERVING_READINESS_PROBE", "value": encode_readiness_probe(c.readiness_probe, c.user_port)},
        {"name": "ENABLE_HTTP2_AUTO_DETECTION", "value": "false"},
        {"name": "ENABLE_HTTP_FULL_DUPLEX", "value": "false"},
        {"name": "ENABLE_MULTI_CONTAINER_PROBES", "value": "false"},
    ]
    return {
        "name": "queue-proxy",
        "image": plan.queue_image,
        "ports": [
            {
                "name": "h2c" if serving_port == QP_PORTS["h2c"] else "queue-port",
                "containerPort": serving_port,
            },
            {"name": "http-queueadm", "containerPort": QP_PORTS["admin"]},
            {"name": "http-autometric", "containerPort": QP_PORTS["metrics"]},
            {"name": "http-usermetric", "containerPort": QP_PORTS["user-metrics"]},
        ],
        "env": env,
        "readinessProbe": _queue_probe(plan, serving_port),
        "resources": {"requests": {"cpu": QUEUE_CPU_REQUEST}},
        "securityContext": dict(RESTRICTED),
    }


def revision_deployment_manifest(plan: RevisionPlan) -> dict[str, Any]:
    tmpl = plan.service.template
    labels = revision_labels(plan)
    pod_labels = {**dict(tmpl.labels), **labels}
    annotations: Mapping[str, str] = dict(tmpl.annotations)
    meta: dict[str, Any] = {
        "name": revision_deployment(plan.name),
        "namespace": plan.namespace,
        "labels": labels,
    }
    pod_meta: dict[str, Any] = {"labels": pod_labels}
    if annotations:
        meta["annotations"] = dict(annotations)
        pod_meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": plan.initial_scale,
            "selector": {"matchLabels": {"serving.knative.dev/revision": plan.name}},
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": {
                "metadata": pod_meta,
                "spec": {
                    "containers": [_user_container(plan), _queue_container(plan)],
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": tmpl.timeout_seconds,
                },
            },
        },
    }


def revision_service_manifest(plan: RevisionPlan) -> dict[str, Any]:
    """The Service whose EndpointSlices list the revision's pods (the activator and autoscaler watch them)."""
    h2c = plan.service.template.container.protocol == "h2c"
    port = {
        "name": "h2c" if h2c else "http",
        "port": 80,
        "targetPort": QP_PORTS["h2c"] if h2c else QP_PORTS["http1"],
        "protocol": "TCP",
    }
    if h2c:
        port["appProtocol"] = "kubernetes.io/h2c"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": revision_service(plan.name),
            "namespace": plan.namespace,
            "labels": revision_labels(plan),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"serving.knative.dev/revision": plan.name},
            "ports": [port],
        },
    }


def revision_record(plan: RevisionPlan) -> dict[str, Any]:
    """What the gateway needs to know of a revision, for the routes ConfigMap's revisions.json."""
    t = plan.service.template
    return {
        "name": plan.name,
        "namespace": plan.namespace,
        "service": plan.service.name,
        "containerConcurrency": t.container_concurrency,
        "timeoutSeconds": t.timeout_seconds,
        "responseStartTimeoutSeconds": t.response_start_timeout_seconds,
        "idleTimeoutSeconds": t.idle_timeout_seconds,
        "protocol": t.container.protocol,
        "annotations": dict(t.annotations),
    }


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
