"""`zeroscale render`: every document validates against the Kubernetes schema; the Knative contract holds."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from cluster import cli
from cluster.render import build
from queueproxy.config import QueueProxyConfig
from serving.errors import ConfigError
from serving.spec import RevisionHistory, parse_services

ROOT = Path(__file__).resolve().parents[2]
LATEST = kubernetes_validate.utils.latest_version()
# The newest schema bundled, and an older release still widely run.
VERSIONS = [LATEST, "1.30.0"]

SERVICE = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: demo}
spec:
  template:
    metadata:
      labels: {team: web}
      annotations:
        autoscaling.knative.dev/target: "10"
        autoscaling.knative.dev/initial-scale: "2"
    spec:
      containerConcurrency: 4
      timeoutSeconds: 120
      responseStartTimeoutSeconds: 30
      containers:
        - image: ghcr.io/example/hello:1
          args: ["--greeting", "hi"]
          env: [{name: TARGET, value: zs}]
          ports: [{containerPort: 8081}]
          readinessProbe:
            httpGet: {path: /ready}
            periodSeconds: 2
          resources:
            requests: {cpu: 100m, memory: 64Mi}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: grpc, namespace: demo}
spec:
  template:
    spec:
      containers:
        - image: ghcr.io/example/grpc:1
          ports: [{name: h2c, containerPort: 9000}]
"""

CONFIG = """
apiVersion: v1
kind: ConfigMap
metadata: {name: config-autoscaler}
data:
  initial-scale: "0"
  allow-zero-initial-scale: "true"
  stable-window: "30s"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: config-domain}
data:
  example.org: ""
"""


def render(
    text: str = SERVICE, config: dict[str, dict[str, str]] | None = None, **kw: Any
) -> list[dict[str, Any]]:
    return build(parse_services(text, "svc.yaml"), config or {}, **kw)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates_against_the_kubernetes_schema(version: str, tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_text(SERVICE)
    (tmp_path / "config.yaml").write_text(CONFIG)
    out = io.StringIO()
    with redirect_stdout(out):
        rc = cli.main(["render", "-f", str(tmp_path / "svc.yaml"), "--config", str(tmp_path / "config.yaml")])
    assert rc == 0
    docs = [d for d in yaml.safe_load_all(out.getvalue()) if d is not None]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "Role", "RoleBinding"] * 2
        + ["Deployment", "Service"] * 2  # activator, autoscaler
        + ["ConfigMap"] * 3  # routes, config-autoscaler, config-domain
        + ["Deployment", "Service"] * 2  # two revisions
    )
    for doc in docs:
        # strict: unknown fields are errors too
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_catches_a_broken_document() -> None:
    """The check above can fail: a misspelt field is rejected by the strict schema."""
    dep = by_kind(render(), "Deployment")["hello-00001-deployment"]
    dep["spec"]["template"]["spec"]["containers"][1]["readinessProbe"]["httpGet"]["headers"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, LATEST, strict=True)


