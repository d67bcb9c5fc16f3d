"""Wire-level pieces of the fake API server: Status errors, query booleans, patches, the Scale view,
injected faults and the request log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.k8s_store import Obj, StoreError, json_patch, merge_patch

__all__ = ["Fault", "RequestRecord", "apply_patch", "go_bool", "scale_of", "status_response"]


@dataclass
class Fault:
    """Answer matching requests with ``status`` (after ``delay`` s), ``count`` times (None: until removed).

    ``status=0`` answers nothing itself: the request waits (``delay``, then ``gate`` when given) and is
    then served normally, to order concurrent requests deterministically. ``body`` replaces the
    Status document with raw text (a malformed answer).
    """

    match: Callable[[web.Request], bool]
    status: int = 500
    count: int | None = 1
    delay: float = 0.0
    retry_after: str | None = None
    gate: asyncio.Event | None = None
    body: str | None = None
    hits: int = 0


@dataclass(frozen=True)
class RequestRecord:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    client: str
    status: int
    t: float


def go_bool(value: str | None) -> bool:
    """Query booleans as the API server parses them (Go strconv.ParseBool): the client sends "True"."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def status_response(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def apply_patch(content_type: str, current: Obj, patch: Any) -> Obj:
    """Apply a PATCH body by its Content-Type, as the API server does (strategic merge as merge)."""
    ctype = content_type.split(";")[0].strip()
    if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(patch, dict):
            raise StoreError(400, "BadRequest", "a merge patch must be a JSON object")
        out: Obj = merge_patch(current, patch)
        return out
    if ctype == "application/json-patch+json":
        if not isinstance(patch, list):
            raise StoreError(400, "BadRequest", "a json patch must be a list of operations")
        return json_patch(current, patch)
    raise StoreError(
        415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}"
    )


def scale_of(dep: Obj) -> Obj:
    """The autoscaling/v1 Scale view of a Deployment."""
    meta = dep["metadata"]
    labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        },
        "spec": {"replicas": int((dep.get("spec") or {}).get("replicas", 1))},
        "status": {
            "replicas": int((dep.get("status") or {}).get("replicas", 0)),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }
