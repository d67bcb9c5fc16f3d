"""`zeroscale render`: Kubernetes manifests for Knative Service files, printed as one YAML stream.

    zeroscale render -f service.yaml [-f more.yaml] [--config config.yaml] [--namespace NS]
                     [--image-prefix P] [--tag T] | kubectl apply -f -

Everything goes into one namespace (the Roles are namespaced): the gateway/activator and the
autoscaler with their ServiceAccounts, Roles and RoleBindings, the ConfigMaps (routes, and Knative's
config-* maps), and per revision a Deployment (user container + queue-proxy) and a Service.
Images are ``{prefix}{queue-proxy|activator|autoscaler}:{tag}`` (see docker/Dockerfile).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from autoscaler.config import from_mapping as autoscaler_config
from autoscaler.config import resolve
from cluster.k8s_manifests import (
    RevisionPlan,
    dump_json,
    revision_deployment_manifest,
    revision_record,
    revision_service_manifest,
)
from cluster.k8s_system import configmap, routes_configmap, system_manifests
from serving.config import CONFIG_AUTOSCALER, DefaultsConfig, DomainConfig, load_configmaps
from serving.errors import ConfigError
from serving.spec import RevisionHistory, Service, load_services

__all__ = ["DEFAULT_IMAGE_PREFIX", "build", "main"]

DEFAULT_IMAGE_PREFIX = "zeroscale/"


def _version() -> str:
    try:
        return importlib.metadata.version("zeroscale")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def _namespace(services: Sequence[Service], given: str | None) -> str:
    if given:
        return given
    spaces = sorted({s.namespace for s in services})
    if len(spaces) > 1:
        raise ConfigError(
            f"the Services are in several namespaces ({', '.join(spaces)}); render puts everything in one: "
            "pass --namespace NS"
        )
    return spaces[0] if spaces else "default"


def build(
    services: Sequence[Service],
    configmaps: Mapping[str, Mapping[str, str]],
    *,
    namespace: str | None = None,
    image_prefix: str = DEFAULT_IMAGE_PREFIX,
    tag: str | None = None,
) -> list[dict[str, Any]]:
    """Every manifest, in apply order: RBAC and components, ConfigMaps, then revisions."""
    ns = _namespace(services, namespace)
    version = tag or _version()
    as_data = dict(configmaps.get(CONFIG_AUTOSCALER, {}))
    as_cfg = autoscaler_config(as_data)
    history = RevisionHistory()
    plans: list[RevisionPlan] = []
    normalized: list[dict[str, Any]] = []
    for svc in services:
        svc = dataclasses.replace(svc, namespace=ns)
        revision, _ = history.admit(svc)
        tmpl = svc.template
        try:
            scaling = resolve(as_cfg, tmpl.annotations, tmpl.container_concurrency)
        except ConfigError as e:
            raise ConfigError(
                f"{svc.source}, Service {svc.name}: spec.template.metadata.annotations: {e}"
            ) from None
        plans.append(
            RevisionPlan(
                revision.name, ns, svc, scaling.initial_scale, f"{image_prefix}queue-proxy:{version}"
            )
        )
        doc = svc.to_k8s()
        # pin the revision name so that every reader of the routes derives the same one
        doc["spec"]["template"].setdefault("metadata", {})["name"] = revision.name
        normalized.append(doc)
    known = {p.name for p in plans}
    for svc in services:
        for t in svc.traffic:
            if t.revision_name and t.revision_name not in known:
                print(
                    f"zeroscale render: warning: {svc.source}, Service {svc.name}: spec.traffic names "
                    f"revision {t.revision_name!r}, which this render does not create; it must already run "
                    f"in {ns}",
                    file=sys.stderr,
                )
    defaults = DefaultsConfig.from_mapping(configmaps.get("config-defaults", {}))
    domain = (
        DomainConfig.from_mapping(configmaps["config-domain"]).domain
        if "config-domain" in configmaps
        else None
    )
    docs = system_manifests(
        ns,
        image_prefix,
        version,
        max_revision_timeout_seconds=defaults.max_revision_timeout_seconds,
        domain=domain,
    )
    docs.append(
        routes_configmap(
            ns,
            yaml.safe_dump_all(normalized, sort_keys=False),
            dump_json([revision_record(p) for p in plans]),
        )
    )
    docs.append(configmap(CONFIG_AUTOSCALER, ns, as_data))
    for name in sorted(configmaps):
        if name != CONFIG_AUTOSCALER:
            docs.append(configmap(name, ns, dict(configmaps[name])))
    for plan in plans:
        docs.append(revision_deployment_manifest(plan))
        docs.append(revision_service_manifest(plan))
    return docs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zeroscale render", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="a file of Knative Services (serving.knative.dev/v1); repeatable",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="ConfigMaps: config-autoscaler, config-defaults, config-network, config-domain",
    )
    p.add_argument("--namespace", metavar="NS", help="namespace of everything (default: the Services')")
    p.add_argument(
        "--image-prefix",
        default=DEFAULT_IMAGE_PREFIX,
        metavar="P",
        help=f"images are P + queue-proxy|activator|autoscaler (default {DEFAULT_IMAGE_PREFIX!r})",
    )
    p.add_argument("--tag", metavar="T", help="image tag (default: the zeroscale version)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        maps = load_configmaps(args.config) if args.config else {}
        defaults = DefaultsConfig.from_mapping(maps.get("config-defaults", {}))
        services: list[Service] = []
        for path in args.filename:
            services += load_services(path, defaults=defaults)
        if not services:
            raise ConfigError(f"no Service in {', '.join(args.filename)}")
        docs = build(services, maps, namespace=args.namespace, image_prefix=args.image_prefix, tag=args.tag)
    except ConfigError as e:  # SpecError is a ConfigError
        print(f"zeroscale render: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
