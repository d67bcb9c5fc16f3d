"""Every Service file under examples/ parses, passes the local-mode check, and says what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.spec import RevisionHistory, TrafficTarget, check_local, load_services

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Service files only: examples/demo/config.yaml holds ConfigMaps (config-autoscaler), not Services.
FILES = sorted(
    p for p in EXAMPLES.rglob("*.yaml") if "traces" not in p.parts and "kind: Service" in p.read_text()
)


def test_there_are_examples() -> None:
    dirs = {p.parent.name for p in FILES}
    assert {"hello", "autoscale", "blue-green", "rollout", "websocket", "sse"} <= dirs


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(EXAMPLES)) for p in FILES])
def test_example_parses_and_runs_locally(path: Path) -> None:
    services = load_services(path)
    assert services
    for s in services:
        check_local(s)
        assert s.template.container.command[-1] == "app.py"
        assert (path.parent / "app.py").is_file()


def test_autoscale_targets_ten() -> None:
    [s] = load_services(EXAMPLES / "autoscale/service.yaml")
    assert s.template.autoscaling == {"target": "10"}


def test_blue_green_split_and_tags() -> None:
    history = RevisionHistory()
    [blue] = load_services(EXAMPLES / "blue-green/service-blue.yaml")
    [green] = load_services(EXAMPLES / "blue-green/service-green.yaml")
    assert history.admit(blue)[0].name == "blue-green-blue"
    assert history.admit(green)[0].name == "blue-green-green"
    assert green.traffic == (
        TrafficTarget(revision_name="blue-green-blue", percent=60, tag="blue"),
        TrafficTarget(revision_name="blue-green-green", percent=40, tag="green"),
        TrafficTarget(latest_revision=True, percent=0, tag="latest"),
    )


def test_rollout_makes_a_second_revision_with_a_duration() -> None:
    history = RevisionHistory()
    [v1] = load_services(EXAMPLES / "rollout/service.yaml")
    [v2] = load_services(EXAMPLES / "rollout/service-v2.yaml")
    assert v1.rollout_duration_seconds == v2.rollout_duration_seconds == 60.0
    assert history.admit(v1)[0].name == "rollout-00001"
    assert history.admit(v2)[0].name == "rollout-00002"
