"""The pure Kubernetes pieces (cache/back-off, manifests, RBAC rules, render) load without any I/O library,
and only cluster/ imports kubernetes_asyncio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "cluster.k8s_cache",
    "cluster.k8s_names",
    "cluster.k8s_manifests",
    "cluster.k8s_system",
    "cluster.render",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_kubernetes_modules_import_no_client(module: str) -> None:
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        "print(','.join(m for m in ('aiohttp', 'kubernetes_asyncio', 'httpx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def test_only_cluster_talks_to_the_kubernetes_api() -> None:
    for package in ("serving", "queueproxy", "activator", "autoscaler", "routing"):
        for path in (ROOT / package).rglob("*.py"):
            assert "kubernetes_asyncio" not in path.read_text(), path
