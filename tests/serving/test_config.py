"""serving.config: ConfigMap data maps -> frozen configs with Knative's defaults; errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import (
    DefaultsConfig,
    DomainConfig,
    NetworkConfig,
    load_configmaps,
    parse_configmaps,
    parse_configs,
)
from serving.errors import ConfigError


def test_defaults_match_knative() -> None:
    d = DefaultsConfig.from_mapping({})
    assert d == DefaultsConfig()
    assert (d.revision_timeout_seconds, d.max_revision_timeout_seconds) == (300, 600)
    assert d.revision_response_start_timeout_seconds == 300
    assert (d.revision_idle_timeout_seconds, d.container_concurrency, d.container_concurrency_max_limit) == (
        0,
        0,
        1000,
    )
    n = NetworkConfig.from_mapping({})
    assert n.domain_template == "{{.Name}}.{{.Namespace}}.{{.Domain}}"
    assert (n.tag_template, n.rollout_duration_seconds, n.default_external_scheme) == (
        "{{.Tag}}-{{.Name}}",
        0,
        "http",
    )


def test_defaults_from_mapping() -> None:
    d = DefaultsConfig.from_mapping(
        {
            "revision-timeout-seconds": "120",
            "max-revision-timeout-seconds": "900",
            "revision-idle-timeout-seconds": "30",
            "container-concurrency": "10",
            "revision-cpu-request": "400m",  # a Kubernetes-only key: ignored, reported
            "_example": "docs",
        }
    )
    assert (d.revision_timeout_seconds, d.max_revision_timeout_seconds) == (120, 900)
    # unset response-start timeout follows the revision timeout, as Knative's default does
    assert d.revision_response_start_timeout_seconds == 120
    assert (d.revision_idle_timeout_seconds, d.container_concurrency) == (30, 10)
    assert d.ignored_keys == ("revision-cpu-request",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"revision-timeout-seconds": "abc"},
            "config-defaults: revision-timeout-seconds='abc' is not a whole number",
            id="nan",
        ),
        pytest.param(
            {"revision-timeout-seconds": "700"},
            "revision-timeout-seconds=700 must be between 1 and max-revision-timeout-seconds (600)",
            id="above-max",
        ),
        pytest.param(
            {"revision-timeout-seconds": "0"}, "revision-timeout-seconds=0 must be between 1", id="zero"
        ),
        pytest.param(
            {"max-revision-timeout-seconds": "0"},
            "max-revision-timeout-seconds=0 must be at least 1",
            id="max-zero",
        ),
        pytest.param(
            {"revision-idle-timeout-seconds": "-1"},
            "revision-idle-timeout-seconds=-1 must be between 0",
            id="idle",
        ),
        pytest.param(
            {"revision-response-start-timeout-seconds": "601"},
            "revision-response-start-timeout-seconds=601",
            id="rst",
        ),
        pytest.param(
            {"container-concurrency": "1001"},
            "container-concurrency=1001 must be between 0 and container-concurrency-max-limit (1000)",
            id="cc",
        ),
        pytest.param(
            {"container-concurrency-max-limit": "0"},
            "container-concurrency-max-limit=0 must be at least 1",
            id="cc-limit",
        ),
        pytest.param(
            {"allow-container-concurrency-zero": "maybe"},
            "allow-container-concurrency-zero='maybe' is not a boolean",
            id="bool",
        ),
        pytest.param(
            {"allow-container-concurrency-zero": "false"},
            "container-concurrency=0 is not allowed",
            id="cc-zero",
        ),
    ],
)
def test_defaults_errors_name_key_and_value(data: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DefaultsConfig.from_mapping(data)
    assert message in str(info.value)
    assert str(info.value).startswith("config-defaults: ")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"domain-template": "{{.Namespace}}.{{.Domain}}"},
            "domain-template='{{.Namespace}}.{{.Domain}}' must contain {{.Name}}",
            id="no-name",
        ),
        pytest.param(
            {"domain-template": "{{.Name}}.{{.Foo}}"},
            "uses {{.Foo}}; only {{.Name}}, {{.Namespace}}, {{.Domain}}",
            id="bad-field",
        ),
        pytest.param(
            {"tag-template": "{{.Name}}"}, "tag-template='{{.Name}}' must contain {{.Tag}}", id="tag"
        ),
        pytest.param(
            {"rollout-duration": "-5"},
            "rollout-duration=-5 must be 0 (off) or a positive number",
            id="rollout",
        ),
        pytest.param(
            {"rollout-duration": "10s"}, "rollout-duration='10s' is not a whole number", id="rollout-unit"
        ),
        pytest.param(
            {"default-external-scheme": "ftp"},
            "default-external-scheme='ftp' must be http or https",
            id="scheme",
        ),
    ],
)
def test_network_errors(data: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        NetworkConfig.from_mapping(data)
    assert message in str(info.value)


def test_hosts_and_urls() -> None:
    n = NetworkConfig()
    assert n.host("hello", "default", "example.com") == "hello.default.example.com"
    assert n.host("hello", "default", "example.com", tag="blue") == "blue-hello.default.example.com"
    n = NetworkConfig.from_mapping(
        {
            "domain-template": "{{.Name}}-{{.Namespace}}.{{.Domain}}",
            "tag-template": "{{.Name}}-{{.Tag}}",
            "default-external-scheme": "HTTPS",
            "rollout-duration": "120",
        }
    )
    assert n.url("hello", "ns", "127.0.0.1.sslip.io", tag="v2") == "https://hello-v2-ns.127.0.0.1.sslip.io"
    assert n.rollout_duration_seconds == 120


def test_domain() -> None:
    assert DomainConfig.from_mapping({}).domain == "example.com"
    d = DomainConfig.from_mapping({"local.dev": "", "prod.com": "selector:\n  app: prod\n", "_example": "x"})
    assert (d.domain, d.ignored_keys) == ("local.dev", ("prod.com",))
    with pytest.raises(ConfigError, match=r"config-domain: a\.com, b\.com all have an empty selector"):
        DomainConfig.from_mapping({"a.com": "", "b.com": ""})
    with pytest.raises(ConfigError, match="config-domain: 'Not A Domain' is not a DNS domain name"):
        DomainConfig.from_mapping({"Not A Domain": ""})


CONFIG_FILE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  stable-window: 60s
  container-concurrency-target-default: "100"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-defaults
data:
  revision-timeout-seconds: "60"
---
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-network
data:
  rollout-duration: "30"
"""


