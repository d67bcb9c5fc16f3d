from __future__ import annotations

import pytest

from routing.traffic import Flattened, Split, Target, TrafficTarget, flatten, parse_traffic
from serving.errors import SpecError

REVS = {"svc-00001", "svc-00002", "svc-00003"}


def _flat(raw: list[dict[str, object]], latest: str | None = "svc-00003") -> Flattened:
    return flatten(parse_traffic(raw), revisions=REVS, latest_ready=latest)


@pytest.mark.parametrize(
    ("raw", "default", "tags"),
    [
        pytest.param([], [("svc-00003", 100, True)], {}, id="empty-means-latest-100"),
        pytest.param(
            [{"revisionName": "svc-00001", "percent": 40}, {"latestRevision": True, "percent": 60}],
            [("svc-00001", 40, False), ("svc-00003", 60, True)],
            {},
            id="split-40-60",
        ),
        pytest.param(
            [
                {"revisionName": "svc-00001", "percent": 30},
                {"revisionName": "svc-00001", "percent": 20},
                {"revisionName": "svc-00002", "percent": 50},
            ],
            [("svc-00001", 50, False), ("svc-00002", 50, False)],
            {},
            id="same-revision-merged",
        ),
        pytest.param(
            [
                {"revisionName": "svc-00001", "percent": 100},
                {"revisionName": "svc-00002", "percent": 0, "tag": "canary"},
            ],
            [("svc-00001", 100, False)],
            {"canary": ("svc-00002", 100)},
            id="zero-percent-tag-only",
        ),
        pytest.param(
            [
                {"revisionName": "svc-00001", "percent": 90, "tag": "stable"},
                {"latestRevision": True, "percent": 10, "tag": "next"},
            ],
            [("svc-00001", 90, False), ("svc-00003", 10, True)],
            {"stable": ("svc-00001", 100), "next": ("svc-00003", 100)},
            id="tagged-targets-are-100-on-their-tag",
        ),
        pytest.param(
            [
                {"revisionName": "svc-00001", "percent": 60, "tag": "a"},
                {"revisionName": "svc-00001", "percent": 40},
            ],
            [("svc-00001", 100, False)],
            {"a": ("svc-00001", 100)},
            id="tagged-and-untagged-same-revision-sum-in-default",
        ),
        pytest.param(
            [{"percent": 100}],
            [("svc-00003", 100, True)],
            {},
            id="no-revision-name-means-latest",
        ),
    ],
)
def test_flatten(
    raw: list[dict[str, object]], default: list[tuple[str, int, bool]], tags: dict[str, tuple[str, int]]
) -> None:
    flat = _flat(raw)
    assert flat.default == Split(tuple(Target(r, p, latest) for r, p, latest in default))
    assert {t: (s.targets[0].revision, s.targets[0].percent) for t, s in flat.tags.items()} == tags
    assert all(len(s.targets) == 1 for s in flat.tags.values())


@pytest.mark.parametrize(
    ("raw", "latest", "message"),
    [
        pytest.param(
            [{"revisionName": "svc-00009", "percent": 100}],
            "svc-00003",
            r"spec.traffic\[0\].revisionName: revision 'svc-00009' is not a known",
            id="unknown-revision",
        ),
        pytest.param(
            [
                {"revisionName": "svc-00001", "percent": 50, "tag": "x"},
                {"latestRevision": True, "percent": 50, "tag": "x"},
            ],
            "svc-00003",
            r"spec.traffic\[1\].tag: 'x' is already used by spec.traffic\[0\]",
            id="duplicate-tag",
        ),
        pytest.param(
            [{"revisionName": "svc-00001", "percent": 50}],
            "svc-00003",
            r"spec.traffic: percentages of the default route must sum to 100, got 50",
            id="sum-not-100",
        ),
        pytest.param(
            [{"latestRevision": True, "percent": 100}],
            None,
            r"spec.traffic\[0\].latestRevision: the configuration has no ready revision",
            id="latest-without-ready",
        ),
        pytest.param(
            [{"revisionName": "svc-00001", "latestRevision": True, "percent": 100}],
            "svc-00003",
            r"spec.traffic\[0\]: revisionName 'svc-00001' and latestRevision: true are exclusive",
            id="both-name-and-latest",
        ),
        pytest.param(
            [{"revisionName": "svc-00001", "percent": 101}],
            "svc-00003",
            r"spec.traffic\[0\].percent: must be between 0 and 100, got 101",
            id="percent-range",
        ),
        pytest.param(
            [{"revisionName": "svc-00001", "percent": 100, "tag": "Bad_Tag"}],
            "svc-00003",
            r"spec.traffic\[0\].tag: 'Bad_Tag' is not a DNS label",
            id="tag-not-dns-label",
        ),
        pytest.param(
            [
                {"revisionName": "svc-00001", "latestRevision": False, "percent": 100},
                {"latestRevision": False},
            ],
            "svc-00003",
            r"spec.traffic\[1\]: needs revisionName or latestRevision: true",
            id="target-names-nothing",
        ),
    ],
)
def test_flatten_errors_name_the_target(
    raw: list[dict[str, object]], latest: str | None, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        _flat(raw, latest)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({"percent": 100}, r"spec.traffic: expected a list", id="not-a-list"),
        pytest.param(
            [{"percent": "50"}], r"spec.traffic\[0\].percent: expected a whole number", id="percent-str"
        ),
        pytest.param(
            [{"percent": 100, "weight": 3}], r"spec.traffic\[0\]: unknown field", id="unknown-field"
        ),
        pytest.param(
            [{"latestRevision": "yes"}], r"spec.traffic\[0\].latestRevision: expected true", id="bool"
        ),
        pytest.param(
            [{"revisionName": ""}], r"spec.traffic\[0\].revisionName: expected a non-empty", id="empty"
        ),
    ],
)
def test_parse_errors(raw: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_traffic(raw)


def test_revisions_reachable() -> None:
    flat = _flat(
        [
            {"revisionName": "svc-00001", "percent": 100},
            {"revisionName": "svc-00002", "percent": 0, "tag": "t"},
        ]
    )
    assert flat.revisions() == {"svc-00001", "svc-00002"}
    assert TrafficTarget().percent == 0
