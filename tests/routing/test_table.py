from __future__ import annotations

import random
from collections import Counter

import pytest

from routing.table import RouteSpec, RouteTable, TableHolder, normalize_host
from routing.traffic import flatten, parse_traffic
from serving.types import RevisionKey


def _spec(name: str, ns: str, raw: list[dict[str, object]], revs: set[str], latest: str) -> RouteSpec:
    return RouteSpec(name, ns, flatten(parse_traffic(raw), revisions=revs, latest_ready=latest))


def _table() -> RouteTable:
    hello = _spec(
        "hello",
        "default",
        [
            {"revisionName": "hello-00001", "percent": 40, "tag": "stable"},
            {"latestRevision": True, "percent": 60},
            {"revisionName": "hello-00003", "percent": 0, "tag": "canary"},
        ],
        {"hello-00001", "hello-00002", "hello-00003"},
        "hello-00002",
    )
    other = _spec("api", "team", [], {"api-00001"}, "api-00001")
    return RouteTable([hello, other], domain="example.com", rng=random.Random(1))


@pytest.mark.parametrize(
    ("host", "tag", "want"),
    [
        pytest.param("hello-00001-x", None, None, id="unknown-host"),
        pytest.param("stable-hello.default.example.com", None, {"hello-00001"}, id="tag-host"),
        pytest.param("canary-hello.default.example.com", None, {"hello-00003"}, id="zero-pct-tag-host"),
        pytest.param("hello.default.example.com", "canary", {"hello-00003"}, id="tag-header"),
        pytest.param(
            "hello.default.example.com", "nope", {"hello-00001", "hello-00002"}, id="unknown-tag-default"
        ),
        pytest.param(
            "HELLO.default.example.com:8080", None, {"hello-00001", "hello-00002"}, id="case-and-port"
        ),
        pytest.param("hello.default.example.com.", None, {"hello-00001", "hello-00002"}, id="trailing-dot"),
        pytest.param(
            "canary-hello.default.example.com", "stable", {"hello-00003"}, id="tag-host-ignores-header"
        ),
        pytest.param("api.team.example.com", None, {"api-00001"}, id="other-namespace"),
        pytest.param("hello.team.example.com", None, None, id="wrong-namespace"),
    ],
)
def test_lookup(host: str, tag: str | None, want: set[str] | None) -> None:
    route = _table().lookup(host, tag)
    if want is None:
        assert route is None
        return
    assert route is not None
    assert {k.name for k in route.revisions} == want


def test_default_route_split_40_60() -> None:
    route = _table().lookup("hello.default.example.com")
    assert route is not None
    counts = Counter(route.pick() for _ in range(10_000))
    assert abs(counts[RevisionKey("default", "hello-00001")] / 100 - 40) <= 1
    assert abs(counts[RevisionKey("default", "hello-00002")] / 100 - 60) <= 1


def test_hosts_listed() -> None:
    assert _table().hosts() == [
        "api.team.example.com",
        "canary-hello.default.example.com",
        "hello.default.example.com",
        "stable-hello.default.example.com",
    ]


def test_host_clash_is_an_error() -> None:
    # a tag "b" on route "a" and a route named "b-a"... in the same namespace: both want b-a.ns.dom
    a = _spec("a", "ns", [{"revisionName": "r", "percent": 100, "tag": "b"}], {"r"}, "r")
    b = _spec("b-a", "ns", [], {"s"}, "s")
    with pytest.raises(ValueError, match=r"host 'b-a\.ns\.svc\.cluster\.local'"):
        RouteTable([a, b])


def test_swap_is_one_reference() -> None:
    holder = TableHolder()
    assert holder.current.lookup("hello.default.example.com") is None
    snapshot = holder.current
    old = holder.swap(_table())
    assert old is snapshot and holder.version == 1
    assert holder.current.lookup("hello.default.example.com") is not None
    assert snapshot.lookup("hello.default.example.com") is None  # a reader's snapshot never changes


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        pytest.param("Foo.Bar:80", "foo.bar", id="port"),
        pytest.param("[::1]:8080", "[::1]", id="ipv6"),
        pytest.param("foo.bar.", "foo.bar", id="dot"),
    ],
)
def test_normalize_host(raw: str, want: str) -> None:
    assert normalize_host(raw) == want


def test_cluster_local_short_names() -> None:
    flat = flatten(
        parse_traffic([{"revisionName": "r", "percent": 100, "tag": "t"}]), revisions={"r"}, latest_ready="r"
    )
    table = RouteTable([RouteSpec("hello", "prod", flat)])
    assert table.hosts() == [
        "hello.prod",
        "hello.prod.svc",
        "hello.prod.svc.cluster.local",
        "t-hello.prod",
        "t-hello.prod.svc",
        "t-hello.prod.svc.cluster.local",
    ]
    assert RouteTable([RouteSpec("hello", "prod", flat)], domain="example.com").hosts() == [
        "hello.prod.example.com",
        "t-hello.prod.example.com",
    ]
