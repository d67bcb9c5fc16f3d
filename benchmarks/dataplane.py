"""One run, every data-plane path side by side: ``python -m benchmarks.dataplane``.

    python -m benchmarks.dataplane [--paths direct,nginx,queue-proxy,queue-proxy-plain,gateway+activator,
        gateway->pods,full]
        [--duration 5] [--connections 50] [--rate 1000] [--rate-duration 5] [--rounds 1]
        [--tool auto|wrk|hey|builtin] [--json-out FILE]

Starts the trivial app (benchmarks/upstream.py) once and puts each path in front of it in turn:
direct; nginx as a reverse proxy (one worker, keep-alive upstream, unprivileged config in a temp dir,
when installed); the queue-proxy as it runs (its request path compiled with mypyc when the build is
current: serving/native.py) and as plain Python (``queue-proxy-plain``, ZEROSCALE_NATIVE=false); the
gateway with the activator in the path; the gateway straight to the pod (the activator out of the
path); and the full local path (``zeroscale up``: gateway, queue-proxy, app). Each path gets the
same two loads, one after the other, alone on the machine:

* saturation: ``--connections`` (50) keep-alive connections as fast as they go, for ``--duration`` s;
* fixed rate: ``--rate`` (1,000) requests per second to ``/slow``, which the app answers after 100 ms
  (Knative's dataplane-probe shape), for ``--rate-duration`` s.

Per path it reports req/s, p50/p95/p99 latency, CPU microseconds per request of the data-plane
processes (user + system, from /proc; never the app's or the load tool's), idle and peak RSS, the
latency a path adds at the fixed rate (its p50 minus direct's), and ratios against direct and against
nginx; then the performance issue's goals, each met or not. The saturation load comes from wrk (or
hey) when installed, else from a built-in asyncio client (``--tool builtin`` forces it); the fixed rate
from the built-in open-loop client, evenly spaced like Knative's vegeta-driven probe (``--rate-tool
hey`` is there, but hey's rate-limited workers fire in step, in bursts).
With ``--rounds N`` the paths are measured N times, interleaved, and the median of each figure is kept:
other processes on the machine then distort one round, not the result. The JSON goes to ``--json-out``
(default ``benchmarks/results/dataplane-<UTC time>.json``, git-ignored). Every load is bounded in time
and count; everything listens on 127.0.0.1 only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .harness import Procs, UsageMeter, write_json
from .loadgen import LoadResult, available_tools, fixed_rate, saturation
from .paths import PATHS, Unavailable, start_upstream

MB = 1024 * 1024
GOALS_TEXT = {
    "queue-proxy req/s >= 0.5 x nginx": "qp_rps_vs_nginx",
    "queue-proxy CPU <= 30 us/request": "qp_cpu_us",
    # The issue's own table has nginx at 11 us on its machine: 30 us is 2.7 x that. The same goal as a
    # ratio to nginx in this run, which does not depend on how fast this machine's syscalls are.
    "queue-proxy CPU <= 2.7 x nginx's (30 us / the issue's 11 us)": "qp_cpu_vs_nginx",
    "queue-proxy added p50 at the fixed rate <= 2 x nginx's": "qp_added_p50_vs_nginx",
    "queue-proxy idle RSS < 40 MB": "qp_idle_rss_mb",
    "gateway+activator req/s >= 0.35 x nginx": "gw_rps_vs_nginx",
    "full local path p95 at the fixed rate <= 105 ms": "full_p95_ms",
}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def _measure_path(
    name: str, procs: Procs, up_port: int, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    starter = PATHS[name]
    path_tmp = tmp / name.replace(">", "").replace("+", "-")
    path_tmp.mkdir(exist_ok=True)
    out: dict[str, Any] = {"path": name}
    with Procs(path_tmp) as own, starter(own, up_port, path_tmp) as target:
        out["note"] = target.note
        host = target.host
        # warm-up: connection pools, code paths; the idle RSS is read before it
        idle = UsageMeter(target.pids)
        with idle:
            pass
        out["idle_rss_mb"] = round(idle.idle_rss / MB, 1) if target.pids() else None
        saturation(target.port, host=host, connections=args.connections, duration=1.0, tool=args.tool)
        if not args.skip_saturation:
            with UsageMeter(target.pids) as meter:
                sat = saturation(
                    target.port,
                    host=host,
                    connections=args.connections,
                    duration=args.duration,
                    tool=args.tool,
                )
            out["saturation"] = _with_usage(sat, meter, bool(target.pids()))
        if not args.skip_rate:
            with UsageMeter(target.pids) as meter:
                fr = fixed_rate(
                    target.port, host=host, rate=args.rate, duration=args.rate_duration, tool=args.rate_tool
                )
            out["fixed_rate"] = _with_usage(fr, meter, bool(target.pids()))
    return out


def _with_usage(r: LoadResult, meter: UsageMeter, has_pids: bool) -> dict[str, Any]:
    u = meter.usage()
    d = r.as_dict()
    good = r.requests - r.errors
    d["cpu_us_per_request"] = round(u.cpu_seconds / good * 1e6, 1) if has_pids and good else None
    d["peak_rss_mb"] = round(u.peak_rss / MB, 1) if has_pids else None
    return d


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the rounds (the first round's notes and tools)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    out["rounds"] = len(runs)
    for mode in ("saturation", "fixed_rate"):
        rows = [r[mode] for r in runs if mode in r]
        if not rows:
            continue
        merged = dict(rows[0])
        for key, value in rows[0].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                vals = [row[key] for row in rows if isinstance(row.get(key), int | float)]
                merged[key] = round(statistics.median(vals), 3)
        out[mode] = merged
    idles = [r["idle_rss_mb"] for r in runs if r.get("idle_rss_mb") is not None]
    out["idle_rss_mb"] = round(statistics.median(idles), 1) if idles else None
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    direct = results.get("direct", {})
    nginx = results.get("nginx", {})
    direct_p50 = direct.get("fixed_rate", {}).get("p50_ms")
    for r in results.values():
        sat, fr = r.get("saturation"), r.get("fixed_rate")
        if fr is not None and direct_p50 is not None:
            fr["added_p50_ms"] = round(fr["p50_ms"] - direct_p50, 3)
        ratios: dict[str, float | None] = {}
        if sat is not None:
            ratios["rps_vs_direct"] = _ratio(sat["req_per_s"], direct.get("saturation", {}).get("req_per_s"))
            ratios["rps_vs_nginx"] = _ratio(sat["req_per_s"], nginx.get("saturation", {}).get("req_per_s"))
            ratios["cpu_vs_nginx"] = _ratio(
                sat.get("cpu_us_per_request"), nginx.get("saturation", {}).get("cpu_us_per_request")
            )
        if fr is not None:
            nginx_added = nginx.get("fixed_rate", {}).get("added_p50_ms")
            ratios["added_p50_vs_nginx"] = _ratio(fr.get("added_p50_ms"), nginx_added)
        r["ratios"] = ratios


def goals(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    qp = results.get("queue-proxy", {})
    gw = results.get("gateway+activator", {})
    full = results.get("full", {})

    def get(d: dict[str, Any], *keys: str) -> Any:
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    figures = {
        "qp_rps_vs_nginx": (get(qp, "ratios", "rps_vs_nginx"), lambda v: v >= 0.5),
        "qp_cpu_us": (get(qp, "saturation", "cpu_us_per_request"), lambda v: v <= 30),
        "qp_cpu_vs_nginx": (get(qp, "ratios", "cpu_vs_nginx"), lambda v: v <= 30 / 11),
        "qp_added_p50_vs_nginx": (get(qp, "ratios", "added_p50_vs_nginx"), lambda v: v <= 2),
        "qp_idle_rss_mb": (get(qp, "idle_rss_mb"), lambda v: v < 40),
        "gw_rps_vs_nginx": (get(gw, "ratios", "rps_vs_nginx"), lambda v: v >= 0.35),
        "full_p95_ms": (get(full, "fixed_rate", "p95_ms"), lambda v: v <= 105),
    }
    out = {}
    for text, key in GOALS_TEXT.items():
        value, ok = figures[key]
        out[text] = {"value": value, "met": None if value is None else bool(ok(value))}
    return out


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: dict[str, dict[str, Any]], skipped: dict[str, str], g: dict[str, Any]) -> None:
    conns = next((r.get("connections") for r in results.values()), "")
    print(f"\nsaturation (c={conns})")
    hdr = f"{'path':<27}{'req/s':>9}{'p50':>8}{'p95':>8}{'p99':>8}{'CPU us/req':>11}{'peak RSS':>9}"
    print(hdr + f"{'idle RSS':>9}{'x direct':>9}{'x nginx':>8}")
    for name, r in results.items():
        s = r.get("saturation")
        if s is None:
            continue
        ra = r.get("ratios", {})
        print(
            f"{name:<27}{s['req_per_s']:>9.0f}{s['p50_ms']:>8.2f}{s['p95_ms']:>8.2f}{s['p99_ms']:>8.2f}"
            f"{_fmt(s['cpu_us_per_request']):>11}{_fmt(s['peak_rss_mb']):>9}{_fmt(r.get('idle_rss_mb')):>9}"
            f"{_fmt(ra.get('rps_vs_direct'), '.2f'):>9}{_fmt(ra.get('rps_vs_nginx'), '.2f'):>8}"
        )
    print("\nfixed rate, 100 ms app")
    hdr = f"{'path':<27}{'req/s':>9}{'p50':>8}{'p95':>8}{'p99':>8}{'added p50':>10}{'x nginx':>8}"
    print(hdr + f"{'CPU us/req':>11}")
    for name, r in results.items():
        f = r.get("fixed_rate")
        if f is None:
            continue
        ra = r.get("ratios", {})
        print(
            f"{name:<27}{f['req_per_s']:>9.0f}{f['p50_ms']:>8.2f}{f['p95_ms']:>8.2f}{f['p99_ms']:>8.2f}"
            f"{_fmt(f.get('added_p50_ms'), '.3f'):>10}{_fmt(ra.get('added_p50_vs_nginx'), '.2f'):>8}"
            f"{_fmt(f['cpu_us_per_request']):>11}"
        )
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print("\ngoals")
    for text, v in g.items():
        mark = {True: "met", False: "NOT met", None: "not measured"}[v["met"]]
        print(f"  {text:<58} {_fmt(v['value'], '.3g'):>8}  {mark}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.dataplane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of: {', '.join(PATHS)}")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of saturation load per path")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second of the fixed-rate load")
    p.add_argument("--rate-duration", type=float, default=5.0, help="seconds of fixed-rate load per path")
    p.add_argument("--rounds", type=int, default=1, help="measure every path this many times (median)")
    tool_names = ["auto", "wrk", "hey", "builtin"]
    p.add_argument("--tool", choices=tool_names, default="auto", help="saturation load")
    p.add_argument(
        "--rate-tool",
        choices=["builtin", "hey"],
        default="builtin",
        help="fixed-rate load (hey's workers fire in step: bursts, see benchmarks/loadgen.py)",
    )
    p.add_argument("--skip-saturation", action="store_true")
    p.add_argument("--skip-rate", action="store_true")
    p.add_argument("--json-out", help="where to write the JSON (default benchmarks/results/...)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        p.error(f"--paths: unknown {', '.join(unknown)}; expected some of {', '.join(PATHS)}")
    if not 1 <= args.rounds <= 20 or args.duration <= 0 or args.rate_duration <= 0 or args.rate <= 0:
        p.error("--rounds must be 1-20; --duration, --rate-duration and --rate must be > 0")
    if not 1 <= args.connections <= 10000:
        p.error("--connections must be 1-10000")

    info = machine()
    tools = available_tools()
    started = datetime.now(UTC)
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, {info['nproc']} CPUs ({info['cpu_model']}), load average "
        f"{info['loadavg_start'][0]:.2f}; wrk {'yes' if tools['wrk'] else 'no'}, "
        f"hey {'yes' if tools['hey'] else 'no'}",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="zs-bench-") as tmpdir, Procs(Path(tmpdir)) as procs:
        tmp = Path(tmpdir)
        up_port, _ = start_upstream(procs)
        for rnd in range(args.rounds):
            for name in names:
                if name in skipped:
                    continue
                t0 = time.monotonic()
                try:
                    r = _measure_path(name, procs, up_port, tmp, args)
                except Unavailable as e:
                    skipped[name] = str(e)
                    print(f"  {name}: skipped ({e})", flush=True)
                    continue
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    skipped[name] = f"failed: {e}"
                    print(f"  {name}: FAILED ({e}); logs in the temp dir are gone, rerun with --paths {name}")
                    continue
                r["connections"] = args.connections
                runs.setdefault(name, []).append(r)
                sat = r.get("saturation", {})
                print(
                    f"  round {rnd + 1} {name}: {sat.get('req_per_s', 0):.0f} req/s, "
                    f"{_fmt(sat.get('cpu_us_per_request'))} us CPU/request ({time.monotonic() - t0:.0f} s)",
                    flush=True,
                )
    results = {name: _median_runs(rs) for name, rs in runs.items()}
    add_ratios(results)
    g = goals(results)
    info["loadavg_end"] = list(os.getloadavg())
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "tools": {k: bool(v) for k, v in tools.items()},
        "settings": {
            "duration": args.duration,
            "connections": args.connections,
            "rate": args.rate,
            "rate_duration": args.rate_duration,
            "rounds": args.rounds,
            "tool": args.tool,
            "rate_tool": args.rate_tool,
        },
        "results": results,
        "skipped": skipped,
        "goals": g,
    }
    print_table(results, skipped, g)
    out = write_json(doc, "dataplane", started, args.json_out)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
