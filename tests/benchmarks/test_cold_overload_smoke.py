"""Smoke tests of benchmarks.cold_start and benchmarks.overload: tiny bounded runs, JSON shape only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, ROOT


def _run(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_cold_start_measures_sequential_and_simultaneous_cold_starts(tmp_path: Path) -> None:
    out = tmp_path / "cs.json"
    r = _run(["benchmarks.cold_start", "--runs", "1", "--burst", "2", "--app-startup-runs", "2",
              "--json-out", str(out)])  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    # two alone first, then one more before the one sequential cold start
    assert len(doc["app_startup_ms"]["runs"]) == 2 + 1 and doc["app_startup_ms"]["median"] > 0
    assert doc["sequential"]["n"] == 1
    assert doc["burst"]["n"] + doc["burst"]["errors"] == 2
    s = doc["sequential"]
    # the share is the latency minus the app's start-up, whatever both are
    assert abs(s["p50_ms"] - doc["app_startup_ms"]["median"] - s["share_p50_ms"]) < 0.2
    # the burst's share subtracts as many apps started at once, measured alone
    b = doc["burst"]
    assert doc["apps_at_once_ms"]["n"] == 2 and doc["apps_at_once_ms"]["median"] > 0
    assert abs(b["p50_ms"] - doc["apps_at_once_ms"]["median"] - b["share_p50_ms"]) < 0.2
    assert doc["first_after_up_ms"] > 0
    assert isinstance(next(iter(doc["goal"].values())), bool)


def test_overload_reports_memory_and_an_emptied_queue(tmp_path: Path) -> None:
    out = tmp_path / "ov.json"
    r = _run(["benchmarks.overload", "--queued", "50", "--overload-seconds", "1", "--overload-rate", "40",
              "--give-up-after", "0.3", "--json-out", str(out)])  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    q, o = doc["queued"], doc["overload"]
    assert q["clients"] == 50 and q["all_queued"] and q["queued_seen"] == 50
    assert q["queue_empty_after_clients_left"] and o["queue_empty_at_end"]
    assert q["peak_rss_mb"] > 0 and doc["idle_rss_mb"] > 0
    assert o["clients"] > 0 and o["answered"] == 0  # no pod: nobody is answered, everybody gives up
    assert doc["goal"]["10,000 queued: < 100 MB extra"] is None  # not asked for 10,000
