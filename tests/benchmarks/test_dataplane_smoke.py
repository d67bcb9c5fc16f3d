"""Smoke test of ``python -m benchmarks.dataplane``: a tiny bounded load, well-formed JSON out.

Never a timing or throughput assertion here (the machine is shared): only that the tool runs each
asked path, measures what it says it measures, and writes the document the README's table is made of.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, ROOT


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_dataplane_writes_results_for_each_path(tmp_path: Path) -> None:
    out = tmp_path / "dp.json"
    r = _run(
        [
            "benchmarks.dataplane",
            "--paths", "direct,queue-proxy,queue-proxy-plain",
            "--tool", "builtin",
            "--duration", "0.5", "--connections", "4",
            "--rate", "40", "--rate-duration", "0.5",
            "--json-out", str(out),
        ]
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["machine"]["nproc"] >= 1 and doc["settings"]["connections"] == 4
    assert set(doc["results"]) == {"direct", "queue-proxy", "queue-proxy-plain"}
    assert "plain Python: ZEROSCALE_NATIVE is off" in doc["results"]["queue-proxy-plain"]["note"]
    for name, res in doc["results"].items():
        for mode in ("saturation", "fixed_rate"):
            m = res[mode]
            assert m["tool"] == "builtin"
            assert m["requests"] > 0 and m["errors"] == 0, (name, mode, m)
            assert m["p50_ms"] <= m["p95_ms"] <= m["p99_ms"]
    qp = doc["results"]["queue-proxy"]
    assert qp["saturation"]["cpu_us_per_request"] > 0 and qp["idle_rss_mb"] > 0
    assert doc["results"]["direct"]["saturation"]["cpu_us_per_request"] is None  # no data plane to measure
    assert qp["ratios"]["rps_vs_direct"] > 0 and "added_p50_ms" in qp["fixed_rate"]
    assert set(doc["goals"]) and all("met" in g for g in doc["goals"].values())
    assert "queue-proxy" in r.stdout and "goals" in r.stdout
    md = _run(["benchmarks.report", str(out)], timeout=30)
    assert md.returncode == 0, md.stderr
    rows = [line for line in md.stdout.splitlines() if line.startswith("| queue-proxy |")]
    assert len(rows) == 1 and rows[0].count("|") == 12


def test_dataplane_rejects_an_unknown_path() -> None:
    r = _run(["benchmarks.dataplane", "--paths", "direct,varnish"], timeout=30)
    assert r.returncode == 2 and "varnish" in r.stderr
