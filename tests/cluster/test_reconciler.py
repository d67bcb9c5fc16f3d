"""The reconciler of `zeroscale up`, driven by hand with a fake clock: revisions, traffic, rollouts, swaps."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cluster.reconciler import Reconciler
from routing.table import TableHolder
from serving.config import NetworkConfig
from serving.errors import SpecError
from serving.spec import Service, parse_services
from serving.types import RevisionKey


def svc(
    name: str = "hello",
    version: str = "1",
    *,
    rev_name: str = "",
    traffic: str = "",
    annotations: str = "",
) -> Service:
    meta = f"\n    metadata:\n      name: {rev_name}" if rev_name else ""
    text = f"""
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
{annotations}
spec:
  template:{meta}
    spec:
      containers:
        - command: [python3, app.py]
          env:
            - name: VERSION
              value: "{version}"
{traffic}
"""
    return parse_services(text, f"{name}.yaml")[0]


def key(name: str) -> RevisionKey:
    return RevisionKey("default", name)


def split(rec: Reconciler, service: str = "hello") -> dict[str, int]:
    return {t.revision: t.percent for t in rec.traffic("default", service) if t.percent}


def test_first_apply_admits_a_revision_and_routes_to_it_before_it_is_ready() -> None:
    rec = Reconciler(domain="example.com")
    changes, fx = rec.apply([svc()], now=0.0)
    assert [c.revision for c in changes] == ["hello-00001"] and changes[0].created
    assert [r.name for r in fx.added] == ["hello-00001"]
    assert fx.routes_changed and fx.reachable == {key("hello-00001"): True}
    assert split(rec) == {"hello-00001": 100}
    route = rec.table().lookup("hello.default.example.com:8080")
    assert route is not None and route.pick() == key("hello-00001")
    assert rec.url("default", "hello") == "http://hello.default.example.com"


def test_same_template_again_makes_no_revision_and_no_route_change() -> None:
    rec = Reconciler()
    rec.apply([svc()], 0.0)
    changes, fx = rec.apply([svc()], 1.0)
    assert not changes[0].created and "unchanged" in changes[0].message
    assert fx.added == [] and not fx.routes_changed and fx.reachable == {}


def test_changed_template_moves_traffic_only_once_the_new_revision_is_ready() -> None:
    rec = Reconciler()
    rec.apply([svc()], 0.0)
    rec.revision_ready(key("hello-00001"), 1.0)
    _, fx = rec.apply([svc(version="2")], 2.0)
    assert [r.name for r in fx.added] == ["hello-00002"]
    assert not fx.routes_changed and split(rec) == {"hello-00001": 100}
    assert key("hello-00002") in rec.reachable()  # the latest revision starts (initial scale)
    fx = rec.revision_ready(key("hello-00002"), 3.0)
    assert fx.routes_changed and split(rec) == {"hello-00002": 100}
    assert fx.reachable == {key("hello-00001"): False}  # kept, but the autoscaler takes it to zero
    assert [r.name for r in rec.revisions("default", "hello")] == ["hello-00001", "hello-00002"]
    assert rec.revision_ready(key("hello-00002"), 4.0).events == []  # ready once is enough


BLUE_GREEN = """  traffic:
    - tag: blue
      revisionName: bg-blue
      percent: {blue}
    - tag: green
      revisionName: bg-green
      percent: {green}
