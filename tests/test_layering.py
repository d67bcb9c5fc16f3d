"""The pure modules import without aiohttp, kubernetes_asyncio or httpx, and no component imports another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ["queueproxy", "activator", "autoscaler", "routing", "cluster"]

PURE = [
    "serving.breaker",
    "serving.stats",
    "serving.clock",
    "serving.drain",
    "serving.envconfig",
    "serving.headers",
    "serving.timeouts",
    "serving.probe",
    "serving.spec",
    "serving.spec_model",
    "serving.spec_parse",
    "serving.spec_probe",
    "serving.spec_revision",
    "serving.spec_fields",
    "serving.config",
    "serving.h2_guard",
    "serving.h2_upgrade",
    "autoscaler.windows",
    "autoscaler.decider",
    "autoscaler.config",
    "routing.traffic",
    "routing.rollout",
    "routing.picker",
    "activator.slicing",
    "activator.lb_policy",
]


def _existing(modules: list[str]) -> list[str]:
    out = []
    for m in modules:
        path = ROOT / (m.replace(".", "/") + ".py")
        if path.exists():
            out.append(m)
    return out


@pytest.mark.parametrize("module", _existing(PURE))
def test_pure_module_imports_without_io_libraries(module: str) -> None:
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        "bad = [m for m in ('aiohttp', 'kubernetes_asyncio', 'httpx') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# cluster is the composition layer: it wires components together, so it may import them.
@pytest.mark.parametrize("component", [c for c in COMPONENTS if c != "cluster"])
def test_components_do_not_import_each_other(component: str) -> None:
    others = set(COMPONENTS) - {component}
    for path in (ROOT / component).rglob("*.py"):
        if path.name == "__main__.py":
            continue  # a binary's entry point may pick its backend from the composition layer (cluster)
        wrong = _imports(path) & others
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_serving_imports_no_component() -> None:
    for path in (ROOT / "serving").rglob("*.py"):
        wrong = _imports(path) & set(COMPONENTS)
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"
