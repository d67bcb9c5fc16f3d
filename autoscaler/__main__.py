"""`autoscaler` / `python -m autoscaler`: Knative's KPA as a binary; ``cluster`` supplies the backend."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Mapping

from serving.envconfig import env_port
from serving.errors import ConfigError
from serving.logs import setup_logging

from .app import AutoscalerApp, AutoscalerSettings, Backend, load_config_file
from .config import defaults

# The composition layer's module that builds the backend: make_backend(env) -> Backend.
BACKEND_MODULE = "cluster.autoscaler_backend"


def parse_args(argv: list[str], env: Mapping[str, str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="autoscaler", description="zeroscale autoscaler (Knative KPA)")
    p.add_argument("--host", default=env.get("AUTOSCALER_HOST", "0.0.0.0"), help="listen address")
    p.add_argument(
        "--stat-port",
        type=int,
        default=env_port(env, "AUTOSCALER_STAT_PORT", 8080),
        help="activator stat websocket port (env AUTOSCALER_STAT_PORT, default 8080)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=env_port(env, "AUTOSCALER_METRICS_PORT", 9090),
        help="Prometheus port (env AUTOSCALER_METRICS_PORT, default 9090)",
    )
    p.add_argument(
        "--config",
        default=env.get("AUTOSCALER_CONFIG"),
        help="config-autoscaler YAML (a ConfigMap or a mapping; env AUTOSCALER_CONFIG)",
    )
    p.add_argument(
        "--backend",
        choices=["kubernetes"],
        default=env.get("AUTOSCALER_BACKEND", "kubernetes"),
        help="where pods and scales live (env AUTOSCALER_BACKEND); one machine: use `zeroscale up`",
    )
    p.add_argument(
        "--kubeconfig", default=env.get("KUBECONFIG"), help="kubeconfig path (default: in-cluster)"
    )
    return p.parse_args(argv)


async def _run(app: AutoscalerApp, backend: Backend) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await app.start()
    backend_task = loop.create_task(backend.run(app))
    try:
        await stop.wait()
    finally:
        backend_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await backend_task
        await app.stop()


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    setup_logging("autoscaler")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, env)
        config = load_config_file(args.config) if args.config else defaults()
    except ConfigError as e:
        print(f"autoscaler: {e}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(BACKEND_MODULE)
    except ModuleNotFoundError as e:
        if e.name != BACKEND_MODULE:
            raise
        print(
            f"autoscaler: no backend ({BACKEND_MODULE} is not installed); on one machine the autoscaler "
            "runs inside `zeroscale up`",
            file=sys.stderr,
        )
        return 2
    backend_env = dict(env)
    if args.kubeconfig:
        backend_env["KUBECONFIG"] = args.kubeconfig
    backend: Backend = module.make_backend(backend_env, args.backend)
    settings = AutoscalerSettings(host=args.host, stat_port=args.stat_port, metrics_port=args.metrics_port)
    app = AutoscalerApp(
        scaler=backend.scaler,
        pods=backend.pods,
        targets=backend.targets,
        config=config,
        settings=settings,
        probe=getattr(backend, "probe", None),
    )
    asyncio.run(_run(app, backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
