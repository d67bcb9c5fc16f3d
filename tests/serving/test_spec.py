"""serving.spec: parsing with Knative's defaults, and validation errors that name the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.config import DefaultsConfig
from serving.errors import SpecError
from serving.spec import (
    Probe,
    TrafficTarget,
    check_local,
    encode_readiness_probe,
    load_services,
    parse_services,
)

BASE: dict[str, Any] = {
    "apiVersion": "serving.knative.dev/v1",
    "kind": "Service",
    "metadata": {"name": "hello"},
    "spec": {
        "template": {
            "spec": {
                "containers": [{"command": ["python3", "app.py"], "ports": [{"containerPort": 8080}]}],
            }
        }
    },
}


def doc(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-path changes: doc(**{"spec.template.spec.timeoutSeconds": 10})."""
    d = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node: Any = d
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part.endswith("]"):
                name, idx = part[:-1].split("[")
                node = node[name][int(idx)]
            else:
                node = node.setdefault(part, {})
        last = parts[-1]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return d


_DELETE = object()
C0 = "spec.template.spec.containers[0]"


def parse(d: dict[str, Any], defaults: DefaultsConfig | None = None) -> Any:
    return parse_services(yaml.safe_dump(d), "svc.yaml", defaults=defaults)[0]


def test_minimal_service_gets_knative_defaults() -> None:
    s = parse(BASE)
    assert (s.name, s.namespace) == ("hello", "default")
    t = s.template
    assert (t.container_concurrency, t.timeout_seconds) == (0, 300)
    # response-start default 300 is not below timeoutSeconds 300, so it stays off; idle default is 0
    assert (t.response_start_timeout_seconds, t.idle_timeout_seconds) == (0, 0)
    assert s.traffic == (TrafficTarget(latest_revision=True, percent=100),)
    assert not s.traffic_given
    assert t.container.user_port == 8080 and t.container.protocol == "http1"
    assert s.source == "svc.yaml (document 1)"


@pytest.mark.parametrize(
    ("changes", "defaults", "expect"),
    [
        pytest.param(
            {}, DefaultsConfig(revision_response_start_timeout_seconds=60), (300, 60, 0), id="rst-below"
        ),
        pytest.param(
            {"spec.template.spec.timeoutSeconds": 30},
            DefaultsConfig(revision_response_start_timeout_seconds=60),
            (30, 0, 0),
            id="rst-not-below-timeout",
        ),
        pytest.param({}, DefaultsConfig(revision_idle_timeout_seconds=20), (300, 0, 20), id="idle-below"),
        pytest.param(
            {"spec.template.spec.timeoutSeconds": 20},
            DefaultsConfig(revision_idle_timeout_seconds=20),
            (20, 0, 0),
            id="idle-equal-is-off",
        ),
        pytest.param(
            {
                "spec.template.spec.timeoutSeconds": 100,
                "spec.template.spec.responseStartTimeoutSeconds": 100,
                "spec.template.spec.idleTimeoutSeconds": 5,
            },
            None,
            (100, 100, 5),
            id="explicit",
        ),
        pytest.param(
            {}, DefaultsConfig(revision_timeout_seconds=30), (30, 0, 0), id="default-timeout-from-config"
        ),
    ],
)
def test_timeout_defaults(changes: dict[str, Any], defaults: DefaultsConfig | None, expect: tuple) -> None:
    t = parse(doc(**changes), defaults).template
    assert (t.timeout_seconds, t.response_start_timeout_seconds, t.idle_timeout_seconds) == expect


def test_container_concurrency_default_from_config() -> None:
    assert parse(BASE, DefaultsConfig(container_concurrency=7)).template.container_concurrency == 7


