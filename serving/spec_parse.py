"""YAML -> Service: one function per level of the document, each failing with the field's path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .config import DefaultsConfig
from .errors import SpecError
from .spec_fields import (
    FieldError,
    check_keys,
    dns1035_label,
    dns1123_label,
    go_duration_seconds,
    read_int,
    read_list,
    read_mapping,
    read_str,
    read_str_list,
    read_str_map,
)
from .spec_model import (
    API_VERSION,
    AUTOSCALING_ANNOTATIONS,
    AUTOSCALING_PREFIX,
    ROLLOUT_DURATION,
    Container,
    EnvVar,
    RevisionTemplate,
    Service,
    TrafficTarget,
)
from .spec_probe import parse_probe

__all__ = ["load_services", "parse_services"]

# Ports the queue-proxy (and Knative's sidecars) own inside a pod: a user container may not take them.
RESERVED_PORTS = frozenset({8012, 8013, 8022, 8112, 9090, 9091})
# Set by the platform; a Service may not set them itself.
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
# Older camelCase spellings of autoscaling annotations Knative still understands.
_ALIASES = {
    "minScale": "min-scale",
    "maxScale": "max-scale",
    "initialScale": "initial-scale",
    "targetUtilizationPercentage": "target-utilization-percentage",
    "targetBurstCapacity": "target-burst-capacity",
    "panicWindowPercentage": "panic-window-percentage",
    "panicThresholdPercentage": "panic-threshold-percentage",
    "scaleDownDelay": "scale-down-delay",
    "scaleToZeroPodRetentionPeriod": "scale-to-zero-pod-retention-period",
}
_ROLLOUT_ALIAS = "serving.knative.dev/rolloutDuration"
# Read-only metadata a server adds; `kubectl get -o yaml` output carries it, so it is accepted and ignored.
_SERVER_META = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def parse_services(
    text: str, source: str = "<input>", *, base_dir: str | Path = ".", defaults: DefaultsConfig | None = None
) -> list[Service]:
    """Every Service document of a YAML text, in order (empty documents are skipped)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML: {e}") from e
    d = defaults or DefaultsConfig()
    out: list[Service] = []
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        where = f"{source} (document {index})"
        try:
            out.append(_service(doc, where, str(base_dir), d))
        except FieldError as e:
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            name = meta.get("name") if isinstance(meta, dict) else None
            if isinstance(name, str) and name:
                where = f"{source} (document {index}, Service {name})"
            raise SpecError(f"{where}: {e}") from None
    return out


