"""A fake Kubernetes API server on 127.0.0.1 that speaks the real wire format, for the real client.

What it serves, as kube-apiserver does:
- list: ``{"kind": "<Kind>List", "metadata": {"resourceVersion"}, "items": [...]}`` with label and
  field selectors;
- watch (``?watch=true``): newline-delimited JSON events ``{"type", "object"}`` from
  ``resourceVersion`` (replayed from history), BOOKMARK events when ``allowWatchBookmarks``,
  ``timeoutSeconds``; a version older than the retained history gets an ERROR event with a
  ``Status`` of code 410 (reason Expired) on a 200 stream, or an HTTP 410 when ``gone_as_status``;
- get / create (409 AlreadyExists) / update (409 Conflict on a stale resourceVersion) / patch
  (merge, strategic-merge, json-patch) / delete;
- the Deployment ``scale`` subresource (``autoscaling/v1`` Scale), GET/PATCH/PUT.

Test controls: ``hold_watches()`` / ``expire_watches()`` (a 410 in the middle of a watch that drops
held events), ``add_fault(...)`` (429s, 5xx, delays, matched per request), and ``requests`` (the verb
log, to compare with RBAC rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from tests.fakes.k8s_store import (
    KINDS,
    Event,
    Obj,
    Store,
    StoreError,
    api_version,
    match_fields,
    match_labels,
)
from tests.fakes.k8s_wire import Fault, RequestRecord, apply_patch, go_bool, scale_of, status_response

__all__ = ["CLIENT_HEADER", "FakeApiServer", "Fault", "RequestRecord", "go_bool", "running_apiserver"]

CLIENT_HEADER = "X-Fake-Client"


@dataclass(eq=False)
class _Watcher:
    resource: str
    namespace: str
    labels: str | None
    fields: str | None
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))
    progress_rv: int = 0
    gone: bool = False


class FakeApiServer:
    def __init__(self, *, bookmark_interval: float = 0.2, gone_as_status: bool = False) -> None:
        self.store = Store()
        self.store.listeners.append(self._on_event)
        self.bookmark_interval = bookmark_interval
        self.gone_as_status = gone_as_status
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self.watch_starts: list[tuple[str, str]] = []  # (resource, resourceVersion asked)
        self._watchers: set[_Watcher] = set()
        self._held = False
        self._pending: list[Event] = []
        self._streaming: set[int] = set()  # watch requests already logged when their stream opened
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/api/{version}/namespaces/{ns}/{resource}", self._collection)
        app.router.add_route("*", "/api/{version}/namespaces/{ns}/{resource}/{name}", self._item)
        app.router.add_route("*", "/apis/{group}/{version}/namespaces/{ns}/{resource}", self._collection)
        app.router.add_route("*", "/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}", self._item)
        app.router.add_route(
            "*", "/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}/{sub}", self._item
        )
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        for w in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, name: str = "") -> k8s_client.ApiClient:
        """A real kubernetes-asyncio ApiClient aimed at this server; ``name`` tags its requests."""
        cfg = k8s_client.Configuration(host=self.url)
        api = k8s_client.ApiClient(cfg)
        if name:
            api.set_default_header(CLIENT_HEADER, name)
        return api

    # ---- test controls ---------------------------------------------------------------------------
    def add_fault(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def hold_watches(self) -> None:
        """Stop delivering events to open watches (they stay open; events are kept in history)."""
        self._held = True

    def release_watches(self) -> None:
        self._held = False
        pending, self._pending = self._pending, []
        for ev in pending:
            self._deliver(ev)

    def expire_watches(self) -> None:
        """Compact history and end every open watch with an ERROR 410: held events are never streamed."""
        self._held = False
        self._pending.clear()
        self.store.compact()
        for w in list(self._watchers):
            # with gone_as_status the stream just ends, and the re-watch from its version gets HTTP 410
            w.gone = not self.gone_as_status
            with contextlib.suppress(asyncio.QueueFull):
                w.queue.put_nowait(None)

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    def verbs(self, client: str | None = None) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) of every request, for RBAC comparison."""
        out = set()
        for r in self.requests:
            if client is None or r.client == client:
                res = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
                out.add((r.group, res, r.verb))
        return out

    # ---- events ----------------------------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        if self._held:
            self._pending.append(ev)
        else:
            self._deliver(ev)

    @staticmethod
    def _selected(w: _Watcher, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        return (
            (not w.namespace or meta.get("namespace") == w.namespace)
            and match_labels(w.labels, meta.get("labels") or {})
            and match_fields(w.fields, obj)
        )

    def _view(self, w: _Watcher, ev: Event) -> Event | None:
        """The event as this watch sees it: an object entering the selector is ADDED, one leaving it is
        DELETED (with its new state), as the API server's watch cache reports them."""
        if ev.resource != w.resource:
            return None
        now = self._selected(w, ev.obj)
        if ev.type != "MODIFIED":
            return ev if now else None
        before = self._selected(w, ev.prev)
        if now and before:
            return ev
        if now:
            return Event(ev.rv, ev.resource, "ADDED", ev.obj)
        if before:
            return Event(ev.rv, ev.resource, "DELETED", ev.obj)
        return None

    def _deliver(self, ev: Event) -> None:
        for w in list(self._watchers):
            if ev.resource != w.resource:
                continue
            seen = self._view(w, ev)
            if seen is not None:
                try:
                    w.queue.put_nowait(seen)
                except asyncio.QueueFull:  # a slow watcher is closed, as the real server does
                    self._watchers.discard(w)
                    continue
            w.progress_rv = ev.rv

    # ---- HTTP ------------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        status = 0
        try:
            for fault in list(self.faults):
                if fault.count is not None and fault.hits >= fault.count:
                    continue
                if fault.match(request):
                    fault.hits += 1
                    if fault.delay:
                        await asyncio.sleep(fault.delay)  # simulates a slow or partitioned server
                    if fault.gate is not None:
                        await fault.gate.wait()
                    if fault.status == 0:
                        break
                    if fault.body is not None:
                        resp = web.Response(
                            status=fault.status, text=fault.body, content_type="application/json"
                        )
                    else:
                        resp = status_response(fault.status, "Injected", f"injected fault {fault.status}")
                    if fault.retry_after is not None:
                        resp.headers["Retry-After"] = fault.retry_after
                    status = fault.status
                    return resp
            try:
                out = await handler(request)
            except StoreError as e:
                out = status_response(e.code, e.reason, e.message)
            status = out.status
            return out
        finally:
            if id(request) not in self._streaming:
                self._log(request, status)
            self._streaming.discard(id(request))

    def _log(self, request: web.Request, status: int) -> None:
        mi = request.match_info
        name = mi.get("name", "")
        q = request.query
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(request.method, "")
        if request.method == "GET":
            verb = "get" if name else ("watch" if go_bool(q.get("watch")) else "list")
        elif request.method == "DELETE":
            verb = "delete" if name else "deletecollection"
        rec = RequestRecord(
            verb,
            mi.get("group", ""),
            mi.get("resource", ""),
            mi.get("sub", ""),
            mi.get("ns", ""),
            name,
            request.headers.get(CLIENT_HEADER, ""),
            status,
            time.monotonic(),
        )
        self.requests.append(rec)
        del self.requests[:-20_000]

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        resource, ns = self._resource(request), request.match_info["ns"]
        q = request.query
        if request.method == "GET":
            if go_bool(q.get("watch")):
                return await self._watch(request, resource, ns)
            items = self.store.list(resource, ns, q.get("labelSelector"), q.get("fieldSelector"))
            kind = KINDS[resource][2]
            return web.json_response(
                {
                    "kind": f"{kind}List",
                    "apiVersion": api_version(resource),
                    "metadata": {"resourceVersion": str(self.store.rv)},
                    "items": items,
                }
            )
        if request.method == "POST":
            return web.json_response(self.store.create(resource, ns, await request.json()), status=201)
        return status_response(405, "MethodNotAllowed", f"{request.method} not allowed on a collection")

    def _resource(self, request: web.Request) -> str:
        resource = request.match_info["resource"]
        group = request.match_info.get("group", "")
        if resource not in KINDS or KINDS[resource][0] != group:
            raise web.HTTPNotFound(text=json.dumps({"kind": "Status", "code": 404, "reason": "NotFound"}))
        return resource

    async def _item(self, request: web.Request) -> web.StreamResponse:
        resource, ns, name = self._resource(request), request.match_info["ns"], request.match_info["name"]
        sub = request.match_info.get("sub", "")
        if sub == "scale" and resource == "deployments":
            return await self._scale(request, ns, name)
        if sub not in ("", "status"):
            return status_response(404, "NotFound", f"no subresource {sub!r}")
        if request.method == "GET":
            return web.json_response(self.store.get(resource, ns, name))
        if request.method == "PUT":
            body = await request.json()
            if body.get("metadata", {}).get("name") != name:
                return status_response(400, "BadRequest", "the name of the object does not match the URL")
            if sub == "status":
                current = self.store.get(resource, ns, name)
                current["status"] = body.get("status")
                current["metadata"]["resourceVersion"] = body["metadata"].get("resourceVersion")
                body = current
            return web.json_response(self.store.update(resource, ns, body))
        if request.method == "PATCH":
            patched = apply_patch(
                request.headers.get("Content-Type", ""),
                self.store.get(resource, ns, name),
                await request.json(),
            )
            return web.json_response(self.store.update(resource, ns, patched))
        if request.method == "DELETE":
            self.store.delete(resource, ns, name)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})
        return status_response(405, "MethodNotAllowed", request.method)

    async def _scale(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        dep = self.store.get("deployments", ns, name)
        scale = scale_of(dep)
        if request.method == "GET":
            return web.json_response(scale)
        if request.method == "PATCH":
            new = apply_patch(request.headers.get("Content-Type", ""), scale, await request.json())
        elif request.method == "PUT":
            new = await request.json()
        else:
            return status_response(405, "MethodNotAllowed", request.method)
        want_rv = (new.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != dep["metadata"]["resourceVersion"]:
            raise StoreError(409, "Conflict", f'Operation cannot be fulfilled on deployments.apps "{name}"')
        replicas = (new.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise StoreError(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}")
        dep["spec"]["replicas"] = replicas
        dep["metadata"].pop("resourceVersion", None)
        return web.json_response(scale_of(self.store.update("deployments", ns, dep)))

    async def _watch(self, request: web.Request, resource: str, ns: str) -> web.StreamResponse:
        q = request.query
        rv_param = q.get("resourceVersion", "")
        self.watch_starts.append((resource, rv_param))
        bookmarks = go_bool(q.get("allowWatchBookmarks"))
        timeout = float(q.get("timeoutSeconds") or 1800)
        w = _Watcher(resource, ns, q.get("labelSelector"), q.get("fieldSelector"), progress_rv=self.store.rv)
        initial: list[Event] = []
        expired = False
        if rv_param in ("", "0"):
            kind_objs = self.store.list(resource, ns, w.labels, w.fields)
            initial = [Event(self.store.rv, resource, "ADDED", o) for o in kind_objs]
        elif int(rv_param) < self.store.oldest_rv:
            expired = True
        else:
            start = int(rv_param)
            held = {id(e) for e in self._pending} if self._held else set()  # held: streamed to no one
            views = (self._view(w, ev) for ev in self.store.history if ev.rv > start and id(ev) not in held)
            initial = [v for v in views if v is not None]
            if self._held:
                w.progress_rv = start if not initial else initial[-1].rv
        if expired and self.gone_as_status:
            return status_response(
                410, "Expired", f"too old resource version: {rv_param} ({self.store.oldest_rv})"
            )
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        self._log(request, 200)  # now, not when the stream ends: tests look while it is open
        self._streaming.add(id(request))
        kind = KINDS[resource][2]

        async def send(etype: str, obj: Obj) -> None:
            await resp.write((json.dumps({"type": etype, "object": obj}) + "\n").encode())

        if expired:
            await send(
                "ERROR",
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {rv_param} ({self.store.oldest_rv})",
                    "reason": "Expired",
                    "code": 410,
                },
            )
            await resp.write_eof()
            return resp
        self._watchers.add(w)
        try:
            for ev in initial:
                await send(ev.type, ev.obj)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(w.queue.get(), min(left, self.bookmark_interval))  # type: ignore[arg-type]
                except TimeoutError:
                    if bookmarks and w.queue.empty():
                        await send(
                            "BOOKMARK",
                            {
                                "kind": kind,
                                "apiVersion": api_version(resource),
                                "metadata": {"resourceVersion": str(w.progress_rv)},
                            },
                        )
                    continue
                if ev is None:
                    if w.gone:
                        await send(
                            "ERROR",
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "metadata": {},
                                "status": "Failure",
                                "message": "too old resource version",
                                "reason": "Expired",
                                "code": 410,
                            },
                        )
                    break
                await send(ev.type, ev.obj)
            await resp.write_eof()
        except ConnectionResetError:
            pass
        finally:
            self._watchers.discard(w)
        return resp


@contextlib.asynccontextmanager
async def running_apiserver(**kwargs: Any) -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(**kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
