"""State behind the fake API server: objects, one resourceVersion counter, history, selectors, patches."""

from __future__ import annotations

import copy
import datetime
import itertools
import re
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Event",
    "KINDS",
    "Store",
    "StoreError",
    "match_fields",
    "match_labels",
    "merge_patch",
    "json_patch",
]

Obj = dict[str, Any]

# resource -> (group, version, kind)
KINDS: dict[str, tuple[str, str, str]] = {
    "configmaps": ("", "v1", "ConfigMap"),
    "services": ("", "v1", "Service"),
    "endpointslices": ("discovery.k8s.io", "v1", "EndpointSlice"),
    "deployments": ("apps", "v1", "Deployment"),
    "leases": ("coordination.k8s.io", "v1", "Lease"),
}


def api_version(resource: str) -> str:
    group, version, _ = KINDS[resource]
    return f"{group}/{version}" if group else version


class StoreError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass(frozen=True)
class Event:
    rv: int
    resource: str
    type: str
    obj: Obj
    prev: Obj | None = None  # the object before a MODIFIED: a selector watch needs both


def _split_selector(sel: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


_SET = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")


def match_labels(selector: str | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector syntax: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b)."""
    if not selector:
        return True
    for term in _split_selector(selector):
        m = _SET.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            ok = labels.get(key) in values if op == "in" else labels.get(key) not in values
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def match_fields(selector: str | None, obj: Obj) -> bool:
    if not selector:
        return True
    meta = obj.get("metadata") or {}
    for term in _split_selector(selector):
        neg = "!=" in term
        key, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))
        actual = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(key)
        if (actual == value) == neg:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge: maps merge, lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(doc: Obj, ops: list[dict[str, Any]]) -> Obj:
    """RFC 6902 add/replace/remove/test on object paths (enough for /spec/replicas)."""
    out = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
        parent: Any = out
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        kind = op["op"]
        if kind in ("add", "replace"):
            if kind == "replace" and last not in parent:
                raise StoreError(422, "Invalid", f"replace of missing path {op['path']}")
            parent[last] = op["value"]
        elif kind == "remove":
            parent.pop(last)
        elif kind == "test":
            if parent.get(last) != op["value"]:
                raise StoreError(422, "Invalid", f"test failed at {op['path']}")
        else:
            raise StoreError(422, "Invalid", f"unsupported json-patch op {kind!r}")
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Store:
    """Objects by (resource, namespace, name); every write takes the next resourceVersion."""

    history_limit: int = 10_000
    rv: int = 100
    objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    history: deque[Event] = field(default_factory=deque)
    oldest_rv: int = 0  # a watch may resume from any version >= this; older ones get 410
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    _uids: itertools.count = field(default_factory=itertools.count)

    def _record(self, resource: str, etype: str, obj: Obj, prev: Obj | None = None) -> None:
        ev = Event(self.rv, resource, etype, copy.deepcopy(obj), copy.deepcopy(prev) if prev else None)
        self.history.append(ev)
        while len(self.history) > self.history_limit:
            old = self.history.popleft()
            self.oldest_rv = old.rv
        for listener in list(self.listeners):
            listener(ev)

    def compact(self) -> None:
        """Forget history: a watch from any version older than now gets 410 Gone."""
        self.history.clear()
        self.oldest_rv = self.rv

    def get(self, resource: str, ns: str, name: str) -> Obj:
        try:
            return copy.deepcopy(self.objects[(resource, ns, name)])
        except KeyError:
            raise StoreError(404, "NotFound", f'{resource} "{name}" not found') from None

    def list(self, resource: str, ns: str, labels: str | None = None, fields: str | None = None) -> list[Obj]:
        out = []
        for (res, ons, _), obj in sorted(self.objects.items()):
            if res != resource or (ns and ons != ns):
                continue
            if match_labels(labels, (obj.get("metadata") or {}).get("labels") or {}) and match_fields(
                fields, obj
            ):
                out.append(copy.deepcopy(obj))
        return out

    def create(self, resource: str, ns: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise StoreError(422, "Invalid", "metadata.name: Required value")
        if (resource, ns, name) in self.objects:
            raise StoreError(409, "AlreadyExists", f'{resource} "{name}" already exists')
        kind = KINDS[resource][2]
        obj["apiVersion"], obj["kind"] = api_version(resource), kind
        self.rv += 1
        meta.update(
            namespace=ns,
            resourceVersion=str(self.rv),
            uid=str(uuid.UUID(int=next(self._uids) + 1)),
            creationTimestamp=_now(),
        )
        if resource == "deployments":
            meta["generation"] = 1
        self.objects[(resource, ns, name)] = obj
        self._record(resource, "ADDED", obj)
        return copy.deepcopy(obj)

    def update(self, resource: str, ns: str, obj: Obj, *, check_rv: bool = True) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        current = self.objects.get((resource, ns, name))
        if current is None:
            raise StoreError(404, "NotFound", f'{resource} "{name}" not found')
        want = meta.get("resourceVersion")
        if check_rv and want and want != current["metadata"]["resourceVersion"]:
            raise StoreError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        for k in ("uid", "creationTimestamp", "generation"):
            if k in current["metadata"]:
                meta[k] = current["metadata"][k]
        if resource == "deployments" and obj.get("spec") != current.get("spec"):
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        obj["apiVersion"], obj["kind"] = api_version(resource), KINDS[resource][2]
        meta["namespace"] = ns
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[(resource, ns, name)] = obj
        self._record(resource, "MODIFIED", obj, current)
        return copy.deepcopy(obj)

    def delete(self, resource: str, ns: str, name: str) -> Obj:
        obj = self.objects.pop((resource, ns, name), None)
        if obj is None:
            raise StoreError(404, "NotFound", f'{resource} "{name}" not found')
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(resource, "DELETED", obj)
        return copy.deepcopy(obj)
