"""The locustfile's load shapes (pure): bounded, and shaped as the README says. Locust itself is optional."""

from __future__ import annotations

import pytest

from benchmarks.locustfile import burst_stages, cold_stages, stage_at, stages_from_env


def test_burst_jumps_twentyfold_then_returns_and_ends() -> None:
    s = burst_stages()
    assert stage_at(s, 0) == (10, 10) and stage_at(s, 59.9) == (10, 10)
    assert stage_at(s, 61)[0] == 200  # type: ignore[index]
    assert stage_at(s, 100)[0] == 10  # type: ignore[index]
    assert stage_at(s, 150) is None


def test_cold_has_idle_gaps_then_a_crowd_and_ends() -> None:
    s = cold_stages(idle=15)
    assert stage_at(s, 1) == (1, 100)
    assert stage_at(s, 10)[0] == 0  # type: ignore[index]  # scaled to zero meanwhile
    assert stage_at(s, 21)[0] == 25  # type: ignore[index]  # 25 users hit the cold revision at once
    assert stage_at(s, 3 * (5 + 15 + 5 + 15)) is None


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"ZS_SHAPE": "spike"}, "ZS_SHAPE: expected burst or cold, got 'spike'"),
        ({"ZS_SHAPE": "cold", "ZS_IDLE_SECONDS": "soon"}, "ZS_IDLE_SECONDS: expected seconds, got 'soon'"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        stages_from_env(env)


def test_shape_from_env_defaults_to_burst() -> None:
    assert stages_from_env({}) == burst_stages()