"""


def test_named_split_waits_for_the_named_revision_then_serves_both_and_the_tags() -> None:
    rec = Reconciler(domain="example.com", rng=random.Random(1))
    only_blue = "  traffic:\n    - revisionName: bg-blue\n      percent: 100\n"
    blue = svc("bg", "blue", rev_name="bg-blue", traffic=only_blue)
    rec.apply([blue], 0.0)
    rec.revision_ready(key("bg-blue"), 1.0)
    green = svc("bg", "green", rev_name="bg-green", traffic=BLUE_GREEN.format(blue=60, green=40))
    _, fx = rec.apply([green], 2.0)
    assert split(rec, "bg") == {"bg-blue": 100} and any("waits for" in e for e in fx.events)
    fx = rec.revision_ready(key("bg-green"), 3.0)
    assert fx.routes_changed and split(rec, "bg") == {"bg-blue": 60, "bg-green": 40}
    table = rec.table()
    route = table.lookup("bg.default.example.com")
    assert route is not None
    picks = Counter(route.pick().name for _ in range(100))
    assert picks == {"bg-blue": 60, "bg-green": 40}
    green_route = table.lookup("green-bg.default.example.com")
    assert green_route is not None and green_route.pick() == key("bg-green")
    tags = {(t.revision, t.tag) for t in rec.traffic("default", "bg")}
    assert tags == {("bg-blue", "blue"), ("bg-green", "green")}


def test_a_table_in_use_keeps_its_snapshot_when_a_new_one_is_swapped_in() -> None:
    rec = Reconciler(domain="example.com")
    rec.apply([svc()], 0.0)
    rec.revision_ready(key("hello-00001"), 0.0)
    holder = TableHolder(rec.table())
    in_flight = holder.current  # what a request looked up
    rec.apply([svc(version="2")], 1.0)
    rec.revision_ready(key("hello-00002"), 2.0)
    holder.swap(rec.table())
    old_route, new_route = (
        in_flight.lookup("hello.default.example.com"),
        holder.current.lookup("hello.default.example.com"),
    )
    assert old_route is not None and old_route.pick() == key("hello-00001")
    assert new_route is not None and new_route.pick() == key("hello-00002")
    assert holder.version == 1


@pytest.mark.parametrize(
    ("docs", "field"),
    [
        pytest.param(
            [svc(traffic="  traffic:\n    - revisionName: nope\n      percent: 100\n")],
            "spec.traffic[0].revisionName",
            id="unknown-revision",
        ),
        pytest.param([svc(version="3"), svc(version="4")], "metadata.name", id="same-service-twice"),
    ],
)
def test_a_bad_apply_names_the_field_and_changes_nothing(docs: list[Service], field: str) -> None:
    rec = Reconciler()
    rec.apply([svc()], 0.0)
    rec.revision_ready(key("hello-00001"), 0.0)
    before = (rec.routes(), rec.revisions("default", "hello"))
    with pytest.raises(SpecError, match=field.replace("[", r"\[").replace("]", r"\]")):
        rec.apply([svc("other"), *docs], 1.0)
    assert (rec.routes(), rec.revisions("default", "hello")) == before
    assert rec.services()[0].name == "hello" and len(rec.services()) == 1
    _, fx = rec.apply([svc(version="2")], 2.0)  # generation numbering did not move either
    assert [r.name for r in fx.added] == ["hello-00002"]


def test_gradual_rollout_moves_in_knative_steps_and_ends_at_100() -> None:
    ann = '  annotations:\n    serving.knative.dev/rollout-duration: "10s"'
    rec = Reconciler()
    rec.apply([svc(annotations=ann)], 0.0)
    rec.revision_ready(key("hello-00001"), 0.0)
    rec.apply([svc(version="2", annotations=ann)], 50.0)
    fx = rec.revision_ready(key("hello-00002"), 100.0)
    assert fx.routes_changed and split(rec) == {"hello-00001": 99, "hello-00002": 1}
    assert rec.tick(100.4).routes_changed is False  # observed: the first 1 % took < 1 s
    ro = rec.rollout("default", "hello")
    assert ro is not None and (ro.step_size, ro.step_duration) == (11, 1.0)
    assert rec.next_wakeup() == pytest.approx(101.4)
    assert not rec.tick(101.0).routes_changed  # not due yet
    seen = [split(rec)["hello-00002"]]
    t = 101.4
    for _ in range(20):
        fx = rec.tick(t)
        if fx.routes_changed:
            seen.append(split(rec)["hello-00002"])
        if rec.rollout("default", "hello") is None:
            break
        t += 1.0
    assert seen == [1, 12, 23, 34, 45, 56, 67, 78, 89, 100]
    assert split(rec) == {"hello-00002": 100} and rec.next_wakeup() is None
    assert key("hello-00001") not in rec.reachable()


def test_config_network_rollout_duration_applies_without_the_annotation() -> None:
    rec = Reconciler(network=NetworkConfig(rollout_duration_seconds=4))
    rec.apply([svc()], 0.0)
    rec.revision_ready(key("hello-00001"), 0.0)
    rec.apply([svc(version="2")], 1.0)
    rec.revision_ready(key("hello-00002"), 2.0)
    assert split(rec) == {"hello-00001": 99, "hello-00002": 1}


def test_a_third_revision_mid_rollout_takes_its_percent_from_the_newest_older_one() -> None:
    ann = '  annotations:\n    serving.knative.dev/rollout-duration: "100s"'
    rec = Reconciler()
    for i, v in enumerate(("1", "2", "3"), start=1):
        rec.apply([svc(version=v, annotations=ann)], float(i))
        rec.revision_ready(key(f"hello-0000{i}"), float(i))
        rec.tick(float(i) + 0.5)
    assert split(rec) == {"hello-00001": 99, "hello-00003": 1}  # 00002 had 1 % and gave it up


def test_delete_removes_the_service_its_revisions_and_its_routes() -> None:
    rec = Reconciler()
    rec.apply([svc(), svc("other")], 0.0)
    rec.apply([svc(version="2")], 1.0)
    fx = rec.delete("default", "hello", 2.0)
    assert fx is not None and sorted(r.name for r in fx.removed) == ["hello-00001", "hello-00002"]
    assert fx.routes_changed and [r.name for r in rec.routes()] == ["other"]
    assert rec.delete("default", "hello", 3.0) is None
    _, fx = rec.apply([svc()], 4.0)
    assert [r.name for r in fx.added] == ["hello-00001"]  # a new Service starts at generation 1 again


def test_a_first_ready_revision_older_than_the_latest_gets_the_traffic_without_a_rollout() -> None:
    # v2 is applied before v1 was ever ready: the route waits on v2; then v1 turns ready (v2 never
    # does): all traffic goes to v1 at once, not in a "rollout" from the placeholder v2.
    ann = '  annotations:\n    serving.knative.dev/rollout-duration: "60s"'
    rec = Reconciler()
    rec.apply([svc(annotations=ann)], 0.0)
    rec.apply([svc(version="2", annotations=ann)], 0.5)
    assert split(rec) == {"hello-00002": 100}  # nothing ready: the latest, the activator holds requests
    fx = rec.revision_ready(key("hello-00001"), 1.0)
    assert fx.routes_changed and split(rec) == {"hello-00001": 100}
    assert rec.rollout("default", "hello") is None
    rec.revision_ready(key("hello-00002"), 5.0)  # once the newer one is ready, it rolls out normally
    assert split(rec) == {"hello-00001": 99, "hello-00002": 1}