ERRORS = [
    pytest.param({"kind": "Route"}, "kind: 'Route' is not supported", id="kind"),
    pytest.param({"kind": "ConfigMap"}, "kind: a ConfigMap belongs in the --config file", id="configmap"),
    pytest.param(
        {"apiVersion": "serving.knative.dev/v1alpha1"}, "apiVersion: 'serving.knative.dev/v1alpha1'", id="api"
    ),
    pytest.param({"extra": 1}, "extra: unknown field", id="unknown-top"),
    pytest.param({"metadata.name": _DELETE}, "metadata.name: is required", id="no-name"),
    pytest.param({"metadata.name": "Hello"}, "metadata.name: 'Hello' is not a valid name", id="bad-name"),
    pytest.param({"metadata.namespace": "a_b"}, "metadata.namespace: 'a_b' is not a valid name", id="bad-ns"),
    pytest.param({"metadata.finalizers": []}, "metadata.finalizers: unknown field", id="unknown-meta"),
    pytest.param(
        {"metadata.annotations": {"autoscaling.knative.dev/min-scale": "1"}},
        "metadata.annotations.autoscaling.knative.dev/min-scale: autoscaling annotations belong under "
        "spec.template.metadata.annotations",
        id="autoscaling-on-service",
    ),
    pytest.param(
        {"metadata.annotations": {"serving.knative.dev/rollout-duration": "soon"}},
        "metadata.annotations.serving.knative.dev/rollout-duration: 'soon' is not a duration",
        id="rollout-duration",
    ),
    pytest.param({"spec.foo": 1}, "spec.foo: unknown field", id="unknown-spec"),
    pytest.param(
        {"spec.template.metadata": {"name": "other-v1"}},
        "spec.template.metadata.name: 'other-v1' must start with the Service's name: hello-",
        id="template-name-prefix",
    ),
    pytest.param(
        {"spec.template.metadata": {"annotations": {"autoscaling.knative.dev/targt": "10"}}},
        "spec.template.metadata.annotations.autoscaling.knative.dev/targt: unknown autoscaling annotation",
        id="unknown-autoscaling",
    ),
    pytest.param(
        {"spec.template.metadata": {"annotations": {"autoscaling.knative.dev/target": 10}}},
        "spec.template.metadata.annotations.autoscaling.knative.dev/target: "
        "expected a string, got a number 10; "
        'quote it: autoscaling.knative.dev/target: "10"',
        id="annotation-not-string",
    ),
    pytest.param(
        {
            "spec.template.metadata": {
                "annotations": {
                    "autoscaling.knative.dev/minScale": "1",
                    "autoscaling.knative.dev/min-scale": "2",
                }
            }
        },
        "autoscaling.knative.dev/min-scale: is set twice",
        id="alias-twice",
    ),
    pytest.param(
        {"spec.template.spec.volumes": []}, "spec.template.spec.volumes: unknown field", id="unknown-tspec"
    ),
    pytest.param(
        {"spec.template.spec.containerConcurrency": 1001},
        "spec.template.spec.containerConcurrency: 1001 is out of range: must be between 0 and 1000",
        id="cc-range",
    ),
    pytest.param(
        {"spec.template.spec.containerConcurrency": "10"},
        "spec.template.spec.containerConcurrency: expected a whole number, got a string '10'",
        id="cc-type",
    ),
    pytest.param(
        {"spec.template.spec.timeoutSeconds": 601},
        "spec.template.spec.timeoutSeconds: 601 is out of range: must be between 0 and 600",
        id="timeout-max",
    ),
    pytest.param(
        {"spec.template.spec.timeoutSeconds": 10, "spec.template.spec.responseStartTimeoutSeconds": 11},
        "spec.template.spec.responseStartTimeoutSeconds: 11 is out of range: "
        "must be between 0 and timeoutSeconds (10)",
        id="rst-above-timeout",
    ),
    pytest.param(
        {"spec.template.spec.idleTimeoutSeconds": -1},
        "spec.template.spec.idleTimeoutSeconds: -1 is out of range",
        id="idle-negative",
    ),
    pytest.param(
        {"spec.template.spec.containers": []},
        "spec.template.spec.containers: is required",
        id="no-containers",
    ),
    pytest.param(
        {"spec.template.spec.containers": [{"command": ["a"]}, {"command": ["b"]}]},
        "spec.template.spec.containers[1]: only one container",
        id="two-containers",
    ),
    pytest.param({f"{C0}.livenessProbe": {}}, f"{C0}.livenessProbe: unknown field", id="unknown-container"),
    pytest.param(
        {f"{C0}.command": "python3 app.py"}, f"{C0}.command: expected a list, got a string", id="cmd-str"
    ),
    pytest.param(
        {f"{C0}.args": ["--port", 80]}, f"{C0}.args[1]: expected a string, got a number 80", id="arg-int"
    ),
    pytest.param(
        {f"{C0}.ports": [{"containerPort": 70000}]},
        f"{C0}.ports[0].containerPort: 70000 is not a port (1-65535)",
        id="port-range",
    ),
    pytest.param(
        {f"{C0}.ports": [{"containerPort": 8012}]},
        f"{C0}.ports[0].containerPort: 8012 is reserved for the queue-proxy",
        id="port-reserved",
    ),
    pytest.param(
        {f"{C0}.ports": [{"name": "http1"}]}, f"{C0}.ports[0].containerPort: is required", id="port-missing"
    ),
    pytest.param(
        {f"{C0}.ports": [{"containerPort": 8080, "name": "grpc"}]},
        f"{C0}.ports[0].name: 'grpc' must be http1 or h2c",
        id="port-name",
    ),
    pytest.param(
        {f"{C0}.ports": [{"containerPort": 8080}, {"containerPort": 8081}]},
        f"{C0}.ports[1]: only one port",
        id="two-ports",
    ),
    pytest.param(
        {f"{C0}.ports": [{"containerPort": 8080, "protocol": "UDP"}]},
        f"{C0}.ports[0].protocol: 'UDP' is not supported",
        id="udp",
    ),
    pytest.param(
        {f"{C0}.env": [{"name": "PORT", "value": "1"}]}, f"{C0}.env[0].name: PORT is reserved", id="env-port"
    ),
    pytest.param(
        {f"{C0}.env": [{"name": "A", "value": 1}]}, f"{C0}.env[0].value: expected a string", id="env-int"
    ),
    pytest.param({f"{C0}.env": [{"value": "x"}]}, f"{C0}.env[0].name: is required", id="env-noname"),
    pytest.param(
        {f"{C0}.env": [{"name": "1 A"}]}, f"{C0}.env[0].name: '1 A' is not a valid", id="env-badname"
    ),
    pytest.param(
        {f"{C0}.env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]},
        f"{C0}.env[1].name: A is set twice",
        id="env-dup",
    ),
    pytest.param(
        {f"{C0}.env": [{"name": "A", "valueFrom": {}}]},
        f"{C0}.env[0].valueFrom: is not supported",
        id="valuefrom",
    ),
    pytest.param(
        {f"{C0}.readinessProbe": {"exec": {"command": ["true"]}}},
        f"{C0}.readinessProbe.exec: is not supported",
        id="probe-exec",
    ),
    pytest.param(
        {f"{C0}.readinessProbe": {"httpGet": {"port": 9000}}},
        f"{C0}.readinessProbe.httpGet.port: 9000 is not the container port (8080)",
        id="probe-port",
    ),
    pytest.param(
        {f"{C0}.readinessProbe": {"httpGet": {"path": "healthz"}}},
        f"{C0}.readinessProbe.httpGet.path: 'healthz' must start with /",
        id="probe-path",
    ),
    pytest.param(
        {f"{C0}.readinessProbe": {"httpGet": {"pth": "/"}}},
        f"{C0}.readinessProbe.httpGet.pth: unknown field",
        id="probe-unknown",
    ),
    pytest.param(
        {f"{C0}.readinessProbe": {"tcpSocket": {}, "timeoutSeconds": 2}},
        f"{C0}.readinessProbe.timeoutSeconds: is only allowed with periodSeconds > 0",
        id="probe-aggressive-timeout",
    ),
    pytest.param(
        {f"{C0}.readinessProbe": {"tcpSocket": {}, "successThreshold": 0}},
        f"{C0}.readinessProbe.successThreshold: 0 is out of range: must be at least 1",
        id="probe-success",
    ),
    pytest.param(
        {f"{C0}.readinessProbe": {"tcpSocket": {}, "httpGet": {}}},
        f"{C0}.readinessProbe: set one of httpGet or tcpSocket",
        id="probe-two",
    ),
    pytest.param(
        {f"{C0}.resources": {"limits": {"cpu": [1]}}},
        f"{C0}.resources.limits.cpu: expected a quantity",
        id="resources",
    ),
    pytest.param(
        {
            "spec.traffic": [
                {"latestRevision": True, "percent": 60},
                {"revisionName": "hello-00001", "percent": 30},
            ]
        },
        "spec.traffic: the targets' percent values sum to 90; they must sum to 100",
        id="traffic-sum",
    ),
    pytest.param(
        {"spec.traffic": [{"latestRevision": True, "revisionName": "hello-00001", "percent": 100}]},
        "spec.traffic[0].revisionName: may not be set together with latestRevision: true",
        id="traffic-both",
    ),
    pytest.param(
        {"spec.traffic": [{"latestRevision": False, "percent": 100}]},
        "spec.traffic[0].revisionName: is required when latestRevision is false",
        id="traffic-none",
    ),
    pytest.param(
        {"spec.traffic": [{"latestRevision": True, "percent": 101}]},
        "spec.traffic[0].percent: 101 is out of range: must be between 0 and 100",
        id="traffic-percent",
    ),
    pytest.param(
        {
            "spec.traffic": [
                {"latestRevision": True, "percent": 50, "tag": "a"},
                {"revisionName": "hello-00001", "percent": 50, "tag": "a"},
            ]
        },
        "spec.traffic[1].tag: 'a' is used by more than one target",
        id="traffic-dup-tag",
    ),
    pytest.param(
        {"spec.traffic": [{"configurationName": "hello", "percent": 100}]},
        "spec.traffic[0].configurationName: is not allowed in a Service",
        id="traffic-config",
    ),
    pytest.param(
        {"spec.traffic": [{"latestRevision": True, "percent": 100, "tag": "Blue"}]},
        "spec.traffic[0].tag: 'Blue' is not a valid name",
        id="traffic-tag",
    ),
]


@pytest.mark.parametrize(("changes", "message"), ERRORS)
def test_validation_errors_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(doc(**changes))
    text = str(info.value)
    assert message in text
    assert text.startswith("svc.yaml (document 1")


def test_error_names_document_and_service() -> None:
    text = yaml.safe_dump_all(
        [BASE, doc(**{"metadata.name": "two", "spec.template.spec.timeoutSeconds": -1})]
    )
    with pytest.raises(
        SpecError, match=r"^svc.yaml \(document 2, Service two\): spec.template.spec.timeoutSeconds"
    ):
        parse_services(text, "svc.yaml")


def test_several_documents_and_empty_ones() -> None:
    text = yaml.safe_dump_all([BASE, None, doc(**{"metadata.name": "b", "metadata.namespace": "ns"})])
    services = parse_services(text, "f.yaml")
    assert [(s.name, s.namespace, s.source) for s in services] == [
        ("hello", "default", "f.yaml (document 1)"),
        ("b", "ns", "f.yaml (document 3)"),
    ]


def test_invalid_yaml_names_the_file() -> None:
    with pytest.raises(SpecError, match=r"^bad.yaml: not valid YAML"):
        parse_services("a: [b", "bad.yaml")


def test_full_service_round_trip() -> None:
    d = doc(
        **{
            "metadata.annotations": {"serving.knative.dev/rollout-duration": "1m30s"},
            "spec.template.metadata": {
                "name": "hello-v2",
                "annotations": {
                    "autoscaling.knative.dev/minScale": "1",
                    "autoscaling.knative.dev/target": "10",
                },
            },
            "spec.template.spec.containerConcurrency": 5,
            f"{C0}.env": [{"name": "TARGET", "value": "World"}],
            f"{C0}.ports": [{"containerPort": 8080, "name": "h2c"}],
            f"{C0}.readinessProbe": {
                "httpGet": {"path": "/ready", "port": 8080, "httpHeaders": [{"name": "X-A", "value": "b"}]},
                "periodSeconds": 2,
            },
            "spec.traffic": [
                {"tag": "current", "revisionName": "hello-v1", "percent": 40},
                {"tag": "candidate", "latestRevision": True, "percent": 60},
                {"tag": "latest", "latestRevision": True},
            ],
        }
    )
    s = parse(d)
    assert s.rollout_duration_seconds == 90.0
    assert s.template.name == "hello-v2"
    assert s.template.autoscaling == {"min-scale": "1", "target": "10"}  # camelCase alias normalised
    assert s.template.container.protocol == "h2c"
    assert s.traffic == (
        TrafficTarget(revision_name="hello-v1", percent=40, tag="current"),
        TrafficTarget(latest_revision=True, percent=60, tag="candidate"),
        TrafficTarget(latest_revision=True, percent=None, tag="latest"),
    )
    # the k8s form parses back to the same Service
    assert parse(s.to_k8s()) == s


@pytest.mark.parametrize(
    ("probe", "expect"),
    [
        pytest.param(
            None, {"tcpSocket": {"port": 4000, "host": "127.0.0.1"}, "successThreshold": 1}, id="none"
        ),
        pytest.param(
            {"httpGet": {"path": "/healthz", "httpHeaders": [{"name": "X", "value": "y"}]}},
            {
                "httpGet": {
                    "path": "/healthz",
                    "port": 4000,
                    "host": "127.0.0.1",
                    "scheme": "HTTP",
                    "httpHeaders": [{"name": "X", "value": "y"}],
                },
                "successThreshold": 1,
            },
            id="http",
        ),
        pytest.param(
            {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
            {
                "tcpSocket": {"port": 4000, "host": "127.0.0.1"},
                "timeoutSeconds": 1,
                "periodSeconds": 5,
                "successThreshold": 1,
                "failureThreshold": 3,
            },
            id="period-defaults",
        ),
        pytest.param(
            {"periodSeconds": 1, "successThreshold": 2, "initialDelaySeconds": 3},
            {
                "tcpSocket": {"port": 4000, "host": "127.0.0.1"},
                "initialDelaySeconds": 3,
                "timeoutSeconds": 1,
                "periodSeconds": 1,
                "successThreshold": 2,
                "failureThreshold": 3,
            },
            id="no-handler",
        ),
    ],
)
def test_readiness_probe_encoding(probe: dict[str, Any] | None, expect: dict[str, Any]) -> None:
    changes = {f"{C0}.readinessProbe": probe} if probe is not None else {}
    p = parse(doc(**changes)).template.container.readiness_probe
    assert json.loads(encode_readiness_probe(p, 4000)) == expect


def test_probe_defaults_do_not_mutate() -> None:
    p = Probe()
    assert p.with_defaults().success_threshold == 1 and p.success_threshold == 0


def test_check_local(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print(1)\n")
    f = tmp_path / "svc.yaml"
    f.write_text(yaml.safe_dump(BASE))
    s = load_services(f)[0]
    assert s.base_dir == str(tmp_path)
    check_local(s)  # python3 on PATH

    image_only = doc(**{f"{C0}.command": _DELETE, f"{C0}.image": "ghcr.io/knative/helloworld-go"})
    f.write_text(yaml.safe_dump(image_only))
    s = load_services(f)[0]  # fine for Kubernetes
    with pytest.raises(SpecError) as info:
        check_local(s)
    msg = str(info.value)
    assert (
        f"{C0}.command" in msg
        and "ghcr.io/knative/helloworld-go" in msg
        and "command: [python3, app.py]" in msg
    )

    f.write_text(yaml.safe_dump(doc(**{f"{C0}.command": ["./missing.sh"]})))
    with pytest.raises(SpecError, match=r"command\[0\]: './missing.sh' was not found in"):
        check_local(load_services(f)[0])
    f.write_text(yaml.safe_dump(doc(**{f"{C0}.command": ["no-such-program-zs"]})))
    with pytest.raises(SpecError, match=r"'no-such-program-zs' was not found on PATH"):
        check_local(load_services(f)[0])
    f.write_text(yaml.safe_dump(doc(**{f"{C0}.workingDir": "sub"})))
    with pytest.raises(SpecError, match=r"workingDir: .* is not a directory"):
        check_local(load_services(f)[0])


def test_unreadable_file() -> None:
    with pytest.raises(SpecError, match="cannot read the Service file"):
        load_services("/nonexistent/zs.yaml")
