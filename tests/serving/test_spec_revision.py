"""Revision names, template hashes and the immutability of revisions."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
import yaml

from serving.errors import SpecError
from serving.spec import RevisionHistory, Service, child_name, parse_services, revision_name
from serving.types import RevisionKey

from .test_spec import BASE, C0, doc


def svc(**changes: Any) -> Service:
    return parse_services(yaml.safe_dump(doc(**changes)), "svc.yaml")[0]


@pytest.mark.parametrize(
    ("service", "generation", "expect"),
    [
        pytest.param("hello", 1, "hello-00001", id="first"),
        pytest.param("hello", 42, "hello-00042", id="padded"),
        pytest.param("hello", 123456, "hello-123456", id="wide"),
    ],
)
def test_revision_name(service: str, generation: int, expect: str) -> None:
    assert revision_name(service, generation) == expect


def test_long_names_are_shortened_with_a_hash() -> None:
    long = "a" * 60
    name = revision_name(long, 1)
    assert len(name) == 63 and name.endswith("-00001")
    assert name != revision_name("a" * 59 + "b", 1)
    assert child_name("x", "-y") == "x-y"
    with pytest.raises(ValueError):
        revision_name("x", 0)


def test_template_hash_is_stable_across_processes() -> None:
    here = svc().template.template_hash()
    code = (
        "import yaml; from serving.spec import parse_services; from tests.serving.test_spec import BASE;"
        "print(parse_services(yaml.safe_dump(BASE))[0].template.template_hash())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


def test_defaults_make_explicit_and_implicit_equal() -> None:
    assert (
        svc().template.template_hash()
        == svc(**{"spec.template.spec.timeoutSeconds": 300}).template.template_hash()
    )


def test_same_template_no_new_revision_changed_template_next_one() -> None:
    h = RevisionHistory()
    r1, created = h.admit(svc())
    assert (r1.name, r1.generation, created) == ("hello-00001", 1, True)
    assert r1.key == RevisionKey("default", "hello-00001")
    # the same file again, and a change outside the template (traffic, service annotations): no revision
    assert h.admit(svc()) == (r1, False)
    assert h.admit(svc(**{"metadata.labels": {"a": "b"}})) == (r1, False)
    r2, created = h.admit(svc(**{f"{C0}.env": [{"name": "TARGET", "value": "v2"}]}))
    assert (r2.name, created) == ("hello-00002", True)
    # going back to the first template makes a third revision, as Knative's Configuration does
    r3, created = h.admit(svc())
    assert (r3.name, created) == ("hello-00003", True)
    assert [r.name for r in h.revisions("default", "hello")] == ["hello-00001", "hello-00002", "hello-00003"]
    assert h.latest("default", "hello") == r3
    assert h.get(RevisionKey("default", "hello-00002")) == r2


def test_given_name_is_used_and_reusing_it_with_another_template_fails() -> None:
    h = RevisionHistory()
    blue = {"spec.template.metadata": {"name": "hello-blue"}}
    r1, _ = h.admit(svc(**blue))
    assert r1.name == "hello-blue"
    r2, _ = h.admit(svc(**{"spec.template.metadata": {"name": "hello-green"}}))
    assert (r2.name, r2.generation) == ("hello-green", 2)
    # the same name and template again: that revision, no new one
    assert h.admit(svc(**blue)) == (r1, False)
    assert h.latest("default", "hello") == r1
    with pytest.raises(SpecError, match=r"spec.template.metadata.name: revision 'hello-blue' already exists"):
        h.admit(svc(**blue, **{"spec.template.spec.containerConcurrency": 3}))
    # a later generated name continues the generation count
    r4, _ = h.admit(svc(**{"spec.template.spec.containerConcurrency": 4}))
    assert r4.name == "hello-00004"


def test_generated_name_taken_by_a_named_revision() -> None:
    h = RevisionHistory()
    h.admit(svc(**{"spec.template.metadata": {"name": "hello-00002"}}))
    with pytest.raises(SpecError, match="generated name 'hello-00002' is already taken"):
        h.admit(svc())


def test_services_are_independent_and_forget_restarts_generations() -> None:
    h = RevisionHistory()
    a = copy.deepcopy(BASE)
    a["metadata"]["name"] = "other"
    h.admit(svc())
    other, _ = h.admit(parse_services(yaml.safe_dump(a))[0])
    assert other.name == "other-00001"
    assert [r.name for r in h.forget("default", "hello")] == ["hello-00001"]
    assert h.latest("default", "hello") is None
    assert h.admit(svc())[0].name == "hello-00001"


def test_copy_is_independent_of_the_original() -> None:
    h = RevisionHistory()
    r1, _ = h.admit(svc())
    trial = h.copy()
    r2, created = trial.admit(svc(**{f"{C0}.env": [{"name": "TARGET", "value": "v2"}]}))
    assert created and r2.name == "hello-00002"
    # a refused apply works on a copy: the original has not moved
    assert h.latest("default", "hello") == r1
    assert [r.name for r in h.revisions("default", "hello")] == ["hello-00001"]
    assert h.admit(svc(**{f"{C0}.env": [{"name": "TARGET", "value": "v2"}]}))[0].name == "hello-00002"
