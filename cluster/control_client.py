"""`zeroscale apply | delete | status`: talk to a running `zeroscale up` through its control API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

__all__ = ["format_status", "main"]

DEFAULT_ADMIN_PORT = 9081


def _client(port: int) -> httpx.Client:
    # trust_env=False: a proxy variable in the user's shell must not divert loopback calls.
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0, trust_env=False)


def _fail(msg: str) -> int:
    print(f"zeroscale: {msg}", file=sys.stderr)
    return 1


def _not_running(port: int) -> int:
    return _fail(f"no `zeroscale up` answers on 127.0.0.1:{port} (start one, or pass --admin-port)")


def format_status(status: dict[str, Any]) -> str:
    lines: list[str] = []
    for svc in status.get("services", []):
        lines.append(f"{svc['namespace']}/{svc['name']}  {svc['url']}")
        lines.append("  traffic:")
        for t in svc.get("traffic", []):
            tag = f"  tag={t['tag']}" if t.get("tag") else ""
            lines.append(f"    {t['percent']:>3}%  {t['revision']}{tag}")
        ro = svc.get("rollout")
        if ro:
            split = ", ".join(f"{r['revision']} {r['percent']}%" for r in ro.get("revisions", []))
            nxt = ro.get("next_step_in")
            when = f", next step of {ro.get('step_percent')}% in {nxt:.1f} s" if nxt is not None else ""
            lines.append(f"  rollout: {split}{when}")
        lines.append("  revisions:")
        lines.append("    NAME                       DESIRED  READY  CONCURRENCY  PANIC  ACTIVATOR")
        for r in svc.get("revisions", []):
            desired = "-" if r.get("desired_pods") is None else str(r["desired_pods"])
            conc = r.get("concurrency")
            conc_s = "-" if conc is None else f"{max(conc, 0.0):.2f}"  # -1e-06 is float noise
            panic = "yes" if r.get("panic") else "no"
            activator = "in path" if r.get("activator_in_path") else "out"
            ready = r["ready_pods"]
            row = f"{r['name']:<26} {desired:>7}  {ready:>5}  {conc_s:>11}  {panic:>5}  {activator:>9}"
            lines.append("    " + row)
    if not lines:
        lines.append("no services")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zeroscale")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_apply = sub.add_parser("apply", help="send Service files to a running `zeroscale up`")
    p_apply.add_argument("-f", "--filename", action="append", required=True, help="Knative Service YAML")
    p_del = sub.add_parser("delete", help="delete a Service")
    p_del.add_argument("name")
    p_del.add_argument("-n", "--namespace", default="default")
    p_status = sub.add_parser("status", help="show services, traffic and revisions")
    p_status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    for p in (p_apply, p_del, p_status):
        p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT, help="control API port of `up`")
    args = parser.parse_args(argv)

    try:
        with _client(args.admin_port) as client:
            if args.cmd == "apply":
                for name in args.filename:
                    path = Path(name)
                    try:
                        text = path.read_text()
                    except OSError as e:
                        return _fail(f"cannot read {name}: {e.strerror}")
                    # The absolute path: `up` runs the file's processes in its directory (same machine).
                    source = str(path.resolve())
                    r = client.post("/v1/apply", params={"source": source}, content=text.encode())
                    body = r.json()
                    if r.status_code != 200:
                        # the error names the file already (and the document and field in it)
                        return _fail(str(body.get("error", r.text)))
                    for change in body["applied"]:
                        print(change.get("message", json.dumps(change)))
                return 0
            if args.cmd == "delete":
                r = client.delete(f"/v1/services/{args.namespace}/{args.name}")
                if r.status_code != 200:
                    return _fail(r.json().get("error", r.text))
                print(f"service {args.namespace}/{args.name} deleted")
                return 0
            r = client.get("/v1/status")
            r.raise_for_status()
            status = r.json()
            print(json.dumps(status, indent=2) if args.output == "json" else format_status(status))
            return 0
    except httpx.ConnectError:
        return _not_running(args.admin_port)
    except httpx.HTTPError as e:
        return _fail(f"control API error: {e}")
