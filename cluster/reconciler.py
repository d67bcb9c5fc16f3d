"""Services in, revisions and routes out: the pure core of ``zeroscale up`` (time is passed in).

    rec = Reconciler(network=NetworkConfig(), domain="example.com")
    changes, fx = rec.apply(services, now)       # all or nothing: a bad document changes nothing
    fx.added                                      # new revisions: start them (add to runtime, autoscaler)
    fx.routes_changed                             # build rec.table() and swap it in one reference
    fx = rec.revision_ready(key, now)             # a pod of the revision answered: traffic may move
    fx = rec.tick(now)                            # rollout steps when due (rec.next_wakeup() says when)

Each change of a Service's ``spec.template`` admits a new immutable revision; revisions that lose all
traffic are kept (unreachable, so the autoscaler takes them to zero) until the Service is deleted.
Every call returns :class:`Effects`, the difference it made, so the composition can act in a safe
order: start new revisions before the route names them, swap the table, then remove old ones.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from routing.table import RouteSpec, RouteTable
from routing.traffic import TrafficTarget as RoutingTarget
from routing.traffic import flatten
from serving.config import NetworkConfig
from serving.errors import SpecError
from serving.spec import Revision, RevisionHistory, Service
from serving.types import RevisionKey

from .reconciler_traffic import EffTarget, Rollout, adjust, begin_rollout, config_target, resolve_targets

__all__ = ["Change", "Effects", "Reconciler"]


@dataclass(frozen=True, slots=True)
class Change:
    """What applying one Service did, for the control API's answer and the log."""

    namespace: str
    service: str
    revision: str
    created: bool
    message: str


@dataclass(slots=True)
class Effects:
    added: list[Revision] = field(default_factory=list)
    removed: list[Revision] = field(default_factory=list)
    reachable: dict[RevisionKey, bool] = field(default_factory=dict)  # revisions whose reachability changed
    routes_changed: bool = False
    events: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _ServiceState:
    service: Service
    ready: set[str] = field(default_factory=set)  # revisions that have been ready at least once
    effective: tuple[EffTarget, ...] = ()
    config_split: list[tuple[str, int]] | None = None
    rollout: Rollout | None = None

    def clone(self) -> _ServiceState:
        ro = self.rollout
        return _ServiceState(
            self.service,
            set(self.ready),
            self.effective,
            list(self.config_split) if self.config_split is not None else None,
            replace(ro, revisions=list(ro.revisions)) if ro is not None else None,
        )


@dataclass(slots=True)
class _State:
    history: RevisionHistory = field(default_factory=RevisionHistory)
    services: dict[tuple[str, str], _ServiceState] = field(default_factory=dict)

    def clone(self) -> _State:
        """A copy to try a change on (Services and Revisions are immutable and shared)."""
        return _State(self.history.copy(), {k: st.clone() for k, st in self.services.items()})


