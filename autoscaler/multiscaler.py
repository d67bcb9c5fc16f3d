"""A decision every 2 s for every revision, applied through a Scaler (Knative's MultiScaler + KPA reconciler).

Per tick and revision: count ready pods, read the stable and panic averages, let the
:class:`~autoscaler.decider.Decider` decide, keep the last *valid* decision (no data leaves it as it
was), and let :class:`~autoscaler.kpa.RevisionScaler` turn it into a scale (bounds, scale to zero)
and the activator-in-path switch. Listeners get a :class:`Decision` every time.

Stats come in through :meth:`MultiScaler.send` (the activator's ``StatSink`` shape; the websocket
server calls it too). A stat with concurrency for a revision whose last decision was 0 decides at once
instead of waiting for the tick: the cold-start poke.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from serving.clock import Clock
from serving.stat import Stat, WireStat
from serving.types import RevisionKey

from .collector import Collector
from .config import AutoscalerConfig, RevisionScaling, resolve
from .decider import TICK_INTERVAL, Decider
from .kpa import PAState, RevisionScaler

__all__ = ["ActivatorProbe", "Decision", "DecisionListener", "MultiScaler", "ReadyPodCounter", "Scaler"]

log = logging.getLogger("zeroscale.autoscaler")


class Scaler(Protocol):
    async def scale(self, revision: RevisionKey, desired: int) -> None: ...


class ReadyPodCounter(Protocol):
    """Ready pods of a revision; raising or returning None means the count failed (no decision)."""

    def ready_pods(self, revision: RevisionKey) -> int | Awaitable[int | None] | None: ...


class ActivatorProbe(Protocol):
    """Whether the activator really is in a revision's path (Knative probes /healthz with
    ``K-Network-Probe: activator``) before its last pod goes. Optional: without one, the switch is
    taken as done once a decision said so (in-process gateways switch at once)."""

    def activator_in_path(self, revision: RevisionKey) -> bool | Awaitable[bool]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    revision: RevisionKey
    time: float
    want: int  # the scale the revision should have (-1 unknown)
    applied: bool  # the Scaler was asked for ``want`` on this tick
    decided: int  # the decider's last valid desired pod count (-1 none yet)
    ready_pods: int | None
    in_panic: bool
    excess_burst_capacity: int
    activator_in_path: bool
    num_activators: int
    metric: str
    observed_stable: float | None
    observed_panic: float | None
    target: float
    state: PAState
    valid: bool  # this tick's decision was valid (data and a pod count)
    poke: bool = False


DecisionListener = Callable[[Decision], None]


class _Revision:
    __slots__ = (
        "applied",
        "created",
        "decider",
        "desired",
        "ebc",
        "inputs",
        "kpa",
        "last",
        "lock",
        "scaling",
    )

    def __init__(
        self, scaling: RevisionScaling, created: bool, inputs: tuple[dict[str, str], int, bool]
    ) -> None:
        self.scaling = scaling
        self.created = created
        self.inputs = (
            inputs  # (annotations, containerConcurrency, reachable): to resolve again on a config change
        )
        self.decider: Decider | None = None
        self.kpa: RevisionScaler | None = None
        self.desired = -1  # Knative: unknown until the first valid decision
        tbc = scaling.spec.target_burst_capacity
        self.ebc = int(tbc) if tbc in (-1, 0) else int(scaling.initial_scale * scaling.spec.total_value - tbc)
        self.applied: int | None = None
        self.last: Decision | None = None
        self.lock = asyncio.Lock()


class MultiScaler:
    def __init__(
        self,
        scaler: Scaler,
        pods: ReadyPodCounter,
        collector: Collector,
        config: AutoscalerConfig,
        clock: Clock,
        *,
        interval: float = TICK_INTERVAL,
        probe: ActivatorProbe | None = None,
    ) -> None:
        self._scaler = scaler
        self._probe = probe
        self._pods = pods
        self.collector = collector
        self._config = config
        self._clock = clock
        self._interval = interval
        self._revs: dict[RevisionKey, _Revision] = {}
        self._listeners: list[DecisionListener] = []
        self._pokes: set[asyncio.Task[Decision | None]] = set()
        self._poked: set[RevisionKey] = set()
        self._running: dict[RevisionKey, asyncio.Task[Decision | None]] = {}

    # -- registration -------------------------------------------------------------------------------
    @property
    def config(self) -> AutoscalerConfig:
        return self._config

    def upsert(
        self,
        revision: RevisionKey,
        annotations: Mapping[str, str],
        container_concurrency: int = 0,
        *,
        reachable: bool = True,
        created: bool = False,
    ) -> RevisionScaling:
        """Add or update a revision; raises ConfigError naming a bad annotation.

        ``created``: the revision is brand new with no pods yet, so its initial scale is asked for at
        once. Otherwise it is adopted as it runs (after an autoscaler restart the decider starts in
        panic with the ready pods it finds, so nothing is scaled down on empty windows).
        """
        scaling = resolve(self._config, annotations, container_concurrency, reachable=reachable)
        inputs = (dict(annotations), container_concurrency, reachable)
        rev = self._revs.get(revision)
        if rev is None:
            self._revs[revision] = _Revision(scaling, created, inputs)
        else:
            rev.inputs = inputs
            self._update(rev, scaling)
        self.collector.upsert(revision, scaling)
        return scaling

    @staticmethod
    def _update(rev: _Revision, scaling: RevisionScaling) -> None:
        rev.scaling = scaling
        if rev.decider is not None:
            rev.decider.update(scaling.spec)
        if rev.kpa is not None:
            rev.kpa.update(scaling)

    def remove(self, revision: RevisionKey) -> None:
        self._revs.pop(revision, None)
        self.collector.remove(revision)

    def update_config(self, config: AutoscalerConfig) -> None:
        """A changed config-autoscaler: every revision is resolved again (keeping its state)."""
        resolved = {}
        for key, rev in self._revs.items():
            annotations, cc, reachable = rev.inputs
            resolved[key] = resolve(config, annotations, cc, reachable=reachable)  # all or nothing
        self._config = config
        for key, scaling in resolved.items():
            self._update(self._revs[key], scaling)
            self.collector.upsert(key, scaling)

    def revisions(self) -> list[RevisionKey]:
        return list(self._revs)

    def latest(self, revision: RevisionKey) -> Decision | None:
        rev = self._revs.get(revision)
        return None if rev is None else rev.last

    def add_listener(self, listener: DecisionListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    # -- stat intake ---------------------------------------------------------------------------------
    def send(self, stats: list[WireStat]) -> None:
        """Record activator stats (at their timestamp, or now when 0) and poke scaled-to-zero revisions."""
        now = self._clock.now()
        for ws in stats:
            self.record(RevisionKey(ws.namespace, ws.name), ws.stat, now)

    def record(self, revision: RevisionKey, stat: Stat, now: float | None = None) -> None:
        current = self._clock.now() if now is None else now
        # Knative records at the stat's own timestamp (0: now). One from the future (a skewed clock)
        # is taken as now: recorded ahead, it would make every later stat look a window too old.
        t = min(float(stat.timestamp), current) if stat.timestamp else current
        if not self.collector.record(revision, t, stat):
            return  # not a revision we scale
        rev = self._revs.get(revision)
        # The cold-start poke. Knative pokes only a revision whose last decision was 0; one that has
        # had no valid decision yet (-1: a new revision created at zero, never scraped) would wait for
        # the next 2 s tick, and its first request with it. Demand for a revision with no decision
        # and no pods is the same cold start, so it is decided at once too.
        if rev is not None and rev.desired <= 0 and stat.average_concurrent_requests != 0:
            self._poke(revision)

    def _poke(self, revision: RevisionKey) -> None:
        if revision in self._poked:
            return  # one poke at a time per revision: a burst of stats is one decision
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next tick decides
        self._poked.add(revision)
        task = loop.create_task(self.decide(revision, self._clock.now(), poke=True))
        self._pokes.add(task)

        def done(t: asyncio.Task[Decision | None]) -> None:
            self._pokes.discard(t)
            self._poked.discard(revision)

        task.add_done_callback(done)

    async def settle(self) -> None:
        """Wait for decisions started by pokes (tests)."""
        while self._pokes:
            await asyncio.gather(*list(self._pokes), return_exceptions=True)

    # -- decisions -----------------------------------------------------------------------------------
    async def _ready(self, revision: RevisionKey) -> int | None:
        try:
            n = self._pods.ready_pods(revision)
            if inspect.isawaitable(n):
                n = await n
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("counting ready pods of %s failed: %s", revision, e)
            return None
        return None if n is None else int(n)

    async def decide(self, revision: RevisionKey, now: float, *, poke: bool = False) -> Decision | None:
        rev = self._revs.get(revision)
        if rev is None:
            return None
        async with rev.lock:
            return await self._decide(revision, rev, now, poke)

    async def _decide(self, key: RevisionKey, rev: _Revision, now: float, poke: bool) -> Decision | None:
        ready = await self._ready(key)
        if self._revs.get(key) is not rev:
            return None  # removed while we counted
        s = rev.scaling
        if rev.decider is None:
            rev.decider = Decider(s.spec, ready, now)
            state = PAState.INACTIVE if (not rev.created and ready == 0) else PAState.ACTIVATING
            rev.kpa = RevisionScaler(s, now, state=state, initialized=not rev.created)
            if rev.created:
                await self._apply(key, rev, s.initial_scale)
        assert rev.kpa is not None
        observed = self.collector.observed(key, now)
        stable, panic = observed if observed is not None else (None, None)
        result = rev.decider.scale(now, stable, panic, ready)
        if result.scale_valid:
            rev.desired = result.desired_pod_count
            rev.ebc = result.excess_burst_capacity
        # A failed count leaves the decision as it was; the apply step goes on with the last known count.
        if ready is not None:
            known_ready = ready
        elif rev.last is not None and rev.last.ready_pods is not None:
            known_ready = rev.last.ready_pods
        else:
            known_ready = 0
        activator_ready = True
        if self._probe is not None and rev.kpa.state is PAState.INACTIVE and rev.desired == 0:
            activator_ready = await self._probe_activator(key)
        applied = rev.kpa.reconcile(now, rev.desired, rev.ebc, known_ready, activator_ready=activator_ready)
        did_apply = False
        if applied.apply and applied.want >= 0 and applied.want != rev.applied:
            did_apply = await self._apply(key, rev, applied.want)
        d = Decision(
            revision=key,
            time=now,
            want=applied.want,
            applied=did_apply,
            decided=rev.desired,
            ready_pods=ready,
            in_panic=rev.decider.in_panic,
            excess_burst_capacity=rev.ebc,
            activator_in_path=applied.activator_in_path,
            num_activators=applied.num_activators,
            metric=s.spec.scaling_metric,
            observed_stable=stable,
            observed_panic=panic,
            target=s.spec.target_value,
            state=applied.state,
            valid=result.scale_valid,
            poke=poke,
        )
        rev.last = d
        for listener in list(self._listeners):
            try:
                listener(d)
            except Exception:
                log.exception("decision listener failed")
        return d

    async def _probe_activator(self, key: RevisionKey) -> bool:
        assert self._probe is not None
        try:
            ok = self._probe.activator_in_path(key)
            if inspect.isawaitable(ok):
                ok = await ok
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.info("activator probe for %s failed: %s", key, e)
            return False
        return bool(ok)

    async def _apply(self, key: RevisionKey, rev: _Revision, want: int) -> bool:
        try:
            await self._scaler.scale(key, want)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("scaling %s to %d failed (retried next tick): %s", key, want, e)
            return False
        if rev.applied != want:
            log.info("scaled %s to %d", key, want)
        rev.applied = want
        return True

    async def tick(self, now: float | None = None) -> list[Decision]:
        """One decision for every revision, concurrently."""
        t = self._clock.now() if now is None else now
        out = await asyncio.gather(*(self.decide(k, t) for k in list(self._revs)), return_exceptions=True)
        decisions = []
        for r in out:
            if isinstance(r, BaseException):
                log.error("decision failed: %r", r)
            elif r is not None:
                decisions.append(r)
        return decisions

    def launch(self, now: float | None = None) -> list[asyncio.Task[Decision | None]]:
        """Start a decision for every revision whose previous one finished; do not wait for them.

        Each revision keeps its own pace, as Knative's per-revision tickers do: a Scaler call that takes
        long (pods starting) delays that revision's next decision, not the others'.
        """
        t = self._clock.now() if now is None else now
        loop = asyncio.get_running_loop()
        started = []
        for key in list(self._revs):
            task = self._running.get(key)
            if task is not None and not task.done():
                continue
            task = loop.create_task(self.decide(key, t))
            task.add_done_callback(_log_failure)
            self._running[key] = task
            started.append(task)
        for key in [k for k in self._running if k not in self._revs]:
            del self._running[key]
        return started

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                self.launch()
                next_at += self._interval
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)


def _log_failure(task: asyncio.Task[Decision | None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("decision failed: %r", task.exception())
