"""The user container's readiness probe: parsing, Knative's defaults, and the SERVING_READINESS_PROBE JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from .spec_fields import (
    FieldError,
    check_keys,
    read_int,
    read_list,
    read_mapping,
    read_str,
)

__all__ = ["HTTPGetAction", "Probe", "TCPSocketAction", "encode_readiness_probe", "parse_probe"]

LOCAL_ADDRESS = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class HTTPGetAction:
    path: str = "/"
    port: int | str | None = None  # None: the container port (a name is resolved against it)
    host: str = ""
    scheme: str = "HTTP"
    http_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TCPSocketAction:
    port: int | str | None = None
    host: str = ""


@dataclass(frozen=True, slots=True)
class Probe:
    """A Kubernetes probe reduced to what a readiness check of the user container uses.

    ``period_seconds == 0`` is Knative's aggressive mode: the queue-proxy retries every 50 ms.
    Zero in ``timeout_seconds``/``failure_threshold`` means unset (Kubernetes' omitempty).
    """

    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    initial_delay_seconds: int = 0
    timeout_seconds: int = 0
    period_seconds: int = 0
    success_threshold: int = 0
    failure_threshold: int = 0

    def with_defaults(self) -> Probe:
        """Knative's revision defaults: a TCP probe when no handler is given, successThreshold 1,
        and Kubernetes' failureThreshold 3 / timeoutSeconds 1 once periodSeconds is set."""
        p = self
        if p.http_get is None and p.tcp_socket is None:
            p = replace(p, tcp_socket=TCPSocketAction())
        if p.success_threshold == 0:
            p = replace(p, success_threshold=1)
        if p.period_seconds > 0:
            if p.failure_threshold == 0:
                p = replace(p, failure_threshold=3)
            if p.timeout_seconds == 0:
                p = replace(p, timeout_seconds=1)
        return p

    def to_k8s(self) -> dict[str, Any]:
        """The probe as Kubernetes' JSON/YAML (camelCase keys, zero values left out)."""
        out: dict[str, Any] = {}
        if self.http_get is not None:
            g = self.http_get
            hg: dict[str, Any] = {"path": g.path}
            if g.port is not None:
                hg["port"] = g.port
            if g.host:
                hg["host"] = g.host
            if g.scheme:
                hg["scheme"] = g.scheme
            if g.http_headers:
                hg["httpHeaders"] = [{"name": n, "value": v} for n, v in g.http_headers]
            out["httpGet"] = hg
        if self.tcp_socket is not None:
            t = self.tcp_socket
            ts: dict[str, Any] = {}
            if t.port is not None:
                ts["port"] = t.port
            if t.host:
                ts["host"] = t.host
            out["tcpSocket"] = ts
        for key, value in (
            ("initialDelaySeconds", self.initial_delay_seconds),
            ("timeoutSeconds", self.timeout_seconds),
            ("periodSeconds", self.period_seconds),
            ("successThreshold", self.success_threshold),
            ("failureThreshold", self.failure_threshold),
        ):
            if value:
                out[key] = value
        return out


def encode_readiness_probe(probe: Probe | None, user_port: int) -> str:
    """The JSON the queue-proxy reads from SERVING_READINESS_PROBE.

    As Knative's reconciler does: defaults applied, the probe aimed at 127.0.0.1 and at the user
    port actually in use (locally a free port, not the YAML's containerPort), scheme HTTP when unset.
    """
    p = (probe or Probe()).with_defaults()
    if p.http_get is not None:
        p = replace(
            p,
            http_get=replace(
                p.http_get, host=LOCAL_ADDRESS, port=user_port, scheme=p.http_get.scheme or "HTTP"
            ),
        )
    if p.tcp_socket is not None:
        p = replace(p, tcp_socket=TCPSocketAction(port=user_port, host=LOCAL_ADDRESS))
    return json.dumps(p.to_k8s(), separators=(",", ":"))


_PROBE_KEYS = (
    "httpGet",
    "tcpSocket",
    "initialDelaySeconds",
    "timeoutSeconds",
    "periodSeconds",
    "successThreshold",
    "failureThreshold",
)


def _port(value: Any, path: str, container_port: int | None, port_name: str) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value != port_name or not port_name:
            raise FieldError(path, f"{value!r} does not name the container's port")
        return value
    number = read_int(value, path, minimum=1, maximum=65535)
    if container_port is not None and number != container_port:
        raise FieldError(
            path,
            f"{number} is not the container port ({container_port}); a readiness probe may only "
            "check the port the container serves on (leave it out to use that port)",
        )
    return number


def parse_probe(raw: Any, path: str, container_port: int | None, port_name: str) -> Probe:
    obj = read_mapping(raw, path)
    if "exec" in obj or "grpc" in obj:
        which = "exec" if "exec" in obj else "grpc"
        raise FieldError(f"{path}.{which}", "is not supported; use httpGet or tcpSocket")
    check_keys(obj, path, _PROBE_KEYS)
    http_get = tcp = None
    if "httpGet" in obj and "tcpSocket" in obj:
        raise FieldError(path, "set one of httpGet or tcpSocket, not both")
    if "httpGet" in obj:
        gp = f"{path}.httpGet"
        g = read_mapping(obj["httpGet"], gp)
        check_keys(g, gp, ("path", "port", "host", "scheme", "httpHeaders"))
        headers = []
        for i, h in enumerate(read_list(g.get("httpHeaders"), f"{gp}.httpHeaders")):
            hp = f"{gp}.httpHeaders[{i}]"
            hm = read_mapping(h, hp)
            check_keys(hm, hp, ("name", "value"))
            headers.append(
                (
                    read_str(hm.get("name"), f"{hp}.name", required=True),
                    read_str(hm.get("value"), f"{hp}.value"),
                )
            )
        scheme = read_str(g.get("scheme"), f"{gp}.scheme", default="HTTP")
        if scheme not in ("HTTP", "HTTPS"):
            raise FieldError(f"{gp}.scheme", f"{scheme!r} must be HTTP or HTTPS")
        probe_path = read_str(g.get("path"), f"{gp}.path", default="/") or "/"
        if not probe_path.startswith("/"):
            raise FieldError(f"{gp}.path", f"{probe_path!r} must start with /")
        http_get = HTTPGetAction(
            path=probe_path,
            port=_port(g.get("port"), f"{gp}.port", container_port, port_name),
            host=read_str(g.get("host"), f"{gp}.host"),
            scheme=scheme,
            http_headers=tuple(headers),
        )
    if "tcpSocket" in obj:
        tp = f"{path}.tcpSocket"
        t = read_mapping(obj["tcpSocket"], tp)
        check_keys(t, tp, ("port", "host"))
        tcp = TCPSocketAction(
            port=_port(t.get("port"), f"{tp}.port", container_port, port_name),
            host=read_str(t.get("host"), f"{tp}.host"),
        )

    def num(key: str, minimum: int) -> int:
        return read_int(obj.get(key), f"{path}.{key}", default=0, minimum=minimum) or 0

    probe = Probe(
        http_get=http_get,
        tcp_socket=tcp,
        initial_delay_seconds=num("initialDelaySeconds", 0),
        timeout_seconds=num("timeoutSeconds", 0),
        period_seconds=num("periodSeconds", 0),
        success_threshold=num("successThreshold", 1) if "successThreshold" in obj else 0,
        failure_threshold=num("failureThreshold", 0),
    )
    if probe.period_seconds == 0:
        # Aggressive probing (every 50 ms for up to 10 s) has no per-attempt timeout or failure count.
        for key, value in (
            ("timeoutSeconds", probe.timeout_seconds),
            ("failureThreshold", probe.failure_threshold),
        ):
            if value:
                raise FieldError(
                    f"{path}.{key}",
                    "is only allowed with periodSeconds > 0 (periodSeconds 0, the default, probes "
                    "every 50 ms until ready)",
                )
    return probe
