"""The data plane's share of a cold start: ``python -m benchmarks.cold_start``.

    python -m benchmarks.cold_start [--runs 10] [--burst 25] [--app-startup-runs 10] [--json-out FILE]

``zeroscale up`` runs a warm-up Service, ``--runs`` + ``--burst`` Services of the trivial app, all
starting with no pod (``initial-scale: 0``, Knative's config-autoscaler keys). Then:

* a first request to the warm-up Service, reported apart: it lands while ``up`` is still starting its
  queue-proxy zygote (the first cold start after ``up`` started, not a typical one);
* one after the other, a first request to each of the ``--runs`` Services: time from sending it to
  its complete response (the pod is started, probed ready, and the queued request forwarded);
* all at once, a first request to each of the ``--burst`` Services (25 cold starts at the same time).

The app's own start-up is subtracted: spawning ``benchmarks/upstream.py`` until it accepts a
connection, measured alone ``--app-startup-runs`` times first and once more just before each of the
one-after-the-other cold starts (the median of all is subtracted from those), and as
``--burst`` apps spawned at once (each one's time to accept, on the same 2 cores) for the burst.
What is left is the data plane's share (the queue-proxy's start, readiness probing, the activator's
hold and forward). The goal is a p50 under 50 ms. Bounded: every request gives up after 60 s;
everything listens on 127.0.0.1; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .dataplane import machine
from .harness import PYTHON, Procs, free_port, http_get, wait_port, write_json
from .loadgen import percentile
from .paths import QUIET, UPSTREAM

CONFIG = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  allow-zero-initial-scale: "true"
  initial-scale: "0"
"""

SERVICE = """\
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containers:
        - command: [python3, {upstream}]
"""


def app_startup(procs: Procs, runs: int) -> list[float]:
    """Seconds from spawning the app to its first accepted connection, ``runs`` times."""
    out = []
    for _ in range(runs):
        port = free_port()
        t0 = time.perf_counter()
        p = procs.start([PYTHON, UPSTREAM, "--port", str(port)], "app-startup")
        wait_port_fast(port, p)
        out.append(time.perf_counter() - t0)
        procs.kill(p)
    return out


def apps_at_once(procs: Procs, n: int) -> list[float]:
    """Seconds from spawning each of ``n`` apps, all at once, to its first accepted connection."""
    ports = [free_port() for _ in range(n)]
    t0 = time.perf_counter()
    started = [procs.start([PYTHON, UPSTREAM, "--port", str(port)], "apps-at-once") for port in ports]
    pending = dict(zip(ports, started, strict=True))
    out = []
    deadline = t0 + 60
    while pending and time.perf_counter() < deadline:
        for port, p in list(pending.items()):
            if p.poll() is not None:
                raise RuntimeError(f"an app exited with {p.returncode}")
            if _accepts(port):
                out.append(time.perf_counter() - t0)
                del pending[port]
        time.sleep(0.002)
    for p in started:
        procs.kill(p)
    if pending:
        raise RuntimeError(f"{len(pending)} of {n} apps did not listen within 60 s")
    return sorted(out)


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def qp_startup(procs: Procs, runs: int) -> list[float]:
    """Seconds from spawning a queue-proxy (in front of nothing) to its serving port accepting."""
    out = []
    for _ in range(runs):
        port = free_port()
        env = {
            **QUIET,
            "QUEUE_BIND_ADDRESS": "127.0.0.1",
            "QUEUE_SERVING_PORT": str(port),
            "USER_PORT": str(free_port()),
            "QUEUE_ADMIN_PORT": str(free_port()),
            "QUEUE_METRICS_PORT": str(free_port()),
            "USER_METRICS_PORT": str(free_port()),
        }
        t0 = time.perf_counter()
        p = procs.start([PYTHON, "-m", "queueproxy"], "qp-startup", env)
        wait_port_fast(port, p)
        out.append(time.perf_counter() - t0)
        procs.kill(p)
    return out


