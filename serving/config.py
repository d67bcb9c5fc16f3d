"""config-defaults, config-network, config-domain ConfigMap data -> frozen dataclasses; a ConfigMap loader.

Each config follows Knative's pattern: ``defaults()`` -> ``from_mapping(data)`` -> ``validate()``, a pure
function of a string map whose errors name the key, the value and what was expected. The
``config-autoscaler`` data map is not parsed here: :func:`load_configmaps` hands it over raw to the
autoscaler's own parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = [
    "CONFIG_AUTOSCALER",
    "CONFIG_DEFAULTS",
    "CONFIG_DOMAIN",
    "CONFIG_NETWORK",
    "Configs",
    "DefaultsConfig",
    "DomainConfig",
    "NetworkConfig",
    "load_configmaps",
    "parse_configmaps",
    "parse_configs",
]

CONFIG_AUTOSCALER = "config-autoscaler"
CONFIG_DEFAULTS = "config-defaults"
CONFIG_NETWORK = "config-network"
CONFIG_DOMAIN = "config-domain"
KNOWN_CONFIGMAPS = (CONFIG_AUTOSCALER, CONFIG_DEFAULTS, CONFIG_NETWORK, CONFIG_DOMAIN)

# Knative ConfigMaps carry an `_example` key with commented documentation; it is never a setting.
_EXAMPLE_KEY = "_example"


def _int(cm: str, data: Mapping[str, str], key: str, default: int) -> int:
    raw = data.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(f"{cm}: {key}={raw!r} is not a whole number") from None


def _bool(cm: str, data: Mapping[str, str], key: str, default: bool) -> bool:
    raw = data.get(key)
    if raw is None or raw.strip() == "":
        return default
    low = raw.strip().lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise ConfigError(f"{cm}: {key}={raw!r} is not a boolean (expected true or false)")


def _ignored(data: Mapping[str, str], known: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(k for k in data if k not in known and k != _EXAMPLE_KEY))


# ---------------------------------------------------------------------------------------------- defaults


@dataclass(frozen=True, slots=True)
class DefaultsConfig:
    """config-defaults: the values a revision gets when its spec leaves them out, and their limits."""

    revision_timeout_seconds: int = 300
    max_revision_timeout_seconds: int = 600
    # Knative defaults this to the revision timeout (300); it is only applied to a revision when
    # non-zero and strictly below that revision's timeoutSeconds, so by default it stays off.
    revision_response_start_timeout_seconds: int = 300
    revision_idle_timeout_seconds: int = 0
    container_concurrency: int = 0
    container_concurrency_max_limit: int = 1000
    allow_container_concurrency_zero: bool = True
    container_name_template: str = "user-container"
    # Keys present in the map that this data plane does not use (resource requests and the like):
    # kept so that start-up can log them instead of failing on a stock Knative ConfigMap.
    ignored_keys: tuple[str, ...] = field(default=(), compare=False)

    KEYS = (
        "revision-timeout-seconds",
        "max-revision-timeout-seconds",
        "revision-response-start-timeout-seconds",
        "revision-idle-timeout-seconds",
        "container-concurrency",
        "container-concurrency-max-limit",
        "allow-container-concurrency-zero",
        "container-name-template",
    )

    @classmethod
    def defaults(cls) -> DefaultsConfig:
        return cls()

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> DefaultsConfig:
        cm, d = CONFIG_DEFAULTS, cls.defaults()
        timeout = _int(cm, data, "revision-timeout-seconds", d.revision_timeout_seconds)
        cfg = replace(
            d,
            revision_timeout_seconds=timeout,
            max_revision_timeout_seconds=_int(
                cm, data, "max-revision-timeout-seconds", d.max_revision_timeout_seconds
            ),
            # An unset response-start timeout follows the (possibly changed) revision timeout.
            revision_response_start_timeout_seconds=_int(
                cm, data, "revision-response-start-timeout-seconds", timeout
            ),
            revision_idle_timeout_seconds=_int(
                cm, data, "revision-idle-timeout-seconds", d.revision_idle_timeout_seconds
            ),
            container_concurrency=_int(cm, data, "container-concurrency", d.container_concurrency),
            container_concurrency_max_limit=_int(
                cm, data, "container-concurrency-max-limit", d.container_concurrency_max_limit
            ),
            allow_container_concurrency_zero=_bool(
                cm, data, "allow-container-concurrency-zero", d.allow_container_concurrency_zero
            ),
            container_name_template=(data.get("container-name-template") or d.container_name_template),
            ignored_keys=_ignored(data, cls.KEYS),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        cm = CONFIG_DEFAULTS
        if self.max_revision_timeout_seconds < 1:
            raise ConfigError(
                f"{cm}: max-revision-timeout-seconds={self.max_revision_timeout_seconds} must be at least 1"
            )
        if not 1 <= self.revision_timeout_seconds <= self.max_revision_timeout_seconds:
            raise ConfigError(
                f"{cm}: revision-timeout-seconds={self.revision_timeout_seconds} must be between 1 and "
                f"max-revision-timeout-seconds ({self.max_revision_timeout_seconds})"
            )
        for key, value in (
            ("revision-response-start-timeout-seconds", self.revision_response_start_timeout_seconds),
            ("revision-idle-timeout-seconds", self.revision_idle_timeout_seconds),
        ):
            if not 0 <= value <= self.max_revision_timeout_seconds:
                raise ConfigError(
                    f"{cm}: {key}={value} must be between 0 and max-revision-timeout-seconds "
                    f"({self.max_revision_timeout_seconds})"
                )
        if self.container_concurrency_max_limit < 1:
            raise ConfigError(
                f"{cm}: container-concurrency-max-limit={self.container_concurrency_max_limit} "
                "must be at least 1"
            )
        if not 0 <= self.container_concurrency <= self.container_concurrency_max_limit:
            raise ConfigError(
                f"{cm}: container-concurrency={self.container_concurrency} must be between 0 and "
                f"container-concurrency-max-limit ({self.container_concurrency_max_limit})"
            )
        if self.container_concurrency == 0 and not self.allow_container_concurrency_zero:
            raise ConfigError(
                f"{cm}: container-concurrency=0 is not allowed when allow-container-concurrency-zero is false"
            )


# ----------------------------------------------------------------------------------------------- network

_TEMPLATE_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
_ANY_ACTION = re.compile(r"\{\{.*?\}\}")


def _check_template(key: str, value: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    for action in _ANY_ACTION.findall(value):
        m = _TEMPLATE_FIELD.fullmatch(action)
        if m is None or m.group(1) not in allowed:
            names = ", ".join("{{." + a + "}}" for a in allowed)
            raise ConfigError(f"{CONFIG_NETWORK}: {key}={value!r} uses {action}; only {names} are supported")
    for name in required:
        if not re.search(r"\{\{\s*\." + name + r"\s*\}\}", value):
            raise ConfigError(f"{CONFIG_NETWORK}: {key}={value!r} must contain {{{{.{name}}}}}")


def _render(template: str, values: Mapping[str, str]) -> str:
    return _TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """config-network: host names of services and tags, gradual rollout duration, external scheme."""

    domain_template: str = "{{.Name}}.{{.Namespace}}.{{.Domain}}"
    tag_template: str = "{{.Tag}}-{{.Name}}"
    rollout_duration_seconds: int = 0
    default_external_scheme: str = "http"
    ignored_keys: tuple[str, ...] = field(default=(), compare=False)

    KEYS = ("domain-template", "tag-template", "rollout-duration", "default-external-scheme")

    @classmethod
    def defaults(cls) -> NetworkConfig:
        return cls()

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> NetworkConfig:
        cm, d = CONFIG_NETWORK, cls.defaults()
        cfg = replace(
            d,
            domain_template=(data.get("domain-template") or d.domain_template).strip(),
            tag_template=(data.get("tag-template") or d.tag_template).strip(),
            rollout_duration_seconds=_int(cm, data, "rollout-duration", d.rollout_duration_seconds),
            default_external_scheme=(data.get("default-external-scheme") or d.default_external_scheme)
            .strip()
            .lower(),
            ignored_keys=_ignored(data, cls.KEYS),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _check_template("domain-template", self.domain_template, ("Name", "Namespace", "Domain"), ("Name",))
        _check_template("tag-template", self.tag_template, ("Name", "Tag"), ("Name", "Tag"))
        if self.rollout_duration_seconds < 0:
            raise ConfigError(
                f"{CONFIG_NETWORK}: rollout-duration={self.rollout_duration_seconds} must be 0 (off) "
                "or a positive number of seconds"
            )
        if self.default_external_scheme not in ("http", "https"):
            raise ConfigError(
                f"{CONFIG_NETWORK}: default-external-scheme={self.default_external_scheme!r} "
                "must be http or https"
            )

    def host(self, name: str, namespace: str, domain: str, tag: str | None = None) -> str:
        """The host of a service (``hello.default.example.com``) or of one of its tags
        (``blue-hello.default.example.com``): the tag template fills the domain template's Name."""
        if tag:
            name = _render(self.tag_template, {"Name": name, "Tag": tag})
        return _render(self.domain_template, {"Name": name, "Namespace": namespace, "Domain": domain})

    def url(self, name: str, namespace: str, domain: str, tag: str | None = None) -> str:
        return f"{self.default_external_scheme}://{self.host(name, namespace, domain, tag)}"


