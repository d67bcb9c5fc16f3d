"""Compiles the request path with mypyc: ``python -m serving.native_build build|status|clean``.

Kept apart from ``serving.native``, which every package imports at start-up: this module needs mypy
and setuptools, and ``python -m`` of a module its own package has already imported runs it twice.
"""

from __future__ import annotations

import json
import os
import sys

from serving.native import MANIFEST, MODULES, ROOT, _digest, _python, active, check, native_dir, status


def _compiler() -> str | None:
    import shlex
    import shutil
    import sysconfig

    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    return shutil.which(words[0]) if words else None


def build(where: str | None = None, *, jobs: int | None = None) -> str:
    """Compile MODULES into ``where`` (default native_dir()); returns the directory.

    The build is made in a temporary directory and takes the place of the old one only when it is
    complete, with the manifest written last: a failed or interrupted build leaves the sources in use.
    """
    import shutil
    import tempfile

    from mypyc.build import mypycify
    from setuptools import Distribution

    where = os.path.abspath(where or native_dir())
    parent = os.path.dirname(where)
    os.makedirs(parent, exist_ok=True)
    sources = {rel: _digest(rel) for rel in MODULES}
    missing = [rel for rel, d in sources.items() if d is None]
    if missing:
        raise FileNotFoundError(f"not found under {ROOT}: {', '.join(missing)}")
    cwd = os.getcwd()
    staging = tempfile.mkdtemp(prefix=".native-", dir=parent)
    try:
        os.chdir(ROOT)  # mypyc names the modules from their paths
        work = os.path.join(staging, "work")
        extensions = mypycify(list(MODULES), opt_level="3", multi_file=True, target_dir=work)
        dist = Distribution({"name": "zeroscale-native", "ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        out = os.path.join(staging, "out")
        cmd.build_lib = out
        cmd.build_temp = os.path.join(work, "obj")
        cmd.parallel = jobs or os.cpu_count() or 1
        dist.run_command("build_ext")
        with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:
            json.dump({"python": _python(), "sources": sources}, f, indent=1, sort_keys=True)
        old = None
        if os.path.exists(where):
            old = where + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(where, old)
        os.rename(out, where)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(staging, ignore_errors=True)
    return where


def _say(msg: str) -> None:
    print(f"serving.native_build: {msg}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import argparse

    doc = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m serving.native_build", description=doc)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the request path with mypyc")
    b.add_argument(
        "--if-stale",
        action="store_true",
        help="only when the build is missing or out of date; without mypy or a C compiler, or when the "
        "build fails, say so and exit 0 (the sources stay in use)",
    )
    b.add_argument("--jobs", type=int, default=None, help="parallel C compiles (default: the CPU count)")
    st = sub.add_parser("status", help="which request path a process would use, and why")
    st.add_argument("--require", action="store_true", help="exit 1 unless the compiled path is in use")
    sub.add_parser("clean", help="remove the build")
    args = parser.parse_args(argv)
    where = native_dir()
    if args.cmd == "status":
        print(status())
        return 1 if args.require and not active() else 0
    if args.cmd == "clean":
        import shutil

        shutil.rmtree(where, ignore_errors=True)
        print(f"removed {where}")
        return 0
    plain = "the request path runs as plain Python"
    if args.if_stale:
        why = check(where)
        if why is None:
            return 0
        if why == "ZEROSCALE_NATIVE is off":
            _say("ZEROSCALE_NATIVE is off: not building")
            return 0
        try:
            import mypyc  # noqa: F401
        except ImportError:
            _say(f"mypy is not installed: {plain}")
            return 0
        if _compiler() is None:
            _say(f"no C compiler: {plain}")
            return 0
    _say(f"compiling {len(MODULES)} modules with mypyc into {where} ...")
    try:
        build(where, jobs=args.jobs)
    except (Exception, SystemExit) as e:  # mypyc exits on a type error; the sources must still work
        _say(f"the build failed ({e!r}); {plain}")
        return 0 if args.if_stale else 1
    _say(f"built {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
