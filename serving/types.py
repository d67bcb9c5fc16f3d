"""Small value types that cross component boundaries (components never import each other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Endpoint", "RevisionKey"]


class RevisionKey(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One pod of a revision as the data plane sees it: where its queue-proxy serves, and its state.

    ``ready``: may get new requests. ``terminating``: going away; in-flight requests finish, no new ones.
    ``metrics_port``: the queue-proxy's autoscaler metrics port (Knative 9090), for scraping.
    """

    pod_name: str
    host: str
    port: int
    ready: bool = True
    terminating: bool = False
    metrics_port: int = 9090
    admin_port: int = 8022

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
