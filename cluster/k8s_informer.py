"""A reusable informer on kubernetes-asyncio: list, watch from the list's resourceVersion, keep a cache.

The loop, as the API server expects clients to behave:

1. LIST (raw JSON); remember the *list's* ``metadata.resourceVersion``; diff against the cache.
2. WATCH from that version with ``allowWatchBookmarks``; apply ADDED/MODIFIED/DELETED; BOOKMARK only
   moves the version. A watch that ends normally (server timeout) is re-opened from the last version.
3. 410 Gone (an ERROR event in the stream, or an ApiException(410)) means the version was compacted
   away: go back to 1. The diff after the re-list reports every change made while the watch was
   broken, so no update is lost (only intermediate states of one object can be skipped).
4. 429 and other errors: exponential back-off with jitter (Retry-After honoured); after 3 failures
   in a row, re-list rather than trusting the old version.
5. Every ``resync_period`` a fresh LIST replaces the watch as a safety net against a silently stuck
   stream or a missed event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException

from cluster.k8s_cache import Backoff, Change, Obj, ObjKey, apply_event, diff_lists
from serving.clock import Clock, MonotonicClock

__all__ = ["Informer", "api_exception_from_response"]

log = logging.getLogger("zeroscale.k8s.informer")

Sleep = Callable[[float], Awaitable[None]]
Handler = Callable[[list[Change]], None]


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): re-list."""


def _retry_after(exc: ApiException) -> float:
    headers = getattr(exc, "headers", None) or {}
    try:
        return max(0.0, float(headers.get("Retry-After", 0)))
    except (TypeError, ValueError):
        return 0.0


async def api_exception_from_response(resp: aiohttp.ClientResponse) -> ApiException:
    """The ApiException the client would have raised, for a raw (``_preload_content=False``) response."""
    body = (await resp.read())[:4096].decode("utf-8", "replace")
    exc = ApiException(status=resp.status, reason=resp.reason or "")
    exc.body = body  # type: ignore[assignment]
    exc.headers = resp.headers
    return exc


