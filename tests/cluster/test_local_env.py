"""The local pod's two environments: Knative's contract for the queue-proxy, PORT and K_* for the app."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from cluster.local_pod import PodFailure, PodPorts, queue_env, user_env
from queueproxy.config import QueueProxyConfig
from serving.spec import Revision, RevisionHistory, parse_services
from serving.types import RevisionKey

SERVICE = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: team}
spec:
  template:
    spec:
      containerConcurrency: 4
      timeoutSeconds: 90
      responseStartTimeoutSeconds: 30
      idleTimeoutSeconds: 20
      containers:
        - command: [python3, app.py]
          env: [{name: TARGET, value: local}, {name: PATH, value: /custom/bin}]
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /ready}}
"""
PORTS = PodPorts(serving=20001, admin=20002, metrics=20003, user_metrics=20004, user=20005)


@pytest.fixture
def revision() -> Revision:
    return RevisionHistory().admit(parse_services(SERVICE)[0])[0]


def test_queue_env_is_knatives_contract_and_the_queue_proxy_reads_it(revision: Revision) -> None:
    env = queue_env(revision, "hello-00001-deployment-abcde", PORTS, 0.5, {"HOME": "/home/x"})
    assert env["HOME"] == "/home/x"
    expect = {
        "QUEUE_SERVING_PORT": "20001",
        "USER_PORT": "20005",
        "CONTAINER_CONCURRENCY": "4",
        "REVISION_TIMEOUT_SECONDS": "90",
        "REVISION_RESPONSE_START_TIMEOUT_SECONDS": "30",
        "REVISION_IDLE_TIMEOUT_SECONDS": "20",
        "SERVING_NAMESPACE": "team",
        "SERVING_CONFIGURATION": "hello",
        "SERVING_REVISION": "hello-00001",
        "SERVING_SERVICE": "hello",
        "SERVING_POD": "hello-00001-deployment-abcde",
        "SERVING_POD_IP": "127.0.0.1",
        "QUEUE_ADMIN_PORT": "20002",
        "QUEUE_METRICS_PORT": "20003",
        "USER_METRICS_PORT": "20004",
        "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0.5",
        "QUEUE_BIND_ADDRESS": "127.0.0.1",
    }
    assert {k: env[k] for k in expect} == expect
    assert json.loads(env["SERVING_READINESS_PROBE"]) == {
        "httpGet": {"path": "/ready", "port": 20005, "host": "127.0.0.1", "scheme": "HTTP"},
        "successThreshold": 1,
    }
    cfg = QueueProxyConfig.from_env(env)  # the other side of the contract accepts every value
    assert (cfg.serving_port, cfg.user_port, cfg.container_concurrency) == (20001, 20005, 4)
    assert (cfg.revision_timeout, cfg.response_start_timeout, cfg.idle_timeout) == (90, 30, 20)
    assert (cfg.admin_port, cfg.metrics_port, cfg.user_metrics_port) == (20002, 20003, 20004)
    assert (cfg.revision, cfg.pod, cfg.bind_address, cfg.drain_quiet_period) == (
        "hello-00001",
        "hello-00001-deployment-abcde",
        "127.0.0.1",
        0.5,
    )
    probe = cfg.readiness_probes[0]
    assert (probe.kind, probe.path, probe.port) == ("http", "/ready", 20005)
    # the queue-proxy package is importable from the child whatever its working directory
    assert str(Path(__file__).resolve().parents[2]) in env["PYTHONPATH"].split(os.pathsep)


def test_user_env(revision: Revision) -> None:
    env = user_env(revision, PORTS, {"HOME": "/home/x", "TARGET": "outer"}, python="/venv/bin/python")
    assert env["HOME"] == "/home/x"
    assert env["TARGET"] == "local"  # the spec's env wins over the inherited one
    assert (env["PORT"], env["K_SERVICE"], env["K_CONFIGURATION"], env["K_REVISION"]) == (
        "20005",
        "hello",
        "hello",
        "hello-00001",
    )
    assert env["PATH"] == "/custom/bin"  # the spec says so
    env = user_env(revision, PORTS, {"PATH": "/usr/bin"}, python="/venv/bin/python")
    # PATH from the spec still wins; without it, zeroscale's interpreter directory comes first
    assert env["PATH"] == "/custom/bin"


def test_user_env_puts_zeroscales_python_first() -> None:
    svc = yaml.safe_load(SERVICE)
    svc["spec"]["template"]["spec"]["containers"][0]["env"] = []
    revision = RevisionHistory().admit(parse_services(yaml.safe_dump(svc))[0])[0]
    env = user_env(revision, PORTS, {"PATH": "/usr/bin"}, python="/venv/bin/python")
    assert env["PATH"] == "/venv/bin" + os.pathsep + "/usr/bin"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_failure_report_names_pod_reason_and_output() -> None:
    f = PodFailure(
        RevisionKey("default", "hello-00001"),
        "hello-00001-deployment-x",
        "not ready after 2 s",
        0.0,
        {"user-container": tuple(f"line {i}" for i in range(30)), "queue-proxy": ()},
    )
    text = f.describe(lines=3)
    assert text.splitlines() == [
        "pod hello-00001-deployment-x of revision default/hello-00001: not ready after 2 s",
        "  last output of user-container:",
        "    | line 27",
        "    | line 28",
        "    | line 29",
        "  queue-proxy printed nothing",
    ]
