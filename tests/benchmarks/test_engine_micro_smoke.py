"""Smoke test of benchmarks.engine_micro: a tiny run per handler, well-formed JSON (no timing assertion)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import PYTHON, ROOT


@pytest.mark.parametrize(("flags", "handler"), [([], "forward"), (["--qp"], "queue-proxy")])
def test_engine_micro_reports_the_hop(flags: list[str], handler: str) -> None:
    r = subprocess.run(
        [PYTHON, "-m", "benchmarks.engine_micro", "--requests", "300", "--connections", "3", "--rounds", "1",
         "--json", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["handler"] == handler and doc["requests"] == 300 and doc["connections"] == 3
    assert doc["through_us"] > 0 and doc["direct_us"] > 0
    assert doc["hop_us"] == pytest.approx(doc["through_us"] - doc["direct_us"], abs=0.02)
