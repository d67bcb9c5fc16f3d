"""Backends for the `autoscaler` binary by name (one machine needs none: `zeroscale up` runs it inside)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BACKENDS", "make_backend"]

BACKENDS = ("kubernetes",)


def make_backend(env: Mapping[str, str], name: str = "kubernetes") -> Any:
    """The backend called `name`, configured from the environment (SYSTEM_NAMESPACE, POD_NAME, KUBECONFIG)."""
    if name == "kubernetes":
        from cluster.k8s_autoscaler import make_backend as make_kubernetes

        return make_kubernetes(env)
    raise ValueError(f"unknown autoscaler backend {name!r} (choose one of {', '.join(BACKENDS)})")
