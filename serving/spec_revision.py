"""Revisions: Knative's names (``{service}-{00001}``), immutability, the history of a Service's templates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import SpecError
from .spec_model import RevisionTemplate, Service
from .types import RevisionKey

__all__ = ["Revision", "RevisionHistory", "child_name", "revision_name"]

MAX_NAME = 63


def child_name(parent: str, suffix: str) -> str:
    """``parent + suffix``, shortened to a 63-character name with a hash of the parent when too long."""
    name = parent + suffix
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(parent.encode()).hexdigest()[:10]
    keep = MAX_NAME - len(suffix) - len(digest)
    return parent[:keep].rstrip("-") + digest + suffix


def revision_name(service: str, generation: int) -> str:
    """Knative's generated revision name: the Configuration's generation, five digits: ``hello-00001``."""
    if generation < 1:
        raise ValueError(f"generation must be at least 1, got {generation}")
    return child_name(service, f"-{generation:05d}")


@dataclass(frozen=True, slots=True)
class Revision:
    """An immutable snapshot of a Service's template: what a pod of this revision runs."""

    name: str
    namespace: str
    service: str
    generation: int
    template: RevisionTemplate
    template_hash: str
    base_dir: str = "."  # where the Service file was: the local process's working directory

    @property
    def key(self) -> RevisionKey:
        return RevisionKey(self.namespace, self.name)

    @property
    def configuration(self) -> str:
        return self.service


class RevisionHistory:
    """Which revisions each Service has, in creation order, and which one is its latest.

    ``admit(service)`` is what applying a Service file does to its Configuration: the same template
    again makes no new revision; a changed template makes the next generation's revision, named
    ``{service}-{generation:05d}`` unless ``spec.template.metadata.name`` gives the name. A given
    name that already belongs to a different template is an error: revisions are immutable.
    """

    __slots__ = ("_by_name", "_generation", "_latest", "_order")

    def __init__(self) -> None:
        self._by_name: dict[RevisionKey, Revision] = {}
        self._order: dict[tuple[str, str], list[Revision]] = {}
        self._latest: dict[tuple[str, str], Revision] = {}
        self._generation: dict[tuple[str, str], int] = {}

    def copy(self) -> RevisionHistory:
        """An independent history with the same revisions (Revisions are immutable: containers are copied)."""
        new = RevisionHistory()
        new._by_name = dict(self._by_name)
        new._order = {k: list(v) for k, v in self._order.items()}
        new._latest = dict(self._latest)
        new._generation = dict(self._generation)
        return new

    def admit(self, service: Service) -> tuple[Revision, bool]:
        """The Service's latest revision after applying it, and whether it was created just now."""
        sk = (service.namespace, service.name)
        tmpl = service.template
        digest = tmpl.template_hash()
        latest = self._latest.get(sk)
        if latest is not None and latest.template_hash == digest:
            return latest, False
        path = "spec.template.metadata.name"
        generation = self._generation.get(sk, 0) + 1
        if tmpl.name:
            existing = self._by_name.get(RevisionKey(service.namespace, tmpl.name))
            if existing is not None:
                if existing.service == service.name and existing.template_hash == digest:
                    self._latest[sk] = existing
                    self._generation[sk] = generation
                    return existing, False
                raise SpecError(
                    f"{service.source}, Service {service.name}: {path}: revision {tmpl.name!r} already "
                    "exists with a different template; revisions are immutable, so give the changed "
                    "template a new name (or remove the name to have one generated)"
                )
            name = tmpl.name
        else:
            name = revision_name(service.name, generation)
            if RevisionKey(service.namespace, name) in self._by_name:
                raise SpecError(
                    f"{service.source}, Service {service.name}: {path}: the generated name {name!r} is "
                    "already taken by a named revision; give this template a name"
                )
        revision = Revision(
            name=name,
            namespace=service.namespace,
            service=service.name,
            generation=generation,
            template=tmpl,
            template_hash=digest,
            base_dir=service.base_dir,
        )
        self._generation[sk] = generation
        self._by_name[revision.key] = revision
        self._order.setdefault(sk, []).append(revision)
        self._latest[sk] = revision
        return revision, True

    def get(self, key: RevisionKey) -> Revision | None:
        return self._by_name.get(key)

    def latest(self, namespace: str, service: str) -> Revision | None:
        return self._latest.get((namespace, service))

    def revisions(self, namespace: str, service: str) -> list[Revision]:
        """The Service's revisions, oldest first."""
        return list(self._order.get((namespace, service), ()))

    def forget(self, namespace: str, service: str) -> list[Revision]:
        """Delete a Service: its revisions go, and a Service created again later starts at generation 1."""
        gone = self._order.pop((namespace, service), [])
        for r in gone:
            self._by_name.pop(r.key, None)
        self._latest.pop((namespace, service), None)
        self._generation.pop((namespace, service), None)
        return gone