# ------------------------------------------------------------------------------------------------ domain

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)


@dataclass(frozen=True, slots=True)
class DomainConfig:
    """config-domain: keys are domains; the one whose value is empty is the default for every service.

    Label selectors (a non-empty value) choose a domain per service on a cluster; they are not
    supported here and are reported in ``ignored_keys``.
    """

    domain: str = "example.com"
    ignored_keys: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def defaults(cls) -> DomainConfig:
        return cls()

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> DomainConfig:
        chosen = [k for k, v in data.items() if k != _EXAMPLE_KEY and v.strip() == ""]
        if len(chosen) > 1:
            raise ConfigError(
                f"{CONFIG_DOMAIN}: {', '.join(sorted(chosen))} all have an empty selector; "
                "expected exactly one default domain"
            )
        ignored = tuple(sorted(k for k, v in data.items() if k != _EXAMPLE_KEY and v.strip() != ""))
        cfg = cls(domain=chosen[0].strip() if chosen else "example.com", ignored_keys=ignored)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not _DOMAIN.match(self.domain):
            raise ConfigError(f"{CONFIG_DOMAIN}: {self.domain!r} is not a DNS domain name")


# -------------------------------------------------------------------------------------------- the bundle


@dataclass(frozen=True, slots=True)
class Configs:
    """Everything a ConfigMap file can hold; ``autoscaler`` is config-autoscaler's raw data map."""

    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    autoscaler: Mapping[str, str] = field(default_factory=dict, compare=False)


