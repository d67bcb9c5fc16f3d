"""The gateway with the activator taken out of the path: ``python -m benchmarks.gateway_direct``.

What the autoscaler does to a revision with enough pods (Knative's "serve" mode): the gateway sends
requests straight to a healthy pod. The activator binary only does that when an autoscaler says so;
this runner builds the same :class:`cluster.gateway_app.GatewayApp` from a routes file and flips every
revision to direct, so the benchmark can measure that path without an autoscaler.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from cluster.gateway_app import FileBackend, GatewayApp
from routing.table import TableHolder


async def _main(config: str, port: int) -> None:
    backend = FileBackend(config)
    app = GatewayApp(TableHolder(), backend.endpoints, lambda _stats: None)
    await backend.load(app)
    for key in app.activator.revisions():
        app.set_activator_in_path(key, False)
    await app.start("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await app.shutdown(1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="routes file (cluster.gateway_app's file backend)")
    p.add_argument("--port", type=int, required=True, help="listen port on 127.0.0.1")
    args = p.parse_args()
    import uvloop

    uvloop.run(_main(args.config, args.port))


if __name__ == "__main__":
    main()
