"""What ``zeroscale status`` shows of a running ``up``: services, traffic, revisions and their pods (JSON)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from serving.spec import Service

if TYPE_CHECKING:
    from .up_plane import UpPlane

__all__ = ["service_status"]


def service_status(plane: UpPlane, svc: Service) -> dict[str, Any]:
    rec = plane.reconciler
    ns, name = svc.namespace, svc.name
    traffic = [
        {
            "revision": t.revision,
            "percent": t.percent,
            "tag": t.tag,
            "latest_revision": t.latest,
            "url": rec.url(ns, name, t.tag) if t.tag else None,
        }
        for t in rec.traffic(ns, name)
    ]
    revisions = []
    for rev in reversed(rec.revisions(ns, name)):  # newest first, as kubectl lists them
        key = rev.key
        d = plane.multiscaler.latest(key) if plane.multiscaler is not None else None
        desired, ready, total = plane.pod_counts(key)
        failures = plane.runtime.failures(key)
        revisions.append(
            {
                "name": rev.name,
                "generation": rev.generation,
                "ready": rec.is_ready(key),
                "desired_pods": desired,
                "ready_pods": ready,
                "pods": total,
                "concurrency": None if d is None else d.observed_stable,
                "panic_concurrency": None if d is None else d.observed_panic,
                "target": None if d is None else d.target,
                "panic": bool(d is not None and d.in_panic),
                "activator_in_path": plane.gateway.activator_in_path(key) if plane.gateway else True,
                "state": None if d is None else d.state.value,
                "last_failure": failures[-1].reason if failures else None,
            }
        )
    ro = rec.rollout(ns, name)
    rollout = None
    if ro is not None:
        rollout = {
            "revisions": [{"revision": n, "percent": p} for n, p in ro.revisions],
            "step_percent": ro.step_size,
            "step_seconds": ro.step_duration,
            "next_step_in": None if ro.next_step is None else max(0.0, ro.next_step - time.monotonic()),
        }
    latest = rec.revisions(ns, name)
    return {
        "name": name,
        "namespace": ns,
        "url": rec.url(ns, name),
        "latest_created_revision": latest[-1].name if latest else None,
        "traffic": traffic,
        "rollout": rollout,
        "revisions": revisions,
    }
