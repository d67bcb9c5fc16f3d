"""Names and labels shared by the rendered manifests and the code that finds those objects again."""

from __future__ import annotations

__all__ = [
    "ACTIVATOR",
    "AUTOSCALER",
    "CONFIG_LABEL",
    "CONFIG_MAPS",
    "LEASE",
    "PART_OF",
    "ROUTES_CONFIGMAP",
    "ROUTES_KEY",
    "revision_deployment",
    "revision_service",
]

ACTIVATOR = "zeroscale-activator"  # Deployment, Service and ServiceAccount of the gateway/activator
AUTOSCALER = "zeroscale-autoscaler"  # Deployment, Service and ServiceAccount of the autoscaler
LEASE = "zeroscale-autoscaler-leader"  # coordination.k8s.io/v1 Lease the autoscaler replicas elect on
ROUTES_CONFIGMAP = "zeroscale-routes"  # the Knative Service documents (routes and revisions)
ROUTES_KEY = "services.yaml"
# Knative's own ConfigMap names; their data keys are Knative's.
CONFIG_MAPS = ("config-autoscaler", "config-defaults", "config-network", "config-domain")
PART_OF = "app.kubernetes.io/part-of"
CONFIG_LABEL = f"{PART_OF}=zeroscale"  # selector of every ConfigMap zeroscale watches


def revision_deployment(revision: str) -> str:
    """The Deployment of a revision, named as Knative names it."""
    return f"{revision}-deployment"


def revision_service(revision: str) -> str:
    """The Service in front of a revision's queue-proxies; its EndpointSlices list the pods."""
    return revision
