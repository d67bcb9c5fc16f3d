"""Smoke test of benchmarks.floor: a tiny bounded run, every row measured, JSON shape."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, ROOT


def test_floor_measures_the_splice_the_callbacks_the_engine_and_the_queue_proxy(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    r = subprocess.run(
        [PYTHON, "-m", "benchmarks.floor", "--rounds", "1", "--duration", "1", "--rate", "50",
         "--json-out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["rows"]) == {"splice", "callbacks", "engine-tasks", "engine", "queue-proxy"}
    assert doc["direct_p50_ms"] >= 100 and doc["direct_errors_at_rate"] == 0  # /slow: after 100 ms
    for row in doc["rows"].values():
        assert row["errors_at_rate"] == 0  # every request through every proxy was answered
        if shutil.which("wrk"):
            assert row["cpu_us_per_request"] > 0
    assert "queue-proxy" in r.stdout


def test_floor_refuses_unbounded_settings() -> None:
    r = subprocess.run(
        [PYTHON, "-m", "benchmarks.floor", "--duration", "600"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "--duration 1-60" in r.stderr
