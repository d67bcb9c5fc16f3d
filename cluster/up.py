"""``zeroscale up``: Knative Services on this machine, in one foreground process.

    zeroscale up -f service.yaml [-f more.yaml ...] [--port 8080] [--config config.yaml]
                 [--domain example.com] [--admin-port 9081]

The gateway (routing and activator) listens on 127.0.0.1:PORT, the control API (``zeroscale apply``,
``delete``, ``status``) on 127.0.0.1:ADMIN_PORT; the autoscaler runs in this process, pods are local
processes (:mod:`cluster.local`). A bad Service file or ConfigMap stops start-up with a message that
names the field (exit 2); SIGINT or SIGTERM drains everything and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import dataclass

from serving import native
from serving.config import Configs, load_configmaps, parse_configs
from serving.errors import ConfigError
from serving.gcpolicy import freeze_after_start
from serving.spec import Service, load_services

from .up_plane import UpPlane

__all__ = ["UpOptions", "main", "parse_args"]

log = logging.getLogger("zeroscale.up")

DEFAULT_PORT = 8080
DEFAULT_ADMIN_PORT = 9081
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class UpOptions:
    files: tuple[str, ...]
    port: int = DEFAULT_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    config: str | None = None
    domain: str | None = None
    drain_timeout: float = 30.0
    verbose: bool = False


def parse_args(argv: list[str]) -> UpOptions:
    p = argparse.ArgumentParser(
        prog="zeroscale up",
        description="Run Knative Services on this machine, in the foreground: the gateway (routing and "
        "activator), the autoscaler and the pods, each pod a user process and a queue-proxy. "
        "Ctrl-C drains and stops everything.",
    )
    p.add_argument(
        "-f", "--filename", action="append", required=True, help="Knative Service YAML (repeatable)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="gateway port on 127.0.0.1 (0: any free)")
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT, help="control API port on 127.0.0.1")
    p.add_argument(
        "--config", help="YAML with config-autoscaler / config-defaults / config-network ConfigMaps"
    )
    p.add_argument("--domain", help="domain of the services' hosts (default: config-domain's, example.com)")
    p.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to let requests finish when stopping"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also log each pod's output")
    a = p.parse_args(argv)
    for name in ("port", "admin_port"):
        value = getattr(a, name)
        if not 0 <= value <= 65535:
            p.error(f"--{name.replace('_', '-')}: {value} is not a TCP port (0-65535)")
    return UpOptions(
        files=tuple(a.filename),
        port=a.port,
        admin_port=a.admin_port,
        config=a.config,
        domain=a.domain,
        drain_timeout=a.drain_timeout,
        verbose=a.verbose,
    )


def load_inputs(opts: UpOptions) -> tuple[dict[str, dict[str, str]], Configs, list[Service]]:
    """ConfigMap data, configs and Services from the files; ConfigError (SpecError) names the field."""
    maps = load_configmaps(opts.config) if opts.config else {}
    configs = parse_configs(maps)
    services: list[Service] = []
    for f in opts.files:
        services.extend(load_services(f, defaults=configs.defaults))
    if not services:
        raise ConfigError(f"{', '.join(opts.files)}: no Service document found")
    return maps, configs, services


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # The runtime and the autoscaler log their own details; `up` says what matters in one line per event.
    logging.getLogger("zeroscale.local").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("zeroscale.autoscaler").setLevel(logging.WARNING)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


async def run(
    opts: UpOptions, maps: dict[str, dict[str, str]], configs: Configs, services: list[Service]
) -> int:
    plane = UpPlane(configs, maps=maps, domain=opts.domain)
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
        elif not force.is_set():
            log.info("zeroscale up: second signal: stopping the pods now, without waiting for requests")
            force.set()

    # The handlers stay installed until everything is stopped: a signal never kills `up` halfway,
    # which would orphan the pods.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        try:
            await plane.start(services, LOOPBACK, opts.port, opts.admin_port)
        except ConfigError as e:
            print(f"zeroscale up: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"zeroscale up: cannot listen: {e}", file=sys.stderr)
            return 1
        log.info(
            "zeroscale up: gateway on http://%s:%d, control API on %s:%d (Ctrl-C stops); %s",
            LOOPBACK,
            plane.port,
            LOOPBACK,
            plane.admin_port,
            native.status(),
        )
        for svc in plane.status()["services"]:
            log.info("service %s/%s: %s", svc["namespace"], svc["name"], svc["url"])
        freeze_after_start()
        await stop.wait()
        log.info("zeroscale up: stopping (draining requests, then pods; a second Ctrl-C skips the wait)")
        return 0
    finally:
        await _stop(plane, opts.drain_timeout, force)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("zeroscale up: stopped")


async def _stop(plane: UpPlane, drain_timeout: float, force: asyncio.Event) -> None:
    """Drain and stop in order; ``force`` (a second signal) cuts the drain short and kills the pods."""
    orderly = asyncio.create_task(plane.stop(drain_timeout))
    forced = asyncio.create_task(force.wait())
    try:
        await asyncio.wait({orderly, forced}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
        if not orderly.done():
            orderly.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await orderly
            await plane.close_runtime(5.0, kill_first=True)


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    _setup_logging(opts.verbose)
    try:
        maps, configs, services = load_inputs(opts)
    except ConfigError as e:
        print(f"zeroscale up: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop

        return uvloop.run(run(opts, maps, configs, services))
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        return asyncio.run(run(opts, maps, configs, services))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
