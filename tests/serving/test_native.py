"""The compiled request path (serving.native): in use only when the build matches every source.

The manifest checks run against a copy of the sources in a temp directory, so nothing here edits the
work tree. The process tests use the real build that scripts/bootstrap makes; they are skipped, with
the reason, where there is none (no C compiler), and .ci/run requires the build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from serving import native
from tests.conftest import PYTHON, ROOT
from tests.queueproxy.procs import queue_proxy, user_app
from tests.util import wait_until

needs_build = pytest.mark.skipif(
    native.check(native.native_dir()) is not None,
    reason=f"no current build: {native.check(native.native_dir())}",
)


def _copy_sources(tmp: Path) -> Path:
    root = tmp / "root"
    for rel in native.MODULES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, root / rel)
    return root


def _build_dir(tmp: Path, root: Path, python: str | None = None) -> Path:
    where = tmp / "build"
    where.mkdir()
    sources = {rel: native._digest(rel, str(root)) for rel in native.MODULES}
    manifest = {"python": python or native._python(), "sources": sources}
    (where / native.MANIFEST).write_text(json.dumps(manifest))
    return where


@pytest.fixture(autouse=True)
def _native_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZEROSCALE_NATIVE", raising=False)


def test_a_build_that_matches_every_source_is_used(tmp_path: Path) -> None:
    root = _copy_sources(tmp_path)
    assert native.check(str(_build_dir(tmp_path, root)), str(root)) is None


def test_one_edited_source_turns_the_build_off_and_names_the_file(tmp_path: Path) -> None:
    root = _copy_sources(tmp_path)
    where = _build_dir(tmp_path, root)
    with open(root / "serving/upstream.py", "a") as f:
        f.write("\n# an edit after the build\n")
    why = native.check(str(where), str(root))
    assert why is not None
    assert "serving/upstream.py changed since the build" in why
    assert "python -m serving.native_build build" in why


def test_a_build_for_another_python_is_not_used(tmp_path: Path) -> None:
    root = _copy_sources(tmp_path)
    why = native.check(str(_build_dir(tmp_path, root, python="cpython-39 3.9.0")), str(root))
    assert why == "built for another Python (cpython-39 3.9.0)"


def test_no_build_says_how_to_make_one(tmp_path: Path) -> None:
    why = native.check(str(tmp_path / "nowhere"))
    assert why is not None and "python -m serving.native_build build" in why


def test_a_broken_manifest_is_named_not_raised(tmp_path: Path) -> None:
    (tmp_path / native.MANIFEST).write_text("{not json")
    why = native.check(str(tmp_path))
    assert why is not None and native.MANIFEST in why


def test_zeroscale_native_false_keeps_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy_sources(tmp_path)
    where = _build_dir(tmp_path, root)
    monkeypatch.setenv("ZEROSCALE_NATIVE", "false")
    assert native.check(str(where), str(root)) == "ZEROSCALE_NATIVE is off"


def _module_files(env: dict[str, str]) -> dict[str, str]:
    names = [rel[:-3].replace("/", ".") for rel in native.MODULES]
    code = (
        "import importlib, json, sys; "
        f"print(json.dumps({{n: importlib.import_module(n).__file__ for n in {names!r}}}))"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    files: dict[str, str] = json.loads(out.stdout)
    return files


@needs_build
def test_a_process_imports_every_compiled_module_when_the_build_is_current() -> None:
    files = _module_files({})
    assert all(f.endswith(".so") and f.startswith(native.native_dir()) for f in files.values()), files


@needs_build
def test_a_stale_build_falls_back_to_every_source_not_only_the_edited_one(tmp_path: Path) -> None:
    stale = tmp_path / "native"
    shutil.copytree(native.native_dir(), stale)
    manifest = json.loads((stale / native.MANIFEST).read_text())
    manifest["sources"]["serving/upstream.py"] = "0" * 64
    (stale / native.MANIFEST).write_text(json.dumps(manifest))
    files = _module_files({"ZEROSCALE_NATIVE_DIR": str(stale)})
    assert all(f.endswith(".py") and f.startswith(str(ROOT)) for f in files.values()), files


@pytest.mark.parametrize("setting", ["true", "false"])
async def test_the_queue_proxy_serves_either_way_and_says_which(setting: str) -> None:
    compiled = setting == "true" and native.check(native.native_dir()) is None
    with user_app() as app, queue_proxy(app.port, ZEROSCALE_NATIVE=setting) as qp:
        async with httpx.AsyncClient() as client:
            r = await client.get(qp.url("/"))
            assert r.status_code == 200
            r = await client.get(qp.url("/status?code=418"))
            assert r.status_code == 418
        said = "compiled request path in use" if compiled else "plain Python request path"
        wait_until(lambda: said in qp.proc.output(), timeout=10, what=f"the start-up line says {said!r}")
        if setting == "false":
            assert "ZEROSCALE_NATIVE is off" in qp.proc.output()


def test_no_compiled_function_binds_one_except_name_to_two_types() -> None:
    # Compiled, a local has one type for the whole function: "except A as e" then "except B as e"
    # makes the second handler raise TypeError instead of handling B (a 502 became a crash this way).
    import ast

    found = []
    for rel in native.MODULES:
        tree = ast.parse((ROOT / rel).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            types: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and node.name:
                    kind = ast.unparse(node.type) if node.type is not None else "BaseException"
                    types.setdefault(node.name, set()).add(kind)
            found += [f"{rel}:{fn.lineno} {fn.name}: {n} {sorted(t)}" for n, t in types.items() if len(t) > 1]
    assert found == []