def parse_configs(maps: Mapping[str, Mapping[str, str]]) -> Configs:
    """Build every known config from ConfigMap data maps keyed by ConfigMap name (missing = defaults)."""
    return Configs(
        defaults=DefaultsConfig.from_mapping(maps.get(CONFIG_DEFAULTS, {})),
        network=NetworkConfig.from_mapping(maps.get(CONFIG_NETWORK, {})),
        domain=DomainConfig.from_mapping(maps.get(CONFIG_DOMAIN, {})),
        autoscaler=dict(maps.get(CONFIG_AUTOSCALER, {})),
    )


def parse_configmaps(text: str, source: str = "<config>") -> dict[str, dict[str, str]]:
    """The data maps of the ConfigMap documents in a YAML text, keyed by ``metadata.name``.

    Only the ConfigMaps this data plane reads are accepted (config-autoscaler, config-defaults,
    config-network, config-domain); data values must be strings, as Kubernetes requires.
    """
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    out: dict[str, dict[str, str]] = {}
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        where = f"{source} (document {index})"
        out_name, data = _configmap(doc, where)
        if out_name in out:
            raise ConfigError(f"{where}: ConfigMap {out_name!r} appears twice")
        out[out_name] = data
    return out


def load_configmaps(path: str | Path) -> dict[str, dict[str, str]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror or e}") from e
    return parse_configmaps(text, str(p))


def _configmap(doc: Any, where: str) -> tuple[str, dict[str, str]]:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a ConfigMap (a mapping), got {type(doc).__name__}")
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind != "ConfigMap" or api != "v1":
        raise ConfigError(
            f"{where}: expected apiVersion: v1, kind: ConfigMap; got apiVersion: {api}, kind: {kind}"
        )
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "data"):
            raise ConfigError(f"{where}: {key}: unknown field (a ConfigMap has metadata and data)")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: metadata.name is required")
    if name not in KNOWN_CONFIGMAPS:
        raise ConfigError(
            f"{where}: metadata.name: {name!r} is not a ConfigMap zeroscale reads "
            f"(expected one of {', '.join(KNOWN_CONFIGMAPS)})"
        )
    raw = doc.get("data") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name}: data must be a mapping of strings")
    data: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError(
                f'{where}: {name}: data.{key}: {value!r} must be a string; quote it: {key}: "{value}"'
            )
        data[str(key)] = value
    return name, data
