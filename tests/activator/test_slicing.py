from __future__ import annotations

import pytest

from activator.slicing import MAX_CAPACITY, assigned_indices, revision_capacity


@pytest.mark.parametrize(
    ("pods", "index", "activators", "want"),
    [
        pytest.param(0, 0, 3, [], id="no-pods"),
        pytest.param(5, 0, 1, [0, 1, 2, 3, 4], id="one-activator-all"),
        pytest.param(5, -1, 3, [0, 1, 2, 3, 4], id="not-listed-all"),
        pytest.param(1, 2, 3, [0], id="single-pod-all"),
        pytest.param(2, 2, 3, [0], id="more-activators-than-pods-mod"),
        pytest.param(2, 3, 5, [1], id="more-activators-index-3"),
        pytest.param(20, 0, 3, [0, 1, 2, 3, 4, 5, 18], id="20-over-3-first-plus-remnant"),
        pytest.param(20, 1, 3, [6, 7, 8, 9, 10, 11, 19], id="20-over-3-second-plus-remnant"),
        pytest.param(20, 2, 3, [12, 13, 14, 15, 16, 17], id="20-over-3-third-no-remnant"),
        pytest.param(6, 1, 3, [2, 3], id="even-slices"),
        pytest.param(3, 2, 3, [2], id="one-each"),
    ],
)
def test_assigned_indices(pods: int, index: int, activators: int, want: list[int]) -> None:
    assert assigned_indices(pods, index, activators) == want


def test_slices_cover_every_pod_once() -> None:
    for pods in range(1, 30):
        for acts in range(2, pods + 1):
            seen = sorted(i for a in range(acts) for i in assigned_indices(pods, a, acts))
            assert seen == list(range(pods)), (pods, acts)


@pytest.mark.parametrize(
    ("cc", "activators", "index", "pods", "backends", "want"),
    [
        pytest.param(10, 1, 0, 0, 0, 0, id="nothing-ready-queue"),
        pytest.param(0, 1, 0, 0, 0, 0, id="cc0-nothing-ready"),
        pytest.param(10, 1, 0, 3, 0, 30, id="pods-one-activator"),
        pytest.param(1, 3, 0, 20, 0, 7, id="pods-sliced-with-remnant"),
        pytest.param(1, 3, 2, 20, 0, 6, id="pods-sliced-no-remnant"),
        pytest.param(10, 5, 4, 2, 0, 10, id="more-activators-than-pods"),
        pytest.param(10, 3, -1, 4, 0, 40, id="not-listed-takes-all"),
        pytest.param(0, 3, 1, 4, 0, MAX_CAPACITY, id="cc0-pods-infinite"),
        pytest.param(0, 1, 0, 0, 2, MAX_CAPACITY, id="cc0-clusterip-infinite"),
        pytest.param(10, 4, 0, 0, 3, 7, id="clusterip-30-over-4"),
        pytest.param(1, 4, 0, 0, 3, 1, id="clusterip-min-one"),
        pytest.param(10, 0, 0, 0, 3, 30, id="clusterip-zero-activators-as-one"),
        pytest.param(2**30, 1, 0, 3, 0, MAX_CAPACITY, id="capped-pods"),
        pytest.param(2**30, 1, 0, 0, 3, MAX_CAPACITY, id="capped-clusterip"),
        pytest.param(5, 2, 1, 3, 7, 5, id="pods-win-over-backends"),
    ],
)
def test_revision_capacity(cc: int, activators: int, index: int, pods: int, backends: int, want: int) -> None:
    assert revision_capacity(cc, activators, index, pods, backends) == want


def test_negative_cc_rejected() -> None:
    with pytest.raises(ValueError, match="containerConcurrency must be >= 0, got -1"):
        revision_capacity(-1, 1, 0, 1, 0)
