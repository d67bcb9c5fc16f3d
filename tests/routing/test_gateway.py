from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from routing.gateway import Gateway, clean_headers
from routing.table import RouteSpec, RouteTable, TableHolder
from routing.traffic import flatten, parse_traffic
from serving.httpserver import HttpServer, Request, Responder, serve
from serving.types import RevisionKey

REV = RevisionKey("ns", "svc-00001")


@pytest.mark.parametrize(
    ("items", "client", "want"),
    [
        pytest.param(
            [(b"accept", b"*/*"), (b"knative-serving-revision", b"evil"), (b"k-proxy-request", b"activator")],
            ("10.0.0.1", 5000),
            [
                (b"accept", b"*/*"),
                (b"x-forwarded-for", b"10.0.0.1"),
                (b"x-forwarded-proto", b"http"),
                (b"knative-serving-revision", b"svc-00001"),
                (b"knative-serving-namespace", b"ns"),
            ],
            id="internal-dropped-routing-set",
        ),
        pytest.param(
            [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-proto", b"https"), (b"k-original-host", b"x")],
            ("10.0.0.1", 5000),
            [
                (b"x-forwarded-proto", b"https"),
                (b"x-forwarded-for", b"1.1.1.1, 10.0.0.1"),
                (b"knative-serving-revision", b"svc-00001"),
                (b"knative-serving-namespace", b"ns"),
            ],
            id="xff-appended-proto-kept",
        ),
        pytest.param(
            [(b"knative-serving-tag", b"canary"), (b"knative-serving-namespace", b"other")],
            None,
            [
                (b"x-forwarded-proto", b"http"),
                (b"knative-serving-revision", b"svc-00001"),
                (b"knative-serving-namespace", b"ns"),
            ],
            id="no-client-address",
        ),
    ],
)
def test_clean_headers(
    items: list[tuple[bytes, bytes]], client: tuple[str, int] | None, want: list[tuple[bytes, bytes]]
) -> None:
    assert clean_headers(items, REV, client) == want


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[RevisionKey, list[tuple[bytes, bytes]]]] = []

    async def dispatch(
        self, revision: RevisionKey, req: Request, resp: Responder, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        self.calls.append((revision, list(headers)))
        await resp.send(200, revision.name)


def _table(percent_a: int) -> RouteTable:
    raw = [
        {"revisionName": "svc-00001", "percent": percent_a, "tag": "a"},
        {"revisionName": "svc-00002", "percent": 100 - percent_a, "tag": "b"},
    ]
    flat = flatten(parse_traffic(raw), revisions={"svc-00001", "svc-00002"}, latest_ready="svc-00002")
    return RouteTable([RouteSpec("svc", "ns", flat)], domain="example.com", rng=random.Random(3))


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[TableHolder, Recorder, Gateway, str]]:
    holder = TableHolder(_table(40))
    rec = Recorder()
    gw = Gateway(holder, rec)
    server: HttpServer = await serve(gw, "127.0.0.1", 0)
    try:
        yield holder, rec, gw, f"http://127.0.0.1:{server.port}"
    finally:
        await server.shutdown(1)


async def test_unknown_host_never_dispatched(gateway: tuple[TableHolder, Recorder, Gateway, str]) -> None:
    _, rec, gw, url = gateway
    async with httpx.AsyncClient() as c:
        r = await c.get(url, headers={"Host": "nope.ns.example.com"})
    assert r.status_code == 404 and rec.calls == [] and gw.not_found == 1


async def test_split_tags_and_swap(gateway: tuple[TableHolder, Recorder, Gateway, str]) -> None:
    holder, rec, _, url = gateway
    async with httpx.AsyncClient() as c:
        got = [(await c.get(url, headers={"Host": "svc.ns.example.com"})).text for _ in range(100)]
        assert got.count("svc-00001") == 40  # whole decks: exact
        assert (await c.get(url, headers={"Host": "b-svc.ns.example.com"})).text == "svc-00002"
        tagged = await c.get(url, headers={"Host": "svc.ns.example.com", "Knative-Serving-Tag": "a"})
        assert tagged.text == "svc-00001"
        headers = rec.calls[-1][1]
        assert (b"knative-serving-revision", b"svc-00001") in headers
        assert not any(n == b"knative-serving-tag" for n, _ in headers)  # used for routing, then dropped
        holder.swap(_table(100))
        got = [(await c.get(url, headers={"Host": "svc.ns.example.com"})).text for _ in range(10)]
        assert set(got) == {"svc-00001"}


def test_connection_named_fields_and_hop_by_hop_end_at_the_door() -> None:
    items = [
        (b"connection", b"keep-alive, x-secret, k-proxy-request"),
        (b"x-secret", b"s"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
    ]
    out = clean_headers(items, REV, None)
    names = [n for n, _ in out]
    assert b"connection" not in names and b"x-secret" not in names and b"keep-alive" not in names
    assert (b"te", b"trailers") in out and (b"content-type", b"application/grpc") in out