class Informer:
    """Keeps ``cache`` equal to the API server's view of one kind of object under a selector.

    ``list_fn`` is a kubernetes-asyncio ``list_namespaced_*`` method; ``args`` its positional
    arguments (the namespace). ``on_change`` gets each batch of changes, synchronously, in order.
    """

    def __init__(
        self,
        list_fn: Callable[..., Awaitable[Any]],
        *args: Any,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_change: Handler | None = None,
        name: str = "",
        watch_timeout: float = 300.0,
        resync_period: float = 600.0,
        relist_after_failures: int = 3,
        request_timeout: float = 60.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._list_fn = list_fn
        self._args = args
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["label_selector"] = label_selector
        if field_selector:
            self._selectors["field_selector"] = field_selector
        self._handlers: list[Handler] = [on_change] if on_change else []
        self.name = name or getattr(list_fn, "__name__", "informer")
        self.watch_timeout = watch_timeout
        self.resync_period = resync_period
        self.relist_after_failures = relist_after_failures
        self.request_timeout = request_timeout
        self._backoff = backoff or Backoff(1.0, 60.0, rng or random.Random())
        self._clock = clock or MonotonicClock()
        self._sleep = sleep
        self._cache: dict[ObjKey, Obj] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        # counters, for tests and logs
        self.lists = 0
        self.watches = 0
        self.gone = 0
        self.errors = 0
        self.delays: list[float] = []
        self._delivered = False  # did the current watch deliver any event?

    @property
    def cache(self) -> Mapping[ObjKey, Obj]:
        return self._cache

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def _emit(self, changes: list[Change]) -> None:
        if not changes:
            return
        for handler in self._handlers:
            try:
                handler(changes)
            except Exception:  # a broken handler must not stop the informer
                log.exception("%s: change handler failed", self.name)

    async def list_once(self) -> None:
        resp = await self._list_fn(
            *self._args, **self._selectors, _preload_content=False, _request_timeout=self.request_timeout
        )
        try:
            if not 200 <= resp.status < 300:
                raise await api_exception_from_response(resp)
            body = json.loads(await resp.read())
        finally:
            resp.release()
        items = body.get("items") or []
        rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
        changes = diff_lists(self._cache, items)
        for ch in changes:
            if ch.new is None:
                del self._cache[ch.key]
            else:
                self._cache[ch.key] = ch.new
        self.resource_version = rv
        self.lists += 1
        self.synced.set()
        self._emit(changes)

    async def _watch_once(self, timeout: float) -> bool:
        """One watch request; returns whether any event (bookmarks included) arrived."""
        seconds = max(1, int(timeout))
        w = k8s_watch.Watch(return_type="object")
        self._delivered = False
        self.watches += 1
        async with w:
            stream = w.stream(
                self._list_fn,
                *self._args,
                **self._selectors,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=seconds,
                # the server ends the stream after `seconds`; a silent connection must not hang forever
                _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=seconds + 30),
            )
            async for event in stream:
                if not isinstance(event, dict):
                    raise ValueError(f"{self.name}: undecodable watch line {event!r:.200}")
                etype = event.get("type")
                raw = event.get("raw_object") or {}
                if etype == "ERROR":  # older clients hand the Status through instead of raising
                    code = int(raw.get("code") or 0)
                    if code == 410:
                        raise _Gone()
                    raise ApiException(status=code, reason=str(raw.get("message", "watch error")))
                self._delivered = True
                rv = str((raw.get("metadata") or {}).get("resourceVersion") or "")
                if etype == "BOOKMARK":
                    if rv:
                        self.resource_version = rv
                    continue
                change = apply_event(self._cache, str(etype), raw)
                if rv:
                    self.resource_version = rv
                if change is not None:
                    self._emit([change])
        return self._delivered

    async def run(self) -> None:
        """List and watch until cancelled."""
        need_list = True
        failures = 0
        next_resync = 0.0
        gone_streak = 0
        while True:
            try:
                now = self._clock.now()
                if need_list or now >= next_resync:
                    await self.list_once()
                    need_list = False
                    failures = 0
                    next_resync = self._clock.now() + self.resync_period
                remaining = min(self.watch_timeout, next_resync - self._clock.now())
                if remaining < 1:  # too short for a watch: resync now instead of spinning
                    need_list = True
                    continue
                self._delivered = False
                if await self._watch_once(remaining):
                    self._backoff.reset()
                    gone_streak = 0
                failures = 0
                continue
            except asyncio.CancelledError:
                raise
            except _Gone:
                gone_streak = await self._after_gone(gone_streak)
                need_list = True
                continue
            except ApiException as exc:
                if exc.status == 410:
                    gone_streak = await self._after_gone(gone_streak)
                    need_list = True
                    continue
                self.errors += 1
                failures += 1
                log.warning("%s: API error %s %s", self.name, exc.status, exc.reason)
                delay = self._backoff.next_delay(_retry_after(exc) if exc.status == 429 else 0.0)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                self.errors += 1
                failures += 1
                log.warning("%s: %s: %s", self.name, type(exc).__name__, exc)
                delay = self._backoff.next_delay()
            except Exception:  # never let a surprise (a malformed object) end the watch for good
                self.errors += 1
                failures += 1
                log.exception("%s: unexpected error; backing off and re-listing", self.name)
                delay = self._backoff.next_delay()
                need_list = True
            if failures >= self.relist_after_failures:
                need_list = True
            await self._wait(delay)

    async def _after_gone(self, streak: int) -> int:
        """Count a 410; re-list at once, unless the last re-list's version expired before any event
        arrived (a server that expires every fresh version): then back off instead of spinning."""
        self.gone += 1
        log.info("%s: resourceVersion %s expired (410), re-listing", self.name, self.resource_version)
        if self._delivered:
            self._backoff.reset()
            return 1
        if streak >= 1:
            await self._wait(self._backoff.next_delay())
        return streak + 1

    async def _wait(self, delay: float) -> None:
        self.delays.append(delay)
        del self.delays[:-100]
        await self._sleep(delay)
