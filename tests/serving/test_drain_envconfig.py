from __future__ import annotations

import pytest

from serving.clock import FakeClock
from serving.drain import Drainer
from serving.envconfig import env_bool, env_float, env_int, env_port
from serving.errors import ConfigError


def test_quiet_period_restarts_on_each_request() -> None:
    clock = FakeClock()
    d = Drainer(quiet_period=30, hard_cap=300, clock=clock)
    assert not d.complete()
    d.start()
    clock.advance(20)
    d.request_started()
    d.request_finished()
    clock.advance(20)
    assert not d.complete()  # 20 s since the last request
    clock.advance(10)
    assert d.complete()


def test_in_flight_requests_hold_the_drain_until_the_cap() -> None:
    clock = FakeClock()
    d = Drainer(quiet_period=1, hard_cap=10, clock=clock)
    d.request_started()
    d.start()
    clock.advance(5)
    assert not d.complete()
    d.request_finished()
    assert d.complete()
    d2 = Drainer(quiet_period=1, hard_cap=10, clock=clock)
    d2.request_started()
    d2.start()
    clock.advance(10)
    assert d2.complete()


@pytest.mark.parametrize(
    ("fn", "raw", "match"),
    [
        pytest.param(env_int, "ten", "CONTAINER_CONCURRENCY='ten' is not a whole number", id="int-text"),
        pytest.param(env_float, "nan", "must be a finite number", id="float-nan"),
        pytest.param(env_bool, "maybe", "is not a boolean", id="bool"),
    ],
)
def test_bad_values_name_the_variable(fn: object, raw: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fn({"CONTAINER_CONCURRENCY": raw}, "CONTAINER_CONCURRENCY", 0)  # type: ignore[operator]


def test_ranges() -> None:
    with pytest.raises(ConfigError, match="USER_PORT='70000' is out of range"):
        env_port({"USER_PORT": "70000"}, "USER_PORT", 8080)
    assert env_int({}, "X", 7) == 7
    assert env_bool({"B": "True"}, "B", False) is True
