"""Markdown tables from the benchmarks' JSON.

    python -m benchmarks.report DATAPLANE.json [COLD.json] [OVERLOAD.json]

Prints the section that benchmarks/RESULTS.md (and the README's performance table) is made of: the
date and the machine, then one table per benchmark, with the ratios against direct and nginx.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _date(doc: dict[str, Any]) -> str:
    return str(doc["date"]).replace("T", " ").replace("+00:00", "")


def _f(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def dataplane_md(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    s = doc["settings"]
    load = m.get("loadavg_start", [0])[0]
    lines = [
        f"Run of {_date(doc)} UTC on {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, Python "
        f"{m['python']}; load average {load:.2f} at the start, {m.get('loadavg_end', [0])[0]:.2f} at the end "
        "(other processes shared the machine). "
        f"{s['rounds']} interleaved round(s), medians; saturation {s['duration']:g} s "
        f"at c={s['connections']} "
        f"({'wrk' if doc['tools'].get('wrk') else 'built-in client'}), fixed rate {s['rate']:g} req/s for "
        f"{s['rate_duration']:g} s to a 100 ms app ({s.get('rate_tool', 'builtin')} open-loop client, evenly "
        "spaced). CPU is user + system of the data-plane processes only.",
        "",
        "| path | req/s at c=50 | x direct | x nginx | p50 / p95 / p99 ms | CPU us/req | x nginx CPU "
        "| idle / peak RSS MB | p50 / p95 ms at 1,000 req/s | added p50 ms | x nginx added |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["results"].items():
        sat, fr, ra = r.get("saturation", {}), r.get("fixed_rate", {}), r.get("ratios", {})
        lines.append(
            f"| {name} | {_f(sat.get('req_per_s'), '.0f')} | {_f(ra.get('rps_vs_direct'), '.2f')} "
            f"| {_f(ra.get('rps_vs_nginx'), '.2f')} "
            f"| {_f(sat.get('p50_ms'), '.2f')} / {_f(sat.get('p95_ms'), '.2f')} "
            f"/ {_f(sat.get('p99_ms'), '.2f')} "
            f"| {_f(sat.get('cpu_us_per_request'))} | {_f(ra.get('cpu_vs_nginx'), '.2f')} "
            f"| {_f(r.get('idle_rss_mb'))} / {_f(sat.get('peak_rss_mb'))} "
            f"| {_f(fr.get('p50_ms'), '.2f')} / {_f(fr.get('p95_ms'), '.2f')} "
            f"| {_f(fr.get('added_p50_ms'), '.2f')} | {_f(ra.get('added_p50_vs_nginx'), '.2f')} |"
        )
    for name, why in doc.get("skipped", {}).items():
        lines.append(f"\nSkipped {name}: {why}")
    lines += ["", "| goal | value | met |", "|---|---|---|"]
    for text, g in doc["goals"].items():
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {text} | {_f(g['value'], '.3g')} | {met} |")
    return lines


def cold_md(doc: dict[str, Any]) -> list[str]:
    seq, burst = doc["sequential"], doc.get("burst") or {}
    lines = [
        f"Run of {_date(doc)} UTC. The app alone starts in "
        f"{doc['app_startup_ms']['median']:.0f} ms (median); "
        f"a queue-proxy process alone in "
        f"{doc.get('queue_proxy_startup_ms', {}).get('median', float('nan')):.0f} ms"
        + (
            f"; {doc['apps_at_once_ms']['n']} apps started at once take "
            f"{doc['apps_at_once_ms']['median']:.0f} ms each (median), which the burst's share subtracts"
            if doc.get("apps_at_once_ms")
            else ""
        )
        + (
            f". The first cold start after `zeroscale up` said it serves (the warm-up Service): "
            f"{doc['first_after_up_ms']:.0f} ms."
            if doc.get("first_after_up_ms") is not None
            else "."
        ),
        "",
        "| cold starts | n | p50 ms | p95 ms | max ms | data plane's share p50 / p95 ms |",
        "|---|---|---|---|---|---|",
        f"| one after the other | {seq['n']} | {seq['p50_ms']} | {seq['p95_ms']} | {seq['max_ms']} "
        f"| {seq['share_p50_ms']} / {seq['share_p95_ms']} |",
    ]
    for text, met in (doc.get("goal") or {}).items():
        lines.insert(1, f"Goal, {text}: {'met' if met else '**not met**'}.")
    if burst:
        lines.append(
            f"| {burst['n'] + burst.get('errors', 0)} at once ({burst.get('errors', 0)} failed) "
            f"| {burst['n']} "
            f"| {burst['p50_ms']} | {burst['p95_ms']} | {burst['max_ms']} "
            f"| {burst['share_p50_ms']} / {burst['share_p95_ms']} |"
        )
    return lines


def overload_md(doc: dict[str, Any]) -> list[str]:
    q, o = doc["queued"], doc["overload"]
    s = doc["settings"]
    return [
        f"Run of {_date(doc)} UTC; gateway+activator idle RSS {doc['idle_rss_mb']} MB.",
        "",
        "| case | clients | RSS MB | extra over idle MB | queue empty after |",
        "|---|---|---|---|---|",
        f"| {q['clients']} queued for a revision with no pod ({q['queued_seen']:.0f} seen queued, "
        f"{q['refused']} refused) | {q['clients']} | {q['peak_rss_mb']} | {q['extra_rss_mb']} "
        f"| {'yes' if q['queue_empty_after_clients_left'] else '**no**'} |",
        f"| {s['overload_rate']:g} new clients/s for {s['overload_seconds']:g} s, each giving up after "
        f"{s['give_up_after']:g} s (at most {o['max_waiting_at_once']} waiting at once) | {o['clients']} "
        f"| peak {o['peak_rss_mb']}, after {o['rss_after_mb']} "
        f"| {round(o['peak_rss_mb'] - o['rss_before_mb'], 1)} "
        f"| {'yes' if o['queue_empty_at_end'] else '**no**'} |",
        "",
        *(
            f"Goal, {text}: {'met' if met else '**not met**' if met is not None else 'not measured'}."
            for text, met in (doc.get("goal") or {}).items()
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("files", nargs="+", help="JSON written by dataplane, cold_start or overload")
    args = p.parse_args(argv)
    out: list[str] = []
    for f in args.files:
        doc = json.loads(Path(f).read_text())
        if "results" in doc:
            out += ["### Data plane, side by side (`python -m benchmarks.dataplane`)", "", *dataplane_md(doc)]
        elif "sequential" in doc:
            out += ["### Cold starts (`python -m benchmarks.cold_start`)", "", *cold_md(doc)]
        elif "queued" in doc:
            out += ["### Queue and overload memory (`python -m benchmarks.overload`)", "", *overload_md(doc)]
        else:
            print(f"{f}: not a benchmark result", file=sys.stderr)
            return 2
        out.append("")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
