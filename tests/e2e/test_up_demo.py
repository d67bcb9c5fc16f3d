"""scripts/demo's program (the README's first command) runs its whole cycle and exits 0."""

from __future__ import annotations

import subprocess
import sys

import psutil

from tests.conftest import free_port
from tests.e2e.test_up import ROOT


def test_the_demo_runs_a_whole_cycle_with_the_built_in_load_client() -> None:
    argv = [sys.executable, "-m", "cluster.demo", "--no-hey", "--seconds", "6", "--clients", "20"]
    argv += ["--port", str(free_port()), "--admin-port", str(free_port())]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, out
    for step in ("cold start", "load: ", "back to zero", "zeroscale up exited with 0", "every step worked"):
        assert step in out, out
