"""Pods as processes on this machine: the local backend behind the ``Scaler`` and ``EndpointSource`` shapes.

    runtime = LocalRuntime()
    runtime.add_revision(revision)                 # a serving.spec.Revision
    unsubscribe = runtime.subscribe(revision.key, on_endpoints)
    await runtime.scale(revision.key, 2)           # two pods start; endpoints turn ready as they do
    await runtime.ready_pods(revision.key)         # -> 2 once both answer the queue probe
    await runtime.close()                          # drains and stops every pod, no process left

``scale`` only records the wish and starts or stops pods; readiness shows up through the endpoint
callbacks (each with the revision's whole list: starting pods not ready, terminating ones marked so).
A pod that dies, or is not ready within ``PodSettings.ready_timeout``, is logged with its last output
lines, kept in ``failures()``, and replaced (after a back-off that grows while pods keep failing).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import string
from collections.abc import Callable, Sequence

from serving.spec import Revision
from serving.types import Endpoint, RevisionKey

from .local_pod import PROJECT_ROOT, LocalPod, PodFailure, PodPorts, PodSettings, PodState, queue_base_env
from .local_process import PortAllocator
from .local_standby import StandbyPool

__all__ = ["LocalPod", "LocalRuntime", "PodFailure", "PodSettings", "PodState", "UnknownRevisionError"]

log = logging.getLogger("zeroscale.local")

EndpointCallback = Callable[[Sequence[Endpoint]], None]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
FAILURES_KEPT = 20


class UnknownRevisionError(KeyError):
    """scale() or ready_pods() for a revision that was never added (or was removed)."""


class _RevisionPods:
    __slots__ = (
        "backoff_until",
        "crashes",
        "desired",
        "failures",
        "pods",
        "revision",
        "subscribers",
        "tasks",
    )

    def __init__(self, revision: Revision) -> None:
        self.revision = revision
        self.desired = 0
        self.pods: dict[str, LocalPod] = {}
        self.tasks: dict[str, asyncio.Task[PodFailure | None]] = {}
        self.subscribers: list[EndpointCallback] = []
        self.failures: collections.deque[PodFailure] = collections.deque(maxlen=FAILURES_KEPT)
        self.crashes = 0  # consecutive failed pods: drives the back-off
        self.backoff_until = 0.0

    def live(self) -> list[LocalPod]:
        return [p for p in self.pods.values() if not p.terminating]

    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(p.endpoint for p in self.pods.values())


class LocalRuntime:
    def __init__(
        self,
        settings: PodSettings | None = None,
        *,
        rng: random.Random | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings or PodSettings()
        self._rng = rng or random.Random()
        self._on_line = on_line or _debug_line
        self._ports = PortAllocator()
        self._revisions: dict[RevisionKey, _RevisionPods] = {}
        self._retry: dict[RevisionKey, asyncio.TimerHandle] = {}
        self._closed = False
        self._standby: StandbyPool | None = None

    @property
    def standby(self) -> StandbyPool | None:
        """The zygote that forks the pods' queue-proxies (local_standby), once the first revision is added."""
        return self._standby

    async def warm(self, timeout: float) -> bool:
        """Start the queue-proxy zygote now, not with the first revision, and wait for it at most
        ``timeout`` seconds: True once it is ready (False also when the pool is turned off)."""
        self._ensure_standby()
        return self._standby is not None and await self._standby.ready(timeout)

    def _ensure_standby(self) -> None:
        if self._standby is None and self.settings.queue_proxy_zygote and not self._closed:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # added outside a loop: the pool starts with the first pod instead
            self._standby = StandbyPool(
                python=self.settings.python,
                env=queue_base_env(os.environ),
                cwd=PROJECT_ROOT,
                ring=self.settings.output_lines,
                on_line=self._on_line,
            )
            self._standby.fill()

    # -- revisions ------------------------------------------------------------------------------

    def add_revision(self, revision: Revision) -> None:
        """Make a revision known (with no pods until it is scaled). Adding it again is a no-op."""
        if self._closed:
            raise RuntimeError("the local runtime is closed")
        self._revisions.setdefault(revision.key, _RevisionPods(revision))
        self._ensure_standby()

    def revisions(self) -> list[RevisionKey]:
        return list(self._revisions)

    async def remove_revision(self, key: RevisionKey) -> None:
        """Drain and stop the revision's pods, then forget it (subscribers get an empty list first)."""
        rp = self._revisions.get(key)
        if rp is None:
            return
        rp.desired = 0
        self._reconcile(key)
        await self._wait_tasks(rp)
        self._publish(rp)
        del self._revisions[key]
        handle = self._retry.pop(key, None)
        if handle is not None:
            handle.cancel()

    # -- Scaler ------------------------------------------------------------------------------------

    async def scale(self, revision: RevisionKey, desired: int) -> None:
        if desired < 0:
            raise ValueError(f"desired scale must be >= 0, got {desired}")
        rp = self._get(revision)
        if rp.desired != desired:
            log.info("revision %s: scale %d -> %d", revision, rp.desired, desired)
        rp.desired = desired
        self._reconcile(revision)

    async def ready_pods(self, revision: RevisionKey) -> int:
        return sum(1 for p in self._get(revision).pods.values() if p.state is PodState.READY)

    def desired(self, revision: RevisionKey) -> int:
        return self._get(revision).desired

    # -- EndpointSource ------------------------------------------------------------------------

    def endpoints(self, revision: RevisionKey) -> tuple[Endpoint, ...]:
        rp = self._revisions.get(revision)
        return rp.endpoints() if rp is not None else ()

    def subscribe(self, revision: RevisionKey, callback: EndpointCallback) -> Callable[[], None]:
        """Call ``callback`` with the revision's endpoints now and after every change."""
        rp = self._get(revision)
        rp.subscribers.append(callback)
        callback(rp.endpoints())

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                rp.subscribers.remove(callback)

        return unsubscribe

    def pods(self, revision: RevisionKey) -> list[LocalPod]:
        """The revision's pods now (starting, ready, unready or terminating), oldest first."""
        rp = self._revisions.get(revision)
        return sorted(rp.pods.values(), key=lambda p: p.created_at) if rp is not None else []

    def failures(self, revision: RevisionKey) -> list[PodFailure]:
        rp = self._revisions.get(revision)
        return list(rp.failures) if rp is not None else []

    # -- internals -------------------------------------------------------------------------------

    def _get(self, revision: RevisionKey) -> _RevisionPods:
        rp = self._revisions.get(revision)
        if rp is None:
            raise UnknownRevisionError(f"revision {revision} is not known to the local runtime")
        return rp

    def _publish(self, rp: _RevisionPods) -> None:
        endpoints = rp.endpoints()
        for cb in list(rp.subscribers):
            try:
                cb(endpoints)
            except Exception:
                log.exception("endpoint subscriber of %s failed", rp.revision.key)

    def _reconcile(self, key: RevisionKey) -> None:
        rp = self._revisions.get(key)
        if rp is None or self._closed:
            return
        live = rp.live()
        if len(live) > rp.desired:
            # Like a ReplicaSet: pods that are not ready go first, then the youngest.
            order = sorted(live, key=lambda p: (p.state is PodState.READY, -p.created_at))
            for pod in order[: len(live) - rp.desired]:
                log.info("pod %s of %s: terminating", pod.name, key)
                pod.terminate()
            return
        missing = rp.desired - len(live)
        if missing <= 0:
            return
        loop = asyncio.get_running_loop()
        wait = rp.backoff_until - loop.time()
        if wait > 0:
            if key not in self._retry:
                self._retry[key] = loop.call_later(wait, self._retry_now, key)
            return
        for _ in range(missing):
            self._start_pod(rp)

    def _retry_now(self, key: RevisionKey) -> None:
        self._retry.pop(key, None)
        self._reconcile(key)

    def _start_pod(self, rp: _RevisionPods) -> None:
        suffix = "".join(self._rng.choices(string.ascii_lowercase + string.digits, k=5))
        name = f"{rp.revision.name}-deployment-{suffix}"
        ports = PodPorts(*self._ports.take_many(5))
        self._ensure_standby()
        pod = LocalPod(
            name, rp.revision, ports, self.settings, self._pod_changed, self._on_line, standby=self._standby
        )
        rp.pods[name] = pod
        task = asyncio.create_task(pod.run(), name=f"pod {name}")
        rp.tasks[name] = task
        task.add_done_callback(functools.partial(self._pod_done, rp, pod))
        self._publish(rp)

    def _pod_changed(self, pod: LocalPod) -> None:
        rp = self._revisions.get(pod.revision.key)
        if rp is None or rp.pods.get(pod.name) is not pod:
            return
        if pod.state is PodState.READY:
            rp.crashes = 0
        if pod.state is not PodState.GONE:
            self._publish(rp)

    def _pod_done(self, rp: _RevisionPods, pod: LocalPod, task: asyncio.Task[PodFailure | None]) -> None:
        rp.pods.pop(pod.name, None)
        rp.tasks.pop(pod.name, None)
        failure = None if task.cancelled() else (task.exception() or task.result())
        if isinstance(failure, BaseException):
            log.error("pod %s of %s crashed the runtime's task", pod.name, rp.revision.key, exc_info=failure)
        elif failure is not None:
            rp.failures.append(failure)
            rp.crashes += 1
            delay = min(BACKOFF_FIRST * 2 ** (rp.crashes - 1), BACKOFF_MAX)
            rp.backoff_until = asyncio.get_running_loop().time() + delay
            log.warning("%s\n  (replacing it in %.1f s)", failure.describe(), delay)
        self._publish(rp)
        if self._revisions.get(rp.revision.key) is rp:
            self._reconcile(rp.revision.key)

    async def _wait_tasks(self, rp: _RevisionPods) -> None:
        while rp.tasks:
            await asyncio.wait(list(rp.tasks.values()))

    # -- shutdown --------------------------------------------------------------------------------

    async def close(self, timeout: float | None = None) -> None:
        """Stop every pod: drain them (each within its grace period, or ``timeout`` for all), then
        kill whatever is left. Safe to call twice; leaves no child process behind."""
        self._closed = True
        for handle in self._retry.values():
            handle.cancel()
        self._retry.clear()
        for rp in self._revisions.values():
            rp.desired = 0
            for pod in rp.pods.values():
                pod.terminate()
        tasks = [t for rp in self._revisions.values() for t in rp.tasks.values()]
        try:
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=timeout)
                for t in pending:
                    t.cancel()  # the pod's task then kills its processes
                if pending:
                    await asyncio.wait(pending, timeout=2 * self.settings.kill_grace + 5)
            if self._standby is not None:
                # After the pods: the zygote reports the exit codes of the queue-proxies it forked.
                await self._standby.close()
        finally:
            # Last resort, also when close() itself is cancelled: SIGKILL every group still around.
            if self._standby is not None:
                self._standby.kill_now()
            for rp in self._revisions.values():
                for pod in rp.pods.values():
                    pod.user.kill_now()
                    pod.queue.kill_now()

    async def __aenter__(self) -> LocalRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _debug_line(process: str, line: str) -> None:
    log.debug("%s: %s", process, line)
