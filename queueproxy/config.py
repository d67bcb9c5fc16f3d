"""The queue-proxy's settings, read once from Knative's environment contract into frozen dataclasses.

Names and defaults follow Knative's queue-proxy (serving port 8012, user port 8080, container
concurrency 0 = no limit, revision timeout 300 s, response-start and idle timeouts 0 = off). The ports
Knative hard-codes (admin 8022, autoscaler metrics 9090, user metrics 9091) and the drain quiet period
(30 s) can be set too, because many pods share one machine in the local mode. A malformed value
raises ConfigError naming the variable, and start-up stops with that message.

Which protocol the queue-proxy speaks to the user container (its serving port accepts HTTP/1.1 and h2c
from clients either way): Knative gives a revision whose container port is named ``h2c`` the serving
port 8013 (``QUEUE_SERVING_PORT=8013``), so 8013 means cleartext HTTP/2 toward the app and any other
port HTTP/1.1. Where ports are picked at random (the local mode), the zeroscale variable
``QUEUE_USER_PROTOCOL`` (``h2c`` or ``http1``) says it outright and wins over the port number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.envconfig import env_bool, env_float, env_int, env_port, env_str
from serving.errors import ConfigError

__all__ = ["PROTOCOL_VAR", "ProbeSpec", "QueueProxyConfig", "parse_readiness_probe", "protocol_from_env"]

PROBE_VAR = "SERVING_READINESS_PROBE"
FAST_PATH_VAR = "ZEROSCALE_FAST_PATH"  # zeroscale extension: false = a handler task per request
NATIVE_VAR = "ZEROSCALE_NATIVE"  # zeroscale extension: false = the request path as plain Python
PROTOCOL_VAR = "QUEUE_USER_PROTOCOL"  # zeroscale extension: "h2c" | "http1"; unset: from the port
H2C_SERVING_PORT = 8013  # Knative's queue-proxy port for revisions whose container port is named h2c
USER_PROTOCOLS = ("http1", "h2c")


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One readiness probe of the user container, after Knative's defaulting.

    ``period_seconds == 0`` is Knative's *aggressive* mode: retry every 50 ms until first ready.
    """

    kind: str  # "tcp" | "http"
    host: str = "127.0.0.1"
    port: int = 0  # 0: the user port
    path: str = "/"
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    period_seconds: float = 0.0
    timeout_seconds: float = 0.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @property
    def aggressive(self) -> bool:
        return self.period_seconds == 0


