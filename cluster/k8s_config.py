"""Routes and config from ConfigMaps, delivered to a callback while the process runs (no restart).

One informer watches the ConfigMaps labelled ``app.kubernetes.io/part-of=zeroscale`` in the system
namespace: the routes (``zeroscale-routes``, the Knative Service documents under ``services.yaml``)
and Knative's ``config-autoscaler``, ``config-defaults``, ``config-network``, ``config-domain``.
Each change calls ``on_change(name, data)`` (``data`` is None when the ConfigMap is deleted), one at
a time and in order; only the newest state of each ConfigMap is kept while a callback runs, so the
backlog is bounded by the number of ConfigMaps. A callback that raises (a bad value: ConfigError)
is logged and the component keeps its previous configuration, as Knative's components do.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from kubernetes_asyncio import client

from cluster.k8s_cache import Change
from cluster.k8s_informer import Informer
from cluster.k8s_names import CONFIG_LABEL

__all__ = ["ConfigMapWatcher", "watch_configmaps"]

log = logging.getLogger("zeroscale.k8s.config")

OnChange = Callable[[str, Mapping[str, str] | None], Awaitable[None] | None]


class ConfigMapWatcher:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        on_change: OnChange,
        *,
        names: Iterable[str] | None = None,
        label_selector: str = CONFIG_LABEL,
        **informer_kwargs: Any,
    ) -> None:
        self.namespace = namespace
        self._names = frozenset(names) if names is not None else None
        self._on_change = on_change
        self.informer = Informer(
            client.CoreV1Api(api).list_namespaced_config_map,
            namespace,
            label_selector=label_selector,
            on_change=self._changed,
            name=f"configmaps[{namespace}]",
            **informer_kwargs,
        )
        self._pending: dict[str, dict[str, str] | None] = {}
        self._wake = asyncio.Event()
        self.delivered = 0
        self.rejected = 0

    def current(self, name: str) -> dict[str, str] | None:
        obj = self.informer.cache.get((self.namespace, name))
        return None if obj is None else dict(obj.get("data") or {})

    def _changed(self, changes: list[Change]) -> None:
        for ch in changes:
            name = ch.key[1]
            if self._names is not None and name not in self._names:
                continue
            new_data = None if ch.new is None else dict(ch.new.get("data") or {})
            old_data = None if ch.old is None else dict(ch.old.get("data") or {})
            if new_data == old_data:  # a metadata-only change (labels, annotations)
                continue
            self._pending.pop(name, None)  # re-insert: delivery follows the order of last change
            self._pending[name] = new_data
        if self._pending:
            self._wake.set()

    async def run(self) -> None:
        task = asyncio.create_task(self.informer.run())
        waiter: asyncio.Task[Any] | None = None
        try:
            while True:
                waiter = asyncio.create_task(self._wake.wait())
                done, _ = await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    task.result()
                    return
                self._wake.clear()
                while self._pending:
                    name = next(iter(self._pending))
                    data = self._pending.pop(name)
                    await self._deliver(name, data)
        finally:
            task.cancel()
            if waiter is not None:
                waiter.cancel()

    async def _deliver(self, name: str, data: dict[str, str] | None) -> None:
        try:
            result = self._on_change(name, data)
            if inspect.isawaitable(result):
                await result
            self.delivered += 1
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.rejected += 1
            log.error(
                "ConfigMap %s/%s rejected, keeping the previous configuration: %s", self.namespace, name, e
            )


def watch_configmaps(
    api: client.ApiClient,
    namespace: str,
    on_change: OnChange,
    names: Iterable[str] | None = None,
    **informer_kwargs: Any,
) -> ConfigMapWatcher:
    """A watcher of zeroscale's ConfigMaps in ``namespace``; run it with ``await watcher.run()``."""
    return ConfigMapWatcher(api, namespace, on_change, names=names, **informer_kwargs)
