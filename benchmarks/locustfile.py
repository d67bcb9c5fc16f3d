"""Locust load shapes for a running ``zeroscale up`` (or any Knative-compatible gateway).

    pip install locust        # not a zeroscale dependency
    ZS_SHAPE=burst locust -f benchmarks/locustfile.py --headless --host http://127.0.0.1:8080
    ZS_SHAPE=cold  locust -f benchmarks/locustfile.py --headless --host http://127.0.0.1:8080

Environment: ``ZS_HOST_HEADER`` (the Service's host, default ``hello.default.example.com``),
``ZS_PATH`` (default ``/``), ``ZS_SHAPE`` (``burst`` or ``cold``), ``ZS_IDLE_SECONDS`` (the cold shape's
pause, long enough for a scale to zero: Knative's defaults need 60 s stable window + 30 s grace, so 100;
with examples/demo/config.yaml 15 is enough).

* ``burst`` (panic mode): 10 users for 60 s; then 200 users within 2 s, held 30 s (the concurrency
  jumps past twice the target inside the 6 s panic window, so the autoscaler panics and scales at
  once); then back to 10 users for 60 s (it leaves panic after a stable window without a new burst).
* ``cold``: one user for 5 s, none for ``ZS_IDLE_SECONDS`` (scale to zero), then 25 users at once for
  5 s (a cold start with a crowd waiting in the activator), none again, one user again; three rounds.

Every shape ends by itself (bounded). Each user sends ``ZS_PATH`` up to 10 times a second.
"""

from __future__ import annotations

import os
from typing import Any

# (ends at second, users, spawn rate per second): the pure part, also used by the smoke test
Stage = tuple[float, int, float]


def burst_stages() -> list[Stage]:
    return [(60, 10, 10), (90, 200, 100), (150, 10, 100)]


def cold_stages(idle: float) -> list[Stage]:
    stages: list[Stage] = []
    t = 0.0
    for _ in range(3):
        for users, length in ((1, 5.0), (0, idle), (25, 5.0), (0, idle)):
            t += length
            stages.append((t, users, 100))
    return stages


def stage_at(stages: list[Stage], t: float) -> tuple[int, float] | None:
    """Users and spawn rate at second ``t``; None once the last stage is over (the run ends)."""
    for end, users, rate in stages:
        if t < end:
            return users, rate
    return None


def stages_from_env(env: dict[str, str] | None = None) -> list[Stage]:
    e = os.environ if env is None else env
    shape = e.get("ZS_SHAPE", "burst")
    if shape == "burst":
        return burst_stages()
    if shape == "cold":
        raw = e.get("ZS_IDLE_SECONDS", "100")
        try:
            idle = float(raw)
        except ValueError:
            raise ValueError(f"ZS_IDLE_SECONDS: expected seconds, got {raw!r}") from None
        return cold_stages(idle)
    raise ValueError(f"ZS_SHAPE: expected burst or cold, got {shape!r}")


try:
    from locust import HttpUser, LoadTestShape, constant_throughput, task
except ImportError:  # locust is optional: the shapes above stay importable
    pass
else:
    HOST = os.environ.get("ZS_HOST_HEADER", "hello.default.example.com")
    PATH = os.environ.get("ZS_PATH", "/")

    class ServiceUser(HttpUser):
        wait_time = constant_throughput(10)

        @task
        def get(self) -> None:
            self.client.get(PATH, headers={"Host": HOST}, name=PATH)

    class Shape(LoadTestShape):
        stages = stages_from_env()

        def tick(self) -> Any:
            return stage_at(self.stages, self.get_run_time())
