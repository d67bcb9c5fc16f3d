"""The cluster-wide part of a render: gateway/activator and autoscaler, their RBAC, and the ConfigMaps.

RBAC grants exactly what the code in cluster/k8s_*.py calls (tests/cluster/test_render_rbac.py runs
that code against the fake API server and compares the verbs it used with these rules):
- the activator lists and watches EndpointSlices (revision pods, activator peers) and ConfigMaps;
- the autoscaler also lists and watches Deployments (ready pods), gets and patches their ``scale``
  subresource, and creates / gets / updates its one Lease.
"""

from __future__ import annotations

from typing import Any

from cluster.k8s_manifests import NON_ROOT_UID, RESTRICTED
from cluster.k8s_names import ACTIVATOR, AUTOSCALER, LEASE, PART_OF, ROUTES_CONFIGMAP

__all__ = ["ACTIVATOR_RULES", "AUTOSCALER_RULES", "configmap", "system_manifests"]

_WATCH = ["list", "watch"]
ACTIVATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _WATCH},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": _WATCH},
]
AUTOSCALER_RULES: list[dict[str, Any]] = [
    *ACTIVATOR_RULES,
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _WATCH},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]},
    # create cannot be limited to a name (the object does not exist yet); get/update can
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "update"],
        "resourceNames": [LEASE],
    },
]

SYSTEM_LABELS = {PART_OF: "zeroscale", "app.kubernetes.io/managed-by": "zeroscale"}


def _meta(name: str, namespace: str, component: str | None = None) -> dict[str, Any]:
    labels = dict(SYSTEM_LABELS)
    if component:
        labels["app.kubernetes.io/name"] = component
    return {"name": name, "namespace": namespace, "labels": labels}


def configmap(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, namespace), "data": dict(data)}


def _env_ref(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _component(
    name: str,
    namespace: str,
    image: str,
    ports: list[tuple[str, int]],
    probe_port: int,
    replicas: int,
    grace_seconds: int,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    labels = {**SYSTEM_LABELS, "app.kubernetes.io/name": name}
    container = {
        "name": name.removeprefix("zeroscale-"),
        "image": image,
        "args": ["--backend", "kubernetes", *extra_args],
        "env": [
            _env_ref("SYSTEM_NAMESPACE", "metadata.namespace"),
            _env_ref("POD_NAME", "metadata.name"),
            _env_ref("POD_IP", "status.podIP"),
        ],
        "ports": [{"name": pname, "containerPort": port} for pname, port in ports],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": probe_port}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": dict(RESTRICTED),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            # a new pod is ready before an old one goes: a rollout never leaves fewer replicas serving
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [container],
                    # SIGTERM drains: health fails, in-flight requests finish
                    "terminationGracePeriodSeconds": grace_seconds,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": NON_ROOT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                },
            },
        },
    }


def _service(name: str, namespace: str, ports: list[tuple[str, int, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, name),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in ports],
        },
    }


def _rbac(name: str, namespace: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace, name)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(name, namespace, name),
            "rules": [dict(r) for r in rules],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(name, namespace, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def system_manifests(
    namespace: str,
    image_prefix: str,
    version: str,
    *,
    activator_replicas: int = 1,
    autoscaler_replicas: int = 1,
    max_revision_timeout_seconds: int = 600,
    domain: str | None = None,
) -> list[dict[str, Any]]:
    """ServiceAccounts, Roles, RoleBindings, Deployments and Services of the two cluster components.

    The gateway/activator listens on 8012 (http1) and 8013 (h2c) like Knative's; its Service
    ``zeroscale-activator`` is where traffic enters (port 80). The autoscaler takes activator stats
    on 8080 (websocket) and serves Prometheus metrics on 9090.

    The activator's termination grace is config-defaults' max-revision-timeout-seconds, as Knative
    learnt to set it (knative/serving PR 8623): a draining activator may hold a request that long.
    ``domain`` (config-domain's default domain) becomes the gateway's ``--domain``; without it the
    gateway routes ``{service}.{namespace}.svc.cluster.local``.
    """
    out: list[dict[str, Any]] = []
    out += _rbac(ACTIVATOR, namespace, ACTIVATOR_RULES)
    out += _rbac(AUTOSCALER, namespace, AUTOSCALER_RULES)
    out.append(
        _component(
            ACTIVATOR,
            namespace,
            f"{image_prefix}activator:{version}",
            [("http1", 8012), ("h2c", 8013), ("metrics", 9090)],
            8012,
            activator_replicas,
            max_revision_timeout_seconds,
            ("--domain", domain) if domain else (),
        )
    )
    out.append(_service(ACTIVATOR, namespace, [("http", 80, 8012), ("h2c", 81, 8013)]))
    out.append(
        _component(
            AUTOSCALER,
            namespace,
            f"{image_prefix}autoscaler:{version}",
            [("websocket", 8080), ("metrics", 9090)],
            8080,
            autoscaler_replicas,
            30,
        )
    )
    out.append(_service(AUTOSCALER, namespace, [("http", 8080, 8080), ("http-metrics", 9090, 9090)]))
    return out


def routes_configmap(namespace: str, services_yaml: str, revisions_json: str) -> dict[str, Any]:
    return configmap(
        ROUTES_CONFIGMAP, namespace, {"services.yaml": services_yaml, "revisions.json": revisions_json}
    )
