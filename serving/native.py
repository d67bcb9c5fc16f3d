"""The request path compiled to C with mypyc, when a build matches the sources; else plain Python.

    python -m serving.native_build build [--if-stale]   # compile (needs mypy and a C compiler)
    python -m serving.native_build status               # which build is in use, and why
    python -m serving.native_build clean

The modules in ``MODULES`` (the engine, the upstream pool and the per-request code of the
queue-proxy, the activator and the gateway) are ordinary typed Python; mypyc turns them into C
extensions with the same behaviour, which spend about a quarter less CPU per request. The build goes
to a directory of its own (``.native/`` beside the packages, or ``ZEROSCALE_NATIVE_DIR``) with a
manifest of the sources it was made from. Each package's ``__init__`` calls ``extend_path``, which
puts that directory first on the package's ``__path__`` only when every source still matches the
manifest and the Python is the one it was built for. An edited module therefore never runs as a stale
extension: the whole request path falls back to the sources until the next build.
``ZEROSCALE_NATIVE=false`` keeps the sources in use (to compare, or to debug with pdb).

This module is imported by every package's ``__init__``: it keeps to the standard library and
reads the manifest once per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

__all__ = ["MODULES", "active", "check", "extend_path", "native_dir", "status"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The per-request modules, as paths from ROOT. Everything they import that is not listed stays Python.
MODULES: tuple[str, ...] = (
    "serving/httpserver.py",
    "serving/upstream.py",
    "serving/headers.py",
    "serving/stats.py",
    "serving/breaker.py",
    "serving/timeouts.py",
    "queueproxy/handler.py",
    "queueproxy/rewrite.py",
    "activator/handler.py",
    "activator/throttler.py",
    "routing/gateway.py",
)

MANIFEST = "manifest.json"
_FALSE = {"0", "false", "no", "off"}


def native_dir() -> str:
    return os.environ.get("ZEROSCALE_NATIVE_DIR") or os.path.join(ROOT, ".native")


def _digest(rel: str, root: str = ROOT) -> str | None:
    try:
        with open(os.path.join(root, rel), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _python() -> str:
    return f"{sys.implementation.cache_tag} {sys.version.split()[0]}"


def check(where: str, root: str = ROOT) -> str | None:
    """None when the build in ``where`` matches the sources under ``root``; else why not."""
    if os.environ.get("ZEROSCALE_NATIVE", "").strip().lower() in _FALSE:
        return "ZEROSCALE_NATIVE is off"
    try:
        with open(os.path.join(where, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return f"no build in {where} (python -m serving.native_build build)"
    except (OSError, ValueError) as e:
        return f"unreadable {os.path.join(where, MANIFEST)}: {e}"
    if not isinstance(manifest, dict) or manifest.get("python") != _python():
        return f"built for another Python ({manifest.get('python') if isinstance(manifest, dict) else '?'})"
    sources = manifest.get("sources")
    if not isinstance(sources, dict) or not sources:
        return "the manifest lists no sources"
    for rel, digest in sources.items():
        if _digest(rel, root) != digest:
            return f"{rel} changed since the build (python -m serving.native_build build)"
    return None


_state: dict[str, str | None] = {}


def _why_not() -> str | None:
    """Checked once per process: a package imported later sees the same answer as the first."""
    if "why" not in _state:
        where = native_dir()
        why = check(where)
        _state["why"] = why
        if why is None and where not in sys.path:
            sys.path.append(where)  # the build's shared library is a top-level module
    return _state["why"]


def active() -> bool:
    """Whether the compiled request path is in use in this process."""
    return _why_not() is None


def extend_path(package: str, path: list[str]) -> list[str]:
    """A package's ``__path__`` with the build's directory first, when the build is current."""
    if _why_not() is not None:
        return path
    compiled = os.path.join(native_dir(), *package.split("."))
    return [compiled, *path] if os.path.isdir(compiled) else path


def status() -> str:
    why = _why_not()
    if why is None:
        return f"compiled request path in use: {native_dir()} ({len(MODULES)} modules)"
    return f"plain Python request path: {why}"
