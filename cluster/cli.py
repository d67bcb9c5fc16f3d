"""The `zeroscale` command: one entry point, each subcommand implemented in its own module."""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

# subcommand -> (module, help). Modules are imported only when their subcommand runs, so that
# `zeroscale simulate` does not load the Kubernetes client and `zeroscale status` starts fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("cluster.up", "run Knative Services on this machine: gateway, activator, autoscaler and pods"),
    "apply": ("cluster.control_client", "send a changed Service file to a running `zeroscale up`"),
    "delete": ("cluster.control_client", "delete a Service from a running `zeroscale up`"),
    "status": ("cluster.control_client", "show services, traffic and revisions of a running `zeroscale up`"),
    "simulate": ("autoscaler.simulate", "replay a recorded load through the real autoscaler decisions"),
    "render": ("cluster.render", "print Kubernetes manifests for Service files"),
}


def _usage() -> str:
    lines = ["usage: zeroscale <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`zeroscale <command> --help` describes each command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"zeroscale: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    # Each module exposes main(argv) -> int; the control client takes the subcommand name first.
    if SUBCOMMANDS[name][0] == "cluster.control_client":
        return int(module.main([name, *rest]))
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
