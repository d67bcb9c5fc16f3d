"""benchmarks.paths: a path whose parts are missing is skipped with the reason, never a crash."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import loadgen, paths
from benchmarks.harness import Procs


def test_missing_nginx_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(Path, "exists", lambda self: False)
    with Procs(tmp_path) as procs, pytest.raises(paths.Unavailable, match="apt-get install nginx-light"):
        with paths.nginx(procs, 1, tmp_path):
            pass


def test_a_component_not_in_the_checkout_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(paths.Unavailable, match=r"cluster\.gateway_app is not in this checkout yet"):
        paths._need("cluster.gateway_app")


def test_without_wrk_and_hey_the_loads_use_the_builtin_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert loadgen.available_tools() == {"wrk": None, "hey": None}
    with pytest.raises(RuntimeError, match="--tool wrk: not installed"):
        loadgen.saturation(1, tool="wrk", duration=0.1)
    with pytest.raises(RuntimeError, match="--rate-tool hey: not installed"):
        loadgen.fixed_rate(1, tool="hey", duration=0.1)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50 and loadgen.percentile(values, 99) == 99
    assert loadgen.percentile([3.0], 95) == 3.0