def load_services(path: str | Path, *, defaults: DefaultsConfig | None = None) -> list[Service]:
    """The Services of a file; each runs (locally) in the file's directory."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{p}: cannot read the Service file: {e.strerror or e}") from e
    return parse_services(text, str(p), base_dir=p.resolve().parent, defaults=defaults)


def _service(doc: Any, where: str, base_dir: str, d: DefaultsConfig) -> Service:
    if not isinstance(doc, dict):
        raise FieldError("(document)", f"expected a Service (a mapping), got {type(doc).__name__}")
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind == "ConfigMap":
        raise FieldError(
            "kind",
            "a ConfigMap belongs in the --config file; this file holds serving.knative.dev/v1 Services",
        )
    if kind != "Service":
        raise FieldError("kind", f"{kind!r} is not supported here; expected Service ({API_VERSION})")
    if api != API_VERSION:
        raise FieldError("apiVersion", f"{api!r} is not supported; expected {API_VERSION}")
    check_keys(doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))  # status is ignored
    name, namespace, annotations, labels, rollout = _service_meta(doc.get("metadata"))
    spec = read_mapping(doc.get("spec"), "spec")
    check_keys(spec, "spec", ("template", "traffic"))
    tmpl = read_mapping(spec.get("template"), "spec.template")
    check_keys(tmpl, "spec.template", ("metadata", "spec"))
    t_name, t_annotations, t_labels = _template_meta(tmpl.get("metadata"), name)
    template = _template(
        read_mapping(tmpl.get("spec"), "spec.template.spec"), d, t_name, t_annotations, t_labels
    )
    targets = _traffic(spec.get("traffic"), "spec.traffic")
    return Service(
        name=name,
        namespace=namespace,
        annotations=annotations,
        labels=labels,
        template=template,
        traffic=targets or (TrafficTarget(latest_revision=True, percent=100),),
        traffic_given=bool(targets),
        rollout_duration_seconds=rollout,
        source=where,
        base_dir=base_dir,
    )


def _service_meta(raw: Any) -> tuple[str, str, Mapping[str, str], Mapping[str, str], float | None]:
    meta = read_mapping(raw, "metadata")
    check_keys(meta, "metadata", ("name", "namespace", "annotations", "labels", *_SERVER_META))
    name = dns1035_label(read_str(meta.get("name"), "metadata.name", required=True), "metadata.name")
    namespace = dns1123_label(
        read_str(meta.get("namespace"), "metadata.namespace", default="default") or "default",
        "metadata.namespace",
    )
    annotations = read_str_map(meta.get("annotations"), "metadata.annotations")
    for key in annotations:
        if key.startswith(AUTOSCALING_PREFIX):
            raise FieldError(
                f"metadata.annotations.{key}",
                "autoscaling annotations belong under spec.template.metadata.annotations "
                "(they configure a revision)",
            )
    rollout = None
    for key in (ROLLOUT_DURATION, _ROLLOUT_ALIAS):
        if key in annotations:
            rollout = go_duration_seconds(annotations[key], f"metadata.annotations.{key}")
    labels = read_str_map(meta.get("labels"), "metadata.labels")
    return name, namespace, annotations, labels, rollout


def _template_meta(raw: Any, service: str) -> tuple[str, Mapping[str, str], Mapping[str, str]]:
    path = "spec.template.metadata"
    meta = read_mapping(raw, path)
    check_keys(meta, path, ("name", "annotations", "labels"))
    name = read_str(meta.get("name"), f"{path}.name")
    if name:
        dns1035_label(name, f"{path}.name")
        if not name.startswith(service + "-"):
            raise FieldError(f"{path}.name", f"{name!r} must start with the Service's name: {service}-")
    annotations: dict[str, str] = {}
    for key, value in read_str_map(meta.get("annotations"), f"{path}.annotations").items():
        if key.startswith(AUTOSCALING_PREFIX):
            short = key[len(AUTOSCALING_PREFIX) :]
            short = _ALIASES.get(short, short)
            if short not in AUTOSCALING_ANNOTATIONS:
                raise FieldError(
                    f"{path}.annotations.{key}",
                    f"unknown autoscaling annotation (known: {', '.join(AUTOSCALING_ANNOTATIONS)})",
                )
            key = AUTOSCALING_PREFIX + short
            if key in annotations:
                raise FieldError(
                    f"{path}.annotations.{key}", "is set twice (once in its old camelCase spelling)"
                )
        annotations[key] = value
    labels = read_str_map(meta.get("labels"), f"{path}.labels")
    return name, MappingProxyType(annotations), labels


_TEMPLATE_SPEC_KEYS = (
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
    "containers",
)


def _template(
    spec: dict[str, Any],
    d: DefaultsConfig,
    name: str,
    annotations: Mapping[str, str],
    labels: Mapping[str, str],
) -> RevisionTemplate:
    path = "spec.template.spec"
    check_keys(spec, path, _TEMPLATE_SPEC_KEYS)
    cc = read_int(
        spec.get("containerConcurrency"),
        f"{path}.containerConcurrency",
        default=d.container_concurrency,
        minimum=0,
        maximum=d.container_concurrency_max_limit,
    )
    assert cc is not None
    if cc == 0 and not d.allow_container_concurrency_zero:
        raise FieldError(
            f"{path}.containerConcurrency",
            "0 (unlimited) is not allowed: allow-container-concurrency-zero is false",
        )
    timeout = read_int(
        spec.get("timeoutSeconds"),
        f"{path}.timeoutSeconds",
        default=d.revision_timeout_seconds,
        minimum=0,
        maximum=d.max_revision_timeout_seconds,
    )
    assert timeout is not None
    bound = timeout or d.max_revision_timeout_seconds

    def follower(key: str, default: int) -> int:
        # Knative copies the config-defaults value only when it is non-zero and below the timeout.
        if spec.get(key) is None:
            return default if 0 < default < bound else 0
        value = read_int(spec.get(key), f"{path}.{key}", minimum=0)
        assert value is not None
        if value > bound:
            raise FieldError(
                f"{path}.{key}", f"{value} is out of range: must be between 0 and timeoutSeconds ({bound})"
            )
        return value

    containers = read_list(spec.get("containers"), f"{path}.containers")
    if not containers:
        raise FieldError(f"{path}.containers", "is required: exactly one container")
    if len(containers) > 1:
        raise FieldError(f"{path}.containers[1]", "only one container per revision is supported")
    return RevisionTemplate(
        container=_container(containers[0], f"{path}.containers[0]"),
        name=name,
        annotations=annotations,
        labels=labels,
        container_concurrency=cc,
        timeout_seconds=timeout,
        response_start_timeout_seconds=follower(
            "responseStartTimeoutSeconds", d.revision_response_start_timeout_seconds
        ),
        idle_timeout_seconds=follower("idleTimeoutSeconds", d.revision_idle_timeout_seconds),
    )


_CONTAINER_KEYS = (
    "name",
    "image",
    "command",
    "args",
    "env",
    "ports",
    "readinessProbe",
    "workingDir",
    "resources",
)


def _container(raw: Any, path: str) -> Container:
    obj = read_mapping(raw, path)
    check_keys(obj, path, _CONTAINER_KEYS)
    name = read_str(obj.get("name"), f"{path}.name")
    if name:
        dns1123_label(name, f"{path}.name")
    env: list[EnvVar] = []
    seen: set[str] = set()
    for i, item in enumerate(read_list(obj.get("env"), f"{path}.env")):
        ep = f"{path}.env[{i}]"
        e = read_mapping(item, ep)
        if "valueFrom" in e:
            raise FieldError(f"{ep}.valueFrom", "is not supported; give the value")
        check_keys(e, ep, ("name", "value"))
        env_name = read_str(e.get("name"), f"{ep}.name", required=True)
        if not _ENV_NAME.match(env_name):
            raise FieldError(f"{ep}.name", f"{env_name!r} is not a valid environment variable name")
        if env_name in RESERVED_ENV:
            raise FieldError(f"{ep}.name", f"{env_name} is reserved: the platform sets it")
        if env_name in seen:
            raise FieldError(f"{ep}.name", f"{env_name} is set twice")
        seen.add(env_name)
        env.append(EnvVar(env_name, read_str(e.get("value"), f"{ep}.value")))
    port, port_name = _ports(obj.get("ports"), f"{path}.ports")
    probe = None
    if obj.get("readinessProbe") is not None:
        probe = parse_probe(obj["readinessProbe"], f"{path}.readinessProbe", port, port_name)
    return Container(
        name=name,
        image=read_str(obj.get("image"), f"{path}.image"),
        command=read_str_list(obj.get("command"), f"{path}.command"),
        args=read_str_list(obj.get("args"), f"{path}.args"),
        env=tuple(env),
        container_port=port,
        port_name=port_name,
        readiness_probe=probe,
        working_dir=read_str(obj.get("workingDir"), f"{path}.workingDir"),
        resources=_resources(obj.get("resources"), f"{path}.resources"),
    )


def _ports(raw: Any, path: str) -> tuple[int | None, str]:
    ports = read_list(raw, path)
    if not ports:
        return None, ""
    if len(ports) > 1:
        raise FieldError(f"{path}[1]", "only one port is allowed: the one the container serves HTTP on")
    pp = f"{path}[0]"
    p = read_mapping(ports[0], pp)
    check_keys(p, pp, ("containerPort", "name", "protocol"))
    number = p.get("containerPort")
    if number is None:
        raise FieldError(f"{pp}.containerPort", "is required")
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
        raise FieldError(f"{pp}.containerPort", f"{number!r} is not a port (1-65535)")
    if number in RESERVED_PORTS:
        raise FieldError(
            f"{pp}.containerPort",
            f"{number} is reserved for the queue-proxy ({', '.join(map(str, sorted(RESERVED_PORTS)))})",
        )
    name = read_str(p.get("name"), f"{pp}.name")
    if name not in ("", "http1", "h2c"):
        raise FieldError(f"{pp}.name", f"{name!r} must be http1 or h2c (or left out for HTTP/1.1)")
    protocol = read_str(p.get("protocol"), f"{pp}.protocol", default="TCP")
    if protocol != "TCP":
        raise FieldError(f"{pp}.protocol", f"{protocol!r} is not supported; only TCP")
    return number, name


def _resources(raw: Any, path: str) -> Mapping[str, Mapping[str, str]]:
    obj = read_mapping(raw, path)
    check_keys(obj, path, ("limits", "requests"))
    out: dict[str, Mapping[str, str]] = {}
    for section, values in obj.items():
        sp = f"{path}.{section}"
        quantities: dict[str, str] = {}
        for key, value in read_mapping(values, sp).items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise FieldError(f"{sp}.{key}", f"expected a quantity such as 500m or 128Mi, got {value!r}")
            quantities[str(key)] = str(value)
        out[section] = MappingProxyType(quantities)
    return MappingProxyType(out)


def _traffic(raw: Any, path: str) -> tuple[TrafficTarget, ...]:
    items = read_list(raw, path)
    targets: list[TrafficTarget] = []
    tags: set[str] = set()
    for i, item in enumerate(items):
        tp = f"{path}[{i}]"
        t = read_mapping(item, tp)
        if "configurationName" in t:
            raise FieldError(
                f"{tp}.configurationName", "is not allowed in a Service; use latestRevision: true"
            )
        check_keys(t, tp, ("revisionName", "latestRevision", "percent", "tag"))
        revision = read_str(t.get("revisionName"), f"{tp}.revisionName") or None
        latest = t.get("latestRevision")
        if latest is not None and not isinstance(latest, bool):
            raise FieldError(f"{tp}.latestRevision", f"expected true or false, got {latest!r}")
        if latest is None:
            latest = revision is None  # Knative's default: a target without a revision follows the latest
        if latest and revision:
            raise FieldError(f"{tp}.revisionName", "may not be set together with latestRevision: true")
        if not latest and not revision:
            raise FieldError(f"{tp}.revisionName", "is required when latestRevision is false")
        if revision:
            dns1035_label(revision, f"{tp}.revisionName")
        percent = read_int(t.get("percent"), f"{tp}.percent", minimum=0, maximum=100)
        tag = read_str(t.get("tag"), f"{tp}.tag") or None
        if tag:
            dns1035_label(tag, f"{tp}.tag")
            if tag in tags:
                raise FieldError(f"{tp}.tag", f"{tag!r} is used by more than one target")
            tags.add(tag)
        targets.append(
            TrafficTarget(revision_name=revision, latest_revision=latest, percent=percent, tag=tag)
        )
    total = sum(t.percent or 0 for t in targets)
    if targets and total != 100:
        raise FieldError(path, f"the targets' percent values sum to {total}; they must sum to 100")
    return tuple(targets)