def test_revision_deployment_follows_knatives_contract() -> None:
    dep = by_kind(render(), "Deployment")["hello-00001-deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 2  # the initial-scale annotation
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120  # timeoutSeconds
    assert spec["template"]["metadata"]["labels"]["team"] == "web"
    c = containers(dep)
    assert list(c) == ["user-container", "queue-proxy"]
    user, qp = c["user-container"], c["queue-proxy"]
    assert user["lifecycle"]["preStop"] == {"httpGet": {"path": "/wait-for-drain", "port": 8022}}
    assert "readinessProbe" not in user  # the queue-proxy probes the user container instead
    env = {e["name"]: e.get("value") for e in user["env"]}
    assert env == {
        "TARGET": "zs",
        "PORT": "8081",
        "K_REVISION": "hello-00001",
        "K_CONFIGURATION": "hello",
        "K_SERVICE": "hello",
    }
    assert user["args"] == ["--greeting", "hi"] and user["resources"]["requests"]["memory"] == "64Mi"
    probe = qp["readinessProbe"]
    assert probe["httpGet"]["port"] == 8012
    assert probe["httpGet"]["httpHeaders"] == [{"name": "K-Network-Probe", "value": "queue"}]
    assert probe["periodSeconds"] == 2  # copied from the user's probe
    assert {p["containerPort"] for p in qp["ports"]} == {8012, 8022, 9090, 9091}
    assert qp["securityContext"]["runAsNonRoot"] is True


def test_the_queue_proxy_env_is_what_the_queue_proxy_reads() -> None:
    """Feed the rendered environment (downward-API fields filled in) to the real queue-proxy config."""
    qp = containers(by_kind(render(), "Deployment")["hello-00001-deployment"])["queue-proxy"]
    downward = {
        "metadata.name": "hello-00001-deployment-abc",
        "status.podIP": "10.0.0.7",
        "status.hostIP": "10.1.0.1",
    }
    env = {
        e["name"]: e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in qp["env"]
    }
    cfg = QueueProxyConfig.from_env(env)
    assert (cfg.user_port, cfg.serving_port, cfg.container_concurrency) == (8081, 8012, 4)
    assert (cfg.revision_timeout, cfg.response_start_timeout) == (120.0, 30.0)
    assert (cfg.namespace, cfg.service, cfg.configuration, cfg.revision) == (
        "demo",
        "hello",
        "hello",
        "hello-00001",
    )
    assert (cfg.pod, cfg.pod_ip) == ("hello-00001-deployment-abc", "10.0.0.7")
    (probe,) = cfg.readiness_probes
    assert json.loads(env["SERVING_READINESS_PROBE"])["httpGet"] == {
        "path": "/ready",
        "port": 8081,
        "host": "127.0.0.1",
        "scheme": "HTTP",
    }
    assert probe is not None


def test_h2c_revisions_serve_on_8013() -> None:
    docs = render()
    qp = containers(by_kind(docs, "Deployment")["grpc-00001-deployment"])["queue-proxy"]
    assert {e["name"]: e.get("value") for e in qp["env"]}["QUEUE_SERVING_PORT"] == "8013"
    assert qp["readinessProbe"]["httpGet"]["port"] == 8013
    (port,) = by_kind(docs, "Service")["grpc-00001"]["spec"]["ports"]
    assert (port["name"], port["targetPort"]) == ("h2c", 8013)


def test_config_sets_initial_scale_and_lands_in_configmaps() -> None:
    config = {
        "config-autoscaler": {"initial-scale": "0", "allow-zero-initial-scale": "true"},
        "config-domain": {"example.org": ""},
    }
    docs = render(config=config)
    deps = by_kind(docs, "Deployment")
    assert deps["grpc-00001-deployment"]["spec"]["replicas"] == 0  # from config-autoscaler
    assert deps["hello-00001-deployment"]["spec"]["replicas"] == 2  # the annotation wins
    cms = by_kind(docs, "ConfigMap")
    assert cms["config-autoscaler"]["data"] == config["config-autoscaler"]
    assert cms["config-domain"]["data"] == {"example.org": ""}
    assert all(cm["metadata"]["labels"]["app.kubernetes.io/part-of"] == "zeroscale" for cm in cms.values())


def test_routes_configmap_parses_back_to_the_same_revisions() -> None:
    docs = render(namespace="prod")
    routes = by_kind(docs, "ConfigMap")["zeroscale-routes"]["data"]
    services = parse_services(routes["services.yaml"], "zeroscale-routes")
    history = RevisionHistory()
    names = [history.admit(s)[0].key for s in services]
    assert [(k.namespace, k.name) for k in names] == [("prod", "hello-00001"), ("prod", "grpc-00001")]
    records = json.loads(routes["revisions.json"])
    assert [(r["name"], r["containerConcurrency"], r["protocol"]) for r in records] == [
        ("hello-00001", 4, "http1"),
        ("grpc-00001", 0, "h2c"),
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"prod"}


def test_images_take_the_prefix_and_tag() -> None:
    docs = render(image_prefix="registry.example.com/zs/", tag="1.2.3")
    images = {c["image"] for d in by_kind(docs, "Deployment").values() for c in containers(d).values()}
    assert {
        "registry.example.com/zs/queue-proxy:1.2.3",
        "registry.example.com/zs/activator:1.2.3",
        "registry.example.com/zs/autoscaler:1.2.3",
    } <= images


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            SERVICE.replace("- image: ghcr.io/example/hello:1", "- command: [python3, app.py]"),
            "spec.template.spec.containers[0].image: required on Kubernetes",
            id="no-image",
        ),
        pytest.param(
            SERVICE.replace('target: "10"', 'target: "ten"'),
            "autoscaling.knative.dev/target",
            id="bad-annotation",
        ),
        pytest.param(
            SERVICE.replace(
                "namespace: demo}\nspec:\n  template:\n    spec:\n      containers:\n        - image: ghcr",
                "namespace: other}\nspec:\n  template:\n    spec:\n      containers:\n        - image: ghcr",
            ),
            "several namespaces",
            id="mixed-namespaces",
        ),
    ],
)
def test_bad_input_is_an_error_naming_the_field(text: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_text(text)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = cli.main(["render", "-f", str(tmp_path / "svc.yaml")])
    assert rc == 2
    assert message in err.getvalue()


def test_a_traffic_target_outside_the_render_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    text = SERVICE.split("---")[0] + "  traffic:\n  - {revisionName: hello-old, percent: 100}\n"
    render(text)
    assert "hello-old" in capsys.readouterr().err


def test_render_rejects_a_mixed_namespace_build_without_flag() -> None:
    with pytest.raises(ConfigError, match="--namespace"):
        render(
            SERVICE.replace("metadata: {name: grpc, namespace: demo}", "metadata: {name: grpc, namespace: x}")
        )


def test_the_activator_may_drain_as_long_as_the_longest_revision_timeout() -> None:
    """Knative raised the activator's grace to max-revision-timeout-seconds (knative/serving PR 8623)."""
    docs = render(config={"config-defaults": {"max-revision-timeout-seconds": "900"}})
    act = by_kind(docs, "Deployment")["zeroscale-activator"]
    assert act["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    assert act["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert (
        by_kind(render(), "Deployment")["zeroscale-activator"]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        == 600
    )


def test_config_domain_becomes_the_gateways_route_domain() -> None:
    def args(docs: list[dict[str, Any]]) -> list[str]:
        return containers(by_kind(docs, "Deployment")["zeroscale-activator"])["activator"]["args"]

    assert args(render()) == ["--backend", "kubernetes"]  # the gateway's default: svc.cluster.local
    assert args(render(config={"config-domain": {"example.org": ""}})) == [
        "--backend",
        "kubernetes",
        "--domain",
        "example.org",
    ]
