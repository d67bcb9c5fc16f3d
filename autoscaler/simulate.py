"""``zeroscale simulate``: replay a recorded load through the real windows, decider and scale-to-zero logic.

    zeroscale simulate TRACE [--annotations K=V ...] [--config config-autoscaler.yaml]
                       [--container-concurrency N] [--pod-start-delay S] [--plot out.png]

TRACE is CSV with a header ``t,concurrency`` or ``t,rps`` and optionally ``ready_pods``, one row per
second: the revision-wide load. Each second the load is recorded in the stable and panic windows
(when there are pods to scrape, or requests waiting at the activator), exactly as the autoscaler
records scraped and activator stats; every 2 s (and at once on a cold-start poke) the decider and the
scale-to-zero state machine decide. Without a ``ready_pods`` column, pods follow the applied scale:
new ones are ready ``--pod-start-delay`` seconds later, removed ones go at once.

One line per decision: time, load, ready pods, the scale asked for (``-1``: unknown yet), the
decider's number, panic mode, excess burst capacity, and whether the activator is in the path.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TextIO

from serving.errors import ConfigError
from serving.stat import Stat

from .collector import RevisionMetrics
from .config import ANNOTATION_PREFIX, AutoscalerConfig, RevisionScaling, defaults, parse_annotations, resolve
from .decider import TICK_INTERVAL, Decider
from .kpa import RevisionScaler
from .trace import Trace, read_trace

__all__ = ["SimPods", "SimTick", "main", "simulate"]


@dataclass(frozen=True, slots=True)
class SimTick:
    t: float
    load: float
    ready: int
    want: int
    decided: int
    in_panic: bool
    ebc: int
    activator_in_path: bool
    stable: float | None
    panic: float | None
    poke: bool


class SimPods:
    """Pods that follow the scale asked for: ready ``delay`` seconds after being asked for."""

    def __init__(self, ready: int, delay: float) -> None:
        self.ready = ready
        self.delay = delay
        self._starting: list[float] = []  # ready times of pods on their way

    def scale(self, t: float, n: int) -> None:
        if n <= self.ready:
            self.ready = n
            self._starting = []
            return
        missing = n - self.ready
        self._starting = sorted(self._starting)[:missing]
        self._starting += [t + self.delay] * (missing - len(self._starting))
        self.advance(t)

    def advance(self, t: float) -> None:
        done = [s for s in self._starting if s <= t]
        self.ready += len(done)
        self._starting = [s for s in self._starting if s > t]


def simulate(trace: Trace, scaling: RevisionScaling, pod_start_delay: float = 1.0) -> list[SimTick]:
    rows = trace.rows
    t0 = rows[0].t
    metrics = RevisionMetrics.for_scaling(scaling)
    first_ready = rows[0].ready_pods if trace.has_ready else scaling.initial_scale
    pods = SimPods(first_ready or 0, pod_start_delay)
    decider = Decider(scaling.spec, pods.ready, t0)
    kpa = RevisionScaler(scaling, t0)
    desired = -1
    tbc = scaling.spec.target_burst_capacity
    ebc = int(tbc) if tbc in (-1, 0) else int(scaling.initial_scale * scaling.spec.total_value - tbc)
    out: list[SimTick] = []

    def decide(t: float, load: float, poke: bool) -> None:
        nonlocal desired, ebc
        observed = metrics.observed(t)
        stable, panic = observed if observed is not None else (None, None)
        result = decider.scale(t, stable, panic, pods.ready)
        if result.scale_valid:
            desired, ebc = result.desired_pod_count, result.excess_burst_capacity
        applied = kpa.reconcile(t, desired, ebc, pods.ready)
        if applied.apply and applied.want >= 0 and not trace.has_ready:
            pods.scale(t, applied.want)
        out.append(
            SimTick(
                t,
                load,
                pods.ready,
                applied.want,
                desired,
                decider.in_panic,
                ebc,
                applied.activator_in_path,
                stable,
                panic,
                poke,
            )
        )

    for row in rows:
        t = row.t
        if trace.has_ready:
            pods.ready = row.ready_pods or 0
        else:
            pods.advance(t)
        # Queue-proxies are scraped when there are pods; requests waiting at the activator are reported
        # by it. With neither, there is nothing to record (and, after a window, no data).
        if pods.ready > 0 or row.load > 0:
            if trace.metric == "rps":
                stat = Stat("trace", 0.0, 0.0, row.load, 0.0)
            else:
                stat = Stat("trace", row.load, 0.0, row.load, 0.0)
            metrics.record(t, stat)
            # The cold-start poke: an activator stat for a revision whose last decision was 0, or that
            # has had no valid decision yet (see MultiScaler.record: Knative waits for the tick there).
            if pods.ready == 0 and desired <= 0 and stat.average_concurrent_requests != 0:
                decide(t, row.load, True)
        if (t - t0) % TICK_INTERVAL == 0:
            decide(t, row.load, False)
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_ticks(ticks: Sequence[SimTick], metric: str, out: TextIO) -> None:
    head = (
        f"{'t':>7} {metric:>11} {'ready':>5} {'want':>5} {'decided':>7} {'panic':>5} {'ebc':>7} "
        f"{'activator':>9} {'stable':>9} {'panic_avg':>9}"
    )
    print(head, file=out)
    for k in ticks:
        panic = "yes" if k.in_panic else "no"
        path = "in path" if k.activator_in_path else "out"
        line = (
            f"{k.t:>7g} {k.load:>11.2f} {k.ready:>5} {k.want:>5} {k.decided:>7} {panic:>5} {k.ebc:>7} "
            f"{path:>9} {_fmt(k.stable):>9} {_fmt(k.panic):>9}{'  poke' if k.poke else ''}"
        )
        print(line, file=out)


def _annotations(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--annotations {pair!r}: expected KEY=VALUE, e.g. autoscaling.knative.dev/target=10"
            )
        key = key.strip()
        out[key if "/" in key else ANNOTATION_PREFIX + key] = value.strip()
    return out


def _plot(ticks: Sequence[SimTick], trace: Trace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    ax.plot([r.t for r in trace.rows], [r.load for r in trace.rows], color="tab:blue", label=trace.metric)
    ax.set_xlabel("t (s)")
    ax.set_ylabel(trace.metric, color="tab:blue")
    pods_ax = ax.twinx()
    ts = [k.t for k in ticks]
    pods_ax.step(ts, [max(k.want, 0) for k in ticks], where="post", color="tab:red", label="pods asked for")
    pods_ax.step(
        ts, [k.ready for k in ticks], where="post", color="tab:green", linestyle="--", label="ready pods"
    )
    pods_ax.set_ylabel("pods")
    for k, nxt in zip(ticks, [*ticks[1:], None], strict=True):
        end = nxt.t if nxt is not None else k.t + TICK_INTERVAL
        if k.in_panic:
            ax.axvspan(k.t, end, color="tab:orange", alpha=0.15, lw=0)
        if k.activator_in_path:
            ax.axvspan(k.t, end, ymin=0, ymax=0.03, color="tab:purple", alpha=0.6, lw=0)
    lines = ax.get_legend_handles_labels()[0] + pods_ax.get_legend_handles_labels()[0]
    ax.legend(lines, [str(h.get_label()) for h in lines], loc="upper left")
    ax.set_title("load and pods (orange: panic mode, purple bar: activator in path)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="zeroscale simulate", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    p.add_argument("trace", help="CSV: t,concurrency or t,rps (+ ready_pods), one row per second")
    p.add_argument(
        "--annotations",
        nargs="*",
        default=[],
        metavar="K=V",
        help="autoscaling.knative.dev/* annotations (the prefix may be left out)",
    )
    p.add_argument("--config", help="config-autoscaler YAML (a ConfigMap or a key: value mapping)")
    p.add_argument("--container-concurrency", type=int, default=0, help="the revision's containerConcurrency")
    p.add_argument(
        "--pod-start-delay", type=float, default=1.0, help="seconds from asking for a pod to ready"
    )
    p.add_argument("--plot", metavar="OUT.png", help="draw load and pods over time (needs matplotlib)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "zeroscale simulate: --plot needs matplotlib: pip install 'zeroscale[plot]'", file=sys.stderr
            )
            return 2
    if args.pod_start_delay < 0:
        print("zeroscale simulate: --pod-start-delay must be >= 0", file=sys.stderr)
        return 2
    try:
        cfg: AutoscalerConfig = defaults()
        if args.config:
            from .app import load_config_file

            cfg = load_config_file(args.config)
        trace = read_trace(args.trace)
        annotations = _annotations(args.annotations)
        ann = parse_annotations(annotations, cfg)
        key = ANNOTATION_PREFIX + "metric"
        if key not in annotations:
            ann = replace(ann, metric=trace.metric)  # the trace's column decides the metric
        elif ann.metric != trace.metric:
            raise ConfigError(f"annotation {key}={ann.metric} but the trace has a {trace.metric} column")
        scaling = resolve(cfg, ann, args.container_concurrency)
    except ConfigError as e:
        print(f"zeroscale simulate: {e}", file=sys.stderr)
        return 2
    for ignored in ann.ignored:
        print(f"zeroscale simulate: warning: unknown annotation {ignored} ignored", file=sys.stderr)
    ticks = simulate(trace, scaling, args.pod_start_delay)
    s = scaling.spec
    print(
        f"# {trace.metric}: target {s.target_value:g} of {s.total_value:g} per pod, stable window "
        f"{scaling.stable_window:g}s, panic window {scaling.panic_window:g}s at"
        f" {s.panic_threshold * 100:g} %, target burst capacity {s.target_burst_capacity:g}"
    )
    try:
        print_ticks(ticks, trace.metric, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has seen enough
        return 0
    if args.plot:
        _plot(ticks, trace, args.plot)
        print(f"# plot written to {args.plot}")
    return 0
