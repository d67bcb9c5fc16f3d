"""The `autoscaler` binary stops at start-up with a message naming the bad setting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autoscaler.app import load_config_file
from serving.errors import ConfigError
from tests.conftest import PYTHON, ROOT


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run(
        [PYTHON, "-m", "autoscaler", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        pytest.param(["--config", "/nonexistent/cfg.yaml"], {}, "cannot read", id="missing-config"),
        pytest.param(
            [],
            {"AUTOSCALER_STAT_PORT": "http"},
            "AUTOSCALER_STAT_PORT='http' is not a whole number",
            id="bad-port-env",
        ),
    ],
)
def test_startup_errors(args: list[str], env: dict[str, str], fragment: str) -> None:
    out = _run(args, **env)
    assert out.returncode == 2
    assert fragment in out.stderr


def test_bad_config_value_names_file_key_and_range(tmp_path: Path) -> None:
    cfg = tmp_path / "config-autoscaler.yaml"
    cfg.write_text("kind: ConfigMap\ndata:\n  max-scale-down-rate: '1'\n")
    out = _run(["--config", str(cfg)])
    assert out.returncode == 2
    assert f"{cfg}: config-autoscaler: max-scale-down-rate=1 is out of range: must be > 1.0" in out.stderr


@pytest.mark.parametrize(
    ("text", "check"),
    [
        pytest.param("", lambda c: c.stable_window == 60, id="empty-is-defaults"),
        pytest.param(
            "stable-window: 30s\nenable-scale-to-zero: false\n",
            lambda c: c.stable_window == 30 and not c.enable_scale_to_zero,
            id="plain-mapping",
        ),
        pytest.param(
            "kind: ConfigMap\ndata:\n  target-burst-capacity: '-1'\n",
            lambda c: c.target_burst_capacity == -1,
            id="configmap",
        ),
    ],
)
def test_load_config_file(tmp_path: Path, text: str, check: object) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert check(load_config_file(p))  # type: ignore[operator]


def test_load_config_file_rejects_lists(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a ConfigMap or a mapping"):
        load_config_file(p)
