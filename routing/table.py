"""The routing table: an immutable snapshot from host (and tag header) to a weighted revision split.

Hosts follow Knative's templates: ``{name}.{namespace}.{domain}`` for the default route and
``{tag}-{name}.{namespace}.{domain}`` for each tag. On the default host a ``Knative-Serving-Tag`` header
naming a known tag picks that tag's route; an unknown tag falls back to the default route. A route
update builds a new table and swaps one reference (:class:`TableHolder`), so a request in flight keeps
the snapshot it looked up and never sees half an update.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from serving.types import RevisionKey

from .picker import WeightedPicker
from .traffic import Flattened, Split

__all__ = ["Route", "RouteSpec", "RouteTable", "TableHolder", "default_host", "normalize_host", "tag_host"]


def default_host(name: str, namespace: str, domain: str) -> str:
    return f"{name}.{namespace}.{domain}".lower()


def tag_host(tag: str, name: str, namespace: str, domain: str) -> str:
    return f"{tag}-{name}.{namespace}.{domain}".lower()


def normalize_host(host: str) -> str:
    """Lower-case, without a ``:port`` and a trailing dot; IPv6 literals keep their brackets."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end >= 0 else h
    if ":" in h:
        h = h.rsplit(":", 1)[0]
    return h.rstrip(".")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A Knative Route (one per Service): where it lives and its flattened traffic."""

    name: str
    namespace: str
    traffic: Flattened


class Route:
    """One host's destination: a weighted pick over revisions of one namespace."""

    __slots__ = ("name", "namespace", "picker", "revisions", "tag")

    def __init__(
        self, name: str, namespace: str, split: Split, tag: str | None, rng: random.Random | None = None
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.tag = tag
        self.picker: WeightedPicker[RevisionKey] = WeightedPicker(
            [(RevisionKey(namespace, t.revision), t.percent) for t in split.targets], rng
        )
        self.revisions = frozenset(self.picker.items)

    def pick(self) -> RevisionKey:
        return self.picker.pick()

    def __repr__(self) -> str:
        names = sorted(k.name for k in self.revisions)
        return f"Route({self.namespace}/{self.name}, tag={self.tag!r}, {names})"


@dataclass(frozen=True, slots=True)
class _HostEntry:
    default: Route
    by_tag: Mapping[str, Route] = field(default_factory=dict)


class RouteTable:
    """Immutable routes: build a new table per change. ``lookup`` is a dict access and a header check.

    (Only each route's deck of picks moves; see :mod:`routing.picker`.)
    """

    __slots__ = ("_hosts", "domain")

    def __init__(
        self,
        routes: Iterable[RouteSpec] = (),
        domain: str = "svc.cluster.local",
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        self.domain = domain.lower().strip(".")
        # Cluster-local domains (svc.cluster.local) also answer to the short names Kubernetes clients
        # use: hello.default.svc and hello.default, as Knative's cluster-local gateway does.
        domains = [self.domain]
        if self.domain.startswith("svc."):
            domains += ["svc", ""]
        hosts: dict[str, _HostEntry] = {}
        for spec in routes:
            by_tag: dict[str, Route] = {}
            for tag, split in spec.traffic.tags.items():
                route = Route(spec.name, spec.namespace, split, tag, rng)
                by_tag[tag] = route
                tag_entry = _HostEntry(route)
                for d in domains:
                    self._add(hosts, tag_host(tag, spec.name, spec.namespace, d).rstrip("."), tag_entry)
            default = Route(spec.name, spec.namespace, spec.traffic.default, None, rng)
            entry = _HostEntry(default, by_tag)
            for d in domains:
                self._add(hosts, default_host(spec.name, spec.namespace, d).rstrip("."), entry)
        self._hosts = hosts

    @staticmethod
    def _add(hosts: dict[str, _HostEntry], host: str, entry: _HostEntry) -> None:
        if host in hosts:
            other = hosts[host].default
            raise ValueError(
                f"host {host!r} of route {entry.default.namespace}/{entry.default.name}"
                f" (tag {entry.default.tag!r}) is already served by {other!r}"
            )
        hosts[host] = entry

    def hosts(self) -> list[str]:
        return sorted(self._hosts)

    def lookup(self, host: str, tag: str | None = None) -> Route | None:
        """The route for a request's Host (any case, with or without port) and Knative-Serving-Tag."""
        entry = self._hosts.get(host) or self._hosts.get(normalize_host(host))
        if entry is None:
            return None
        if tag:
            return entry.by_tag.get(tag, entry.default)
        return entry.default

    def __len__(self) -> int:
        return len(self._hosts)


class TableHolder:
    """The one mutable reference: readers take ``current`` once per request; writers ``swap``."""

    __slots__ = ("current", "version")

    def __init__(self, table: RouteTable | None = None) -> None:
        self.current = table if table is not None else RouteTable()
        self.version = 0

    def swap(self, table: RouteTable) -> RouteTable:
        old, self.current = self.current, table
        self.version += 1
        return old