def test_load_configmaps_and_bundle(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(CONFIG_FILE)
    maps = load_configmaps(f)
    assert maps["config-autoscaler"] == {
        "stable-window": "60s",
        "container-concurrency-target-default": "100",
    }
    configs = parse_configs(maps)
    assert configs.defaults.revision_timeout_seconds == 60
    assert configs.network.rollout_duration_seconds == 30
    assert configs.domain == DomainConfig()
    assert configs.autoscaler == maps["config-autoscaler"]  # raw: the autoscaler parses it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("a: [", "c.yaml: not valid YAML", id="yaml"),
        pytest.param(
            "apiVersion: serving.knative.dev/v1\nkind: Service\n",
            "c.yaml (document 1): expected apiVersion: v1, kind: ConfigMap; "
            "got apiVersion: serving.knative.dev/v1, kind: Service",
            id="kind",
        ),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
            "c.yaml (document 1): metadata.name is required",
            id="noname",
        ),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-features}\n",
            "metadata.name: 'config-features' is not a ConfigMap zeroscale reads",
            id="unknown-cm",
        ),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-defaults}\n"
            "data: {revision-timeout-seconds: 60}\n",
            "config-defaults: data.revision-timeout-seconds: 60 must be a string; "
            'quote it: revision-timeout-seconds: "60"',
            id="int-value",
        ),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-defaults}\nbinaryData: {}\n",
            "binaryData: unknown field",
            id="field",
        ),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-network}\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-network}\n",
            "c.yaml (document 2): ConfigMap 'config-network' appears twice",
            id="twice",
        ),
    ],
)
def test_configmap_file_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_configmaps(text, "c.yaml")
    assert message in str(info.value)


def test_unreadable_config_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_configmaps("/nonexistent/zs-config.yaml")