def wait_port_fast(port: int, p: Any, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{p.args!r} exited with {p.returncode}")
        if _accepts(port):
            return
        time.sleep(0.002)
    raise RuntimeError(f"nothing listened on {port} within {timeout:.0f} s")


def _pods(status: Any) -> list[int]:
    """Every revision's pod count found in ``zeroscale status`` JSON."""
    found: list[int] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "pods" in x and isinstance(x["pods"], int):
                found.append(x["pods"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(status)
    return found


def wait_all_at_zero(admin_port: int, services: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/v1/status", timeout=5) as r:
                last = json.loads(r.read())
            pods = _pods(last)
            if len(pods) >= services and not any(pods):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"the services were not all created at zero pods within {timeout:.0f} s: {last!r:.400}"
    )


def timed_get(port: int, host: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    status = http_get(port, "/", host, timeout=60)
    return time.perf_counter() - t0, status


def summarize(values: list[float], minus: float) -> dict[str, float]:
    v = sorted(values)
    share = sorted(x - minus for x in v)
    return {
        "n": len(v),
        "p50_ms": round(percentile(v, 50) * 1000, 1),
        "p95_ms": round(percentile(v, 95) * 1000, 1),
        "max_ms": round(v[-1] * 1000, 1) if v else float("nan"),
        "share_p50_ms": round(percentile(share, 50) * 1000, 1),
        "share_p95_ms": round(percentile(share, 95) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cold_start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=10, help="Services cold-started one after the other")
    p.add_argument("--burst", type=int, default=25, help="Services cold-started at the same time")
    p.add_argument("--app-startup-runs", type=int, default=10)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if not (1 <= args.runs <= 200 and 0 <= args.burst <= 200 and 1 <= args.app_startup_runs <= 100):
        p.error("--runs 1-200, --burst 0-200, --app-startup-runs 1-100")
    started = datetime.now(UTC)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="zs-cold-") as tmpdir, Procs(Path(tmpdir)) as procs:
        tmp = Path(tmpdir)
        startup = app_startup(procs, args.app_startup_runs)
        app_ms = statistics.median(startup)
        print(f"app start-up alone: median {app_ms * 1000:.0f} ms over {len(startup)} runs", flush=True)
        qp = qp_startup(procs, args.app_startup_runs)
        print(f"queue-proxy start-up alone: median {statistics.median(qp) * 1000:.0f} ms", flush=True)
        many = apps_at_once(procs, args.burst) if args.burst else []
        many_ms = statistics.median(many) if many else 0.0
        if many:
            print(f"{args.burst} apps started at once: median {many_ms * 1000:.0f} ms each", flush=True)
        (tmp / "config.yaml").write_text(CONFIG)
        seq_names = [f"seq-{i}" for i in range(args.runs)]
        names = ["warm-up", *seq_names, *(f"burst-{i}" for i in range(args.burst))]
        files = []
        for n in names:
            f = tmp / f"{n}.yaml"
            f.write_text(SERVICE.format(name=n, upstream=UPSTREAM))
            files += ["-f", str(f)]
        port, admin = free_port(), free_port()
        up = procs.start(
            [PYTHON, "-m", "cluster", "up", *files, "--config", str(tmp / "config.yaml"),
             "--port", str(port), "--admin-port", str(admin), "--drain-timeout", "1"],
            "zeroscale-up", dict(QUIET),
        )  # fmt: skip
        wait_port(port, up, 60)
        wait_all_at_zero(admin, len(names))
        first, status = timed_get(port, "warm-up.default.example.com")
        if status != 200:
            raise RuntimeError(f"cold start of warm-up answered {status}")
        print(f"  warm-up (the first after up started): {first * 1000:.0f} ms", flush=True)
        seq: list[float] = []
        for n in seq_names:
            # the app alone once more before each cold start, so both see the machine in the same state
            [alone] = app_startup(procs, 1)
            startup.append(alone)
            latency, status = timed_get(port, f"{n}.default.example.com")
            if status != 200:
                raise RuntimeError(f"cold start of {n} answered {status}")
            seq.append(latency)
            print(f"  {n}: {latency * 1000:.0f} ms (app alone: {alone * 1000:.0f} ms)", flush=True)
        app_ms = statistics.median(startup)
        burst: list[float] = []
        errors = 0
        lock = threading.Lock()

        def one(name: str) -> None:
            nonlocal errors
            latency, status = timed_get(port, f"{name}.default.example.com")
            with lock:
                if status == 200:
                    burst.append(latency)
                else:
                    errors += 1

        threads = [threading.Thread(target=one, args=(n,)) for n in names[1 + args.runs :]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        procs.stop(up, timeout=20)
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "app_startup_ms": {"median": round(app_ms * 1000, 1), "runs": [round(x * 1000, 1) for x in startup]},
        "queue_proxy_startup_ms": {"median": round(statistics.median(qp) * 1000, 1)},
        "apps_at_once_ms": {"n": args.burst, "median": round(many_ms * 1000, 1)} if many else None,
        "first_after_up_ms": round(first * 1000, 1),
        "sequential": summarize(seq, app_ms),
        "burst": {**summarize(burst, many_ms), "errors": errors} if args.burst else None,
        "goal": {"data plane share p50 < 50 ms": summarize(seq, app_ms)["share_p50_ms"] < 50},
    }
    print(json.dumps(doc, indent=2))
    out = write_json(doc, "cold-start", started, args.json_out)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