@dataclass(frozen=True, slots=True)
class QueueProxyConfig:
    serving_port: int = 8012
    user_port: int = 8080
    container_concurrency: int = 0
    revision_timeout: float = 300.0
    response_start_timeout: float = 0.0
    idle_timeout: float = 0.0
    namespace: str = ""
    configuration: str = ""
    revision: str = ""
    service: str = ""
    pod: str = ""
    pod_ip: str = ""
    readiness_probes: tuple[ProbeSpec, ...] = field(default=(ProbeSpec("tcp"),))
    admin_port: int = 8022
    metrics_port: int = 9090
    user_metrics_port: int = 9091
    drain_quiet_period: float = 30.0
    # zeroscale extension: where the four listeners bind. Knative binds every interface (0.0.0.0);
    # the local mode and the tests use 127.0.0.1.
    bind_address: str = "0.0.0.0"
    # how the queue-proxy talks to the user container: "http1" or "h2c" (cleartext HTTP/2, gRPC)
    user_protocol: str = "http1"
    # zeroscale extension (ZEROSCALE_FAST_PATH): the engine's callback-only path for simple GETs;
    # false sends every request through a handler task
    fast_path: bool = True
    # ZEROSCALE_NATIVE: serving.native reads it at import (false: the request path runs as plain Python
    # even where a compiled build is current); read here too, so that a typo stops start-up.
    native: bool = True

    @property
    def h2c(self) -> bool:
        return self.user_protocol == "h2c"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QueueProxyConfig:
        user_port = env_int(env, "USER_PORT", 8080, minimum=1, maximum=65535)
        serving_port = env_port(env, "QUEUE_SERVING_PORT", 8012)
        raw_probe = env.get(PROBE_VAR, "")
        probes = parse_readiness_probe(raw_probe) if raw_probe.strip() else (ProbeSpec("tcp"),)
        cfg = cls(
            serving_port=serving_port,
            user_port=user_port,
            container_concurrency=env_int(env, "CONTAINER_CONCURRENCY", 0, minimum=0, maximum=1000),
            revision_timeout=env_float(env, "REVISION_TIMEOUT_SECONDS", 300.0, minimum=0.0),
            response_start_timeout=env_float(
                env, "REVISION_RESPONSE_START_TIMEOUT_SECONDS", 0.0, minimum=0.0
            ),
            idle_timeout=env_float(env, "REVISION_IDLE_TIMEOUT_SECONDS", 0.0, minimum=0.0),
            namespace=env_str(env, "SERVING_NAMESPACE", ""),
            configuration=env_str(env, "SERVING_CONFIGURATION", ""),
            revision=env_str(env, "SERVING_REVISION", ""),
            service=env_str(env, "SERVING_SERVICE", ""),
            pod=env_str(env, "SERVING_POD", ""),
            pod_ip=env_str(env, "SERVING_POD_IP", ""),
            readiness_probes=probes,
            admin_port=env_port(env, "QUEUE_ADMIN_PORT", 8022),
            metrics_port=env_port(env, "QUEUE_METRICS_PORT", 9090),
            user_metrics_port=env_port(env, "USER_METRICS_PORT", 9091),
            drain_quiet_period=env_float(env, "QUEUE_DRAIN_QUIET_PERIOD_SECONDS", 30.0, minimum=0.0),
            bind_address=env_str(env, "QUEUE_BIND_ADDRESS", "0.0.0.0"),
            user_protocol=protocol_from_env(env, serving_port),
            fast_path=env_bool(env, FAST_PATH_VAR, True),
            native=env_bool(env, NATIVE_VAR, True),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        ports = {
            "QUEUE_SERVING_PORT": self.serving_port,
            "QUEUE_ADMIN_PORT": self.admin_port,
            "QUEUE_METRICS_PORT": self.metrics_port,
            "USER_METRICS_PORT": self.user_metrics_port,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port == 0:
                continue  # 0 asks the OS for a free port
            if port in seen:
                raise ConfigError(f"{name}={port} is already used by {seen[port]}: each port must differ")
            seen[port] = name
        if self.user_protocol not in USER_PROTOCOLS:
            raise ConfigError(f"{PROTOCOL_VAR}={self.user_protocol!r}: expected http1 or h2c")
        if self.serving_port == self.user_port:
            raise ConfigError(
                f"QUEUE_SERVING_PORT={self.serving_port} equals USER_PORT: the proxy would call itself"
            )

    @property
    def max_concurrency(self) -> int | None:
        return self.container_concurrency or None


def protocol_from_env(env: Mapping[str, str], serving_port: int) -> str:
    """``QUEUE_USER_PROTOCOL`` when set, else Knative's rule: serving port 8013 means h2c."""
    raw = env.get(PROTOCOL_VAR, "").strip()
    if not raw:
        return "h2c" if serving_port == H2C_SERVING_PORT else "http1"
    value = raw.lower()
    if value not in USER_PROTOCOLS:
        raise ConfigError(f"{PROTOCOL_VAR}={raw!r}: expected http1 or h2c (or unset: h2c iff port 8013)")
    return value


# -- SERVING_READINESS_PROBE -----------------------------------------------------------------------
# Knative writes the user container's corev1.Probe as JSON (or a JSON array of them when
# multi-container probing is on), already rewritten to address 127.0.0.1 and the user port.


def parse_readiness_probe(raw: str) -> tuple[ProbeSpec, ...]:
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{PROBE_VAR} is not valid JSON: {e.msg} at position {e.pos}") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise ConfigError(f"{PROBE_VAR} is an empty list: expected a probe object or a list of them")
    return tuple(
        _probe(item, f"{PROBE_VAR}[{i}]" if isinstance(doc, list) else PROBE_VAR)
        for i, item in enumerate(items)
    )


def _probe(obj: Any, where: str) -> ProbeSpec:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(obj).__name__}")
    period = _number(obj, "periodSeconds", where, 0.0)
    timeout = _number(obj, "timeoutSeconds", where, 0.0)
    if period > 0 and timeout < 1:
        timeout = 1.0  # Knative: a periodic probe gets at least a one-second attempt
    common: dict[str, Any] = {
        "period_seconds": period,
        "timeout_seconds": timeout,
        "success_threshold": max(1, int(_number(obj, "successThreshold", where, 1))),
        "failure_threshold": max(1, int(_number(obj, "failureThreshold", where, 3))),
    }
    if "httpGet" in obj:
        hg = obj["httpGet"]
        if not isinstance(hg, dict):
            raise ConfigError(f"{where}.httpGet must be an object")
        scheme = str(hg.get("scheme") or "HTTP").lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"{where}.httpGet.scheme={hg.get('scheme')!r}: expected HTTP or HTTPS")
        path = str(hg.get("path") or "/")
        if not path.startswith("/"):
            path = "/" + path
        headers = []
        for j, h in enumerate(hg.get("httpHeaders") or []):
            if not isinstance(h, dict) or not isinstance(h.get("name"), str) or not h["name"]:
                raise ConfigError(f"{where}.httpGet.httpHeaders[{j}] needs a non-empty string 'name'")
            headers.append((h["name"], str(h.get("value", ""))))
        return ProbeSpec(
            "http",
            host=str(hg.get("host") or "127.0.0.1"),
            port=_port(hg.get("port"), f"{where}.httpGet.port"),
            path=path,
            scheme=scheme,
            headers=tuple(headers),
            **common,
        )
    if "tcpSocket" in obj:
        ts = obj["tcpSocket"]
        if not isinstance(ts, dict):
            raise ConfigError(f"{where}.tcpSocket must be an object")
        return ProbeSpec(
            "tcp",
            host=str(ts.get("host") or "127.0.0.1"),
            port=_port(ts.get("port"), f"{where}.tcpSocket.port"),
            **common,
        )
    if "exec" in obj or "grpc" in obj:
        # Knative turns exec probes into TCP probes on the user port; gRPC health checking is not
        # implemented here, so it is approximated the same way (the port accepts connections).
        return ProbeSpec("tcp", **common)
    raise ConfigError(f"{where} has no httpGet, tcpSocket, exec or grpc handler")


def _number(obj: dict[str, Any], key: str, where: str, default: float) -> float:
    v = obj.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise ConfigError(f"{where}.{key}={v!r}: expected a number >= 0")
    return float(v)


def _port(v: Any, where: str) -> int:
    if v is None or v == "" or v == 0:
        return 0  # the user port
    if isinstance(v, str):
        if not v.isdigit():
            return 0  # a named port: Knative points probes at the user port
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ConfigError(f"{where}={v!r}: expected a port number between 1 and 65535")
    return v
