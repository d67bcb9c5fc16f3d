"""The data-plane paths the benchmark compares, each started in front of the same trivial app.

A path is a context manager yielding a :class:`Target`: where to send load (port and Host header)
and which processes are the data plane (whose CPU and memory are measured; the app never is). A path
whose parts are missing (nginx not installed, a component not landed yet) raises :class:`Unavailable`
with the reason, and the benchmark skips it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .harness import PYTHON, ROOT, Procs, free_port, tree, wait_http, wait_port

__all__ = ["PATHS", "Target", "Unavailable", "start_upstream"]

UPSTREAM = str(ROOT / "benchmarks" / "upstream.py")
GATEWAY_HOST = "bench.default.example.com"
QUIET = {"SERVING_LOGGING_LEVEL": "warning", "ZEROSCALE_LOG_LEVEL": "warning"}


class Unavailable(Exception):
    """The path cannot run on this machine or in this checkout; the message says why."""


@dataclass
class Target:
    name: str
    port: int
    host: str = "bench"
    pids: Callable[[], list[int]] = field(default=lambda: [])
    note: str = ""


def start_upstream(procs: Procs, name: str = "upstream", startup_ms: int = 0) -> tuple[int, int]:
    port = free_port()
    args = [PYTHON, UPSTREAM, "--port", str(port)]
    if startup_ms:
        args += ["--startup-ms", str(startup_ms)]
    p = procs.start(args, name)
    wait_port(port, p)
    return port, p.pid


@contextlib.contextmanager
def direct(procs: Procs, up_port: int, tmp: Path) -> Iterator[Target]:
    yield Target("direct", up_port, note="the app alone: no data plane")


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  upstream app {{ server 127.0.0.1:{up}; keepalive 1000; }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 100000000;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


@contextlib.contextmanager
def nginx(procs: Procs, up_port: int, tmp: Path) -> Iterator[Target]:
    exe = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if exe is None:
        raise Unavailable("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, up=up_port, port=port))
    p = procs.start([exe, "-p", str(tmp), "-c", str(conf)], "nginx")
    wait_port(port, p)
    yield Target("nginx", port, pids=lambda: [p.pid], note="one worker, keep-alive upstream pool")


def _request_path(plain: bool) -> str:
    """Which request path a queue-proxy started now runs (serving.native)."""
    from serving import native

    why = "ZEROSCALE_NATIVE is off" if plain else native.check(native.native_dir())
    return "compiled (mypyc)" if why is None else f"plain Python: {why}"


@contextlib.contextmanager
def queue_proxy(procs: Procs, up_port: int, tmp: Path, plain: bool = False) -> Iterator[Target]:
    port = free_port()
    env = {
        **QUIET,
        "QUEUE_BIND_ADDRESS": "127.0.0.1",
        "QUEUE_SERVING_PORT": str(port),
        "USER_PORT": str(up_port),
        "QUEUE_ADMIN_PORT": str(free_port()),
        "QUEUE_METRICS_PORT": str(free_port()),
        "USER_METRICS_PORT": str(free_port()),
        "CONTAINER_CONCURRENCY": "0",
        "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0",
    }
    if plain:
        env["ZEROSCALE_NATIVE"] = "false"
    name = "queue-proxy-plain" if plain else "queue-proxy"
    p = procs.start([PYTHON, "-m", "queueproxy"], name, env)
    wait_port(port, p)
    note = f"CONTAINER_CONCURRENCY=0; {_request_path(plain)}"
    yield Target(name, port, pids=lambda: [p.pid], note=note)


def queue_proxy_plain(procs: Procs, up_port: int, tmp: Path) -> contextlib.AbstractContextManager[Target]:
    """The same queue-proxy with ZEROSCALE_NATIVE=false: what the compiled request path buys."""
    return queue_proxy(procs, up_port, tmp, plain=True)


def _routes(up_port: int) -> str:
    return textwrap.dedent(
        f"""\
        domain: example.com
        services:
          - {{name: bench, namespace: default, latestRevision: bench-00001}}
        revisions:
          - name: bench-00001
            namespace: default
            containerConcurrency: 0
            endpoints: [{{pod: bench-pod, host: 127.0.0.1, port: {up_port}}}]
        """
    )


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"{module} is not in this checkout yet")


@contextlib.contextmanager
def gateway_activator(procs: Procs, up_port: int, tmp: Path) -> Iterator[Target]:
    _need("cluster.gateway_app")
    routes = tmp / "routes.yaml"
    routes.write_text(_routes(up_port))
    port, admin = free_port(), free_port()
    env = {**QUIET, "AUTOSCALER_URL": ""}
    args = [PYTHON, "-m", "activator", "--backend", "file", "--config", str(routes)]
    p = procs.start([*args, "--port", str(port), "--admin-port", str(admin)], "gateway-activator", env)
    wait_http(port, "/", GATEWAY_HOST, 60, [p])
    yield Target(
        "gateway+activator", port, GATEWAY_HOST, lambda: [p.pid], "python -m activator: routing + activator"
    )


@contextlib.contextmanager
def gateway_direct(procs: Procs, up_port: int, tmp: Path) -> Iterator[Target]:
    _need("cluster.gateway_app")
    routes = tmp / "routes-direct.yaml"
    routes.write_text(_routes(up_port))
    port = free_port()
    args = [PYTHON, "-m", "benchmarks.gateway_direct", "--config", str(routes), "--port", str(port)]
    p = procs.start(args, "gateway-direct", dict(QUIET))
    wait_http(port, "/", GATEWAY_HOST, 60, [p])
    yield Target(
        "gateway->pods", port, GATEWAY_HOST, lambda: [p.pid], "activator out of the path (serve mode)"
    )


SERVICE = """\
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: bench
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/target-burst-capacity: "0"
    spec:
      containers:
        - command: [python3, {upstream}]
"""


def _is_app(p: psutil.Process) -> bool:
    return any("benchmarks/upstream.py" in part for part in p.cmdline())


@contextlib.contextmanager
def full_local(procs: Procs, up_port: int, tmp: Path) -> Iterator[Target]:
    _need("cluster.up")
    _need("cluster.gateway_app")
    svc = tmp / "service.yaml"
    svc.write_text(SERVICE.format(upstream=UPSTREAM))
    port, admin = free_port(), free_port()
    args = [PYTHON, "-m", "cluster", "up", "-f", str(svc), "--port", str(port), "--admin-port", str(admin)]
    p = procs.start([*args, "--drain-timeout", "1"], "zeroscale-up", dict(QUIET))
    try:
        wait_http(port, "/", GATEWAY_HOST, 90, [p])
    except RuntimeError as e:
        raise Unavailable(f"zeroscale up did not serve: {e}") from e
    yield Target(
        "full local (zeroscale up)",
        port,
        GATEWAY_HOST,
        lambda: tree(p.pid, exclude=_is_app),
        "gateway + queue-proxy + app (min-scale 1, target-burst-capacity 0); app CPU excluded",
    )
    procs.stop(p, timeout=15)


PATHS: dict[str, Callable[[Procs, int, Path], contextlib.AbstractContextManager[Target]]] = {
    "direct": direct,
    "nginx": nginx,
    "queue-proxy": queue_proxy,
    "queue-proxy-plain": queue_proxy_plain,
    "gateway+activator": gateway_activator,
    "gateway->pods": gateway_direct,
    "full": full_local,
}