class Reconciler:
    def __init__(
        self,
        network: NetworkConfig | None = None,
        domain: str = "example.com",
        rng: random.Random | None = None,
    ) -> None:
        self.network = network or NetworkConfig()
        self.domain = domain
        self._rng = rng or random.Random()
        self._state = _State()

    # -- reading ---------------------------------------------------------------------------------------

    def services(self) -> list[Service]:
        return [st.service for st in self._state.services.values()]

    def revisions(self, namespace: str, name: str) -> list[Revision]:
        return self._state.history.revisions(namespace, name)

    def revision(self, key: RevisionKey) -> Revision | None:
        return self._state.history.get(key)

    def traffic(self, namespace: str, name: str) -> tuple[EffTarget, ...]:
        st = self._state.services.get((namespace, name))
        return st.effective if st is not None else ()

    def rollout(self, namespace: str, name: str) -> Rollout | None:
        st = self._state.services.get((namespace, name))
        return st.rollout if st is not None else None

    def is_ready(self, key: RevisionKey) -> bool:
        rev = self._state.history.get(key)
        st = self._state.services.get((key.namespace, rev.service)) if rev is not None else None
        return st is not None and key.name in st.ready

    def routes(self) -> list[RouteSpec]:
        return _routes(self._state)

    def reachable(self) -> frozenset[RevisionKey]:
        return _reachable(self._state)

    def table(self) -> RouteTable:
        return RouteTable(self.routes(), self.domain, self._rng)

    def url(self, namespace: str, name: str, tag: str | None = None) -> str:
        host = f"{tag}-{name}" if tag else name
        return f"http://{host}.{namespace}.{self.domain}"

    def next_wakeup(self) -> float | None:
        times = [
            st.rollout.next_step
            for st in self._state.services.values()
            if st.rollout is not None and st.rollout.next_step is not None
        ]
        return min(times) if times else None

    # -- changes ---------------------------------------------------------------------------------------

    def apply(self, services: Sequence[Service], now: float) -> tuple[list[Change], Effects]:
        """Admit every Service (a new revision per changed template) or, on any error, none of them."""
        trial = self._state.clone()
        seen: dict[tuple[str, str], str] = {}
        changes: list[Change] = []
        added: list[Revision] = []
        for svc in services:
            sk = (svc.namespace, svc.name)
            if sk in seen:
                raise SpecError(
                    f"{svc.source}: metadata.name: Service {svc.namespace}/{svc.name} is also defined by "
                    f"{seen[sk]}; give each Service once"
                )
            seen[sk] = svc.source
            rev, created = trial.history.admit(svc)
            _check_named_targets(svc, trial.history)
            st = trial.services.get(sk)
            if st is None:
                st = trial.services[sk] = _ServiceState(svc)
            old = st.service
            st.service = svc
            if created:
                added.append(rev)
                msg = f"service {svc.namespace}/{svc.name}: revision {rev.name} created"
            elif old.traffic != svc.traffic or old.rollout_duration_seconds != svc.rollout_duration_seconds:
                msg = f"service {svc.namespace}/{svc.name}: traffic changed (revision {rev.name})"
            else:
                msg = f"service {svc.namespace}/{svc.name}: unchanged (revision {rev.name})"
            changes.append(Change(svc.namespace, svc.name, rev.name, created, msg))
        events = [c.message for c in changes]
        for sk in seen:
            _recompute(trial, trial.services[sk], self.network, now, events)
        try:
            RouteTable(_routes(trial), self.domain)
        except ValueError as e:
            raise SpecError(f"{', '.join(sorted(seen.values()))}: metadata.name: {e}") from None
        fx = self._commit(trial, now)
        fx.added = added
        for rev in added:
            fx.reachable.setdefault(rev.key, rev.key in _reachable(trial))
        fx.events[:0] = events
        return changes, fx

    def revision_ready(self, key: RevisionKey, now: float) -> Effects:
        """A pod of the revision became ready: from now on ``latestRevision`` and named targets may use it."""
        state = self._state
        rev = state.history.get(key)
        st = state.services.get((key.namespace, rev.service)) if rev is not None else None
        if rev is None or st is None or key.name in st.ready:
            return Effects()
        trial = state.clone()
        tst = trial.services[(key.namespace, rev.service)]
        tst.ready.add(key.name)
        events = [f"revision {key} ready"]
        _recompute(trial, tst, self.network, now, events)
        fx = self._commit(trial, now)
        fx.events[:0] = events
        return fx

    def tick(self, now: float) -> Effects:
        """Observe freshly started rollouts and take the steps that are due."""
        trial = self._state.clone()
        events: list[str] = []
        for st in trial.services.values():
            ro = st.rollout
            if ro is None:
                continue
            if not ro.observed:
                ro.observe(now)
                events.append(
                    f"service {st.service.namespace}/{st.service.name}: rollout steps of {ro.step_size} % "
                    f"every {ro.step_duration:.1f} s"
                )
                continue
            if ro.step(now):
                st.config_split = list(ro.revisions)
                if ro.done:
                    st.rollout = None
                _recompute(trial, st, self.network, now, events)
                split = ", ".join(f"{n} {p} %" for n, p in ro.revisions)
                done = " (done)" if ro.done else ""
                events.append(
                    f"service {st.service.namespace}/{st.service.name}: rollout step: {split}{done}"
                )
        fx = self._commit(trial, now)
        fx.events[:0] = events
        return fx

    def delete(self, namespace: str, name: str, now: float) -> Effects | None:
        if (namespace, name) not in self._state.services:
            return None
        trial = self._state.clone()
        del trial.services[(namespace, name)]
        gone = trial.history.forget(namespace, name)
        fx = self._commit(trial, now)
        fx.removed = gone
        for rev in gone:
            fx.reachable.pop(rev.key, None)
        fx.events.append(
            f"service {namespace}/{name} deleted with revisions {', '.join(r.name for r in gone)}"
        )
        return fx

    def _commit(self, trial: _State, now: float) -> Effects:
        before_routes, before_reach = _routes(self._state), _reachable(self._state)
        self._state = trial
        after_routes, after_reach = _routes(trial), _reachable(trial)
        fx = Effects(routes_changed=before_routes != after_routes)
        known = {r.key for st in trial.services.values() for r in trial.history.revisions(*_sk(st))}
        for key in known:
            was, now_r = key in before_reach, key in after_reach
            if was != now_r:
                fx.reachable[key] = now_r
        return fx


def _sk(st: _ServiceState) -> tuple[str, str]:
    return st.service.namespace, st.service.name


def _check_named_targets(svc: Service, history: RevisionHistory) -> None:
    names = {r.name for r in history.revisions(svc.namespace, svc.name)}
    for i, t in enumerate(svc.traffic):
        if t.revision_name and t.revision_name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise SpecError(
                f"{svc.source}, Service {svc.name}: spec.traffic[{i}].revisionName: revision "
                f"{t.revision_name!r} does not exist (revisions of this Service: {known})"
            )


def _latest_ready(state: _State, st: _ServiceState) -> str:
    ns, name = _sk(st)
    latest = state.history.latest(ns, name)
    assert latest is not None, "a Service always has a revision"
    if latest.name in st.ready or not st.ready:
        return latest.name
    ready = [r.name for r in state.history.revisions(ns, name) if r.name in st.ready]
    return ready[-1]


def _recompute(
    state: _State, st: _ServiceState, network: NetworkConfig, now: float, events: list[str]
) -> None:
    """Bring the config split (and a rollout) and the effective targets up to date with the spec."""
    svc = st.service
    latest = _latest_ready(state, st)
    cfg = config_target(svc)
    duration = svc.rollout_duration_seconds
    if duration is None:
        duration = float(network.rollout_duration_seconds)
    if cfg is None or cfg.percent == 0:
        st.config_split, st.rollout = None, None
    else:
        prev = st.config_split
        if prev is not None and sum(p for _, p in prev) != cfg.percent:
            prev = adjust(prev, cfg.percent) or None
        names = [n for n, _ in prev] if prev else []
        if prev is None or duration <= 0 or cfg.percent <= 1 or not st.ready:
            st.config_split, st.rollout = [(latest, cfg.percent)], None
        elif names[-1] == latest:
            st.config_split = prev
            if st.rollout is not None:
                st.rollout.revisions, st.rollout.config_percent = list(prev), cfg.percent
                if st.rollout.done:
                    st.rollout = None
        elif (
            latest in names  # back to a revision in the split: no rollout, as Knative
            or any(n not in st.ready for n in names)  # the split only held a place: nothing served it
            or _generation(state, svc, latest) < max(_generation(state, svc, n) for n in names)
        ):
            st.config_split, st.rollout = [(latest, cfg.percent)], None
        else:
            st.rollout = begin_rollout(prev, latest, cfg.percent, duration, now)
            st.config_split = list(st.rollout.revisions)
            events.append(
                f"service {svc.namespace}/{svc.name}: rollout of {latest} over {duration:g} s started at 1 %"
            )
    effective = resolve_targets(svc, latest, frozenset(st.ready), st.config_split)
    if effective is None:
        pending = [
            t.revision_name for t in svc.traffic if t.revision_name and t.revision_name not in st.ready
        ]
        events.append(
            f"service {svc.namespace}/{svc.name}: traffic waits for revision(s) "
            f"{', '.join(map(str, pending))} to become ready"
        )
        return
    st.effective = effective


def _generation(state: _State, svc: Service, revision: str) -> int:
    rev = state.history.get(RevisionKey(svc.namespace, revision))
    return rev.generation if rev is not None else 0


def _routes(state: _State) -> list[RouteSpec]:
    out = []
    for st in state.services.values():
        if not st.effective:
            continue
        targets = [
            RoutingTarget(revision_name=t.revision, percent=t.percent, tag=t.tag) for t in st.effective
        ]
        flat = flatten(targets, revisions={t.revision for t in st.effective}, latest_ready=None)
        out.append(RouteSpec(st.service.name, st.service.namespace, flat))
    return out


def _reachable(state: _State) -> frozenset[RevisionKey]:
    out: set[RevisionKey] = set()
    for st in state.services.values():
        ns, name = _sk(st)
        out.update(RevisionKey(ns, t.revision) for t in st.effective)
        latest = state.history.latest(ns, name)
        if latest is not None:
            out.add(latest.key)
    return frozenset(out)
