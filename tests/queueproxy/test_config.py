from __future__ import annotations

import subprocess
import sys

import pytest

from queueproxy.config import ProbeSpec, QueueProxyConfig, parse_readiness_probe
from serving.errors import ConfigError
from tests.conftest import ROOT


def test_defaults_are_knatives() -> None:
    cfg = QueueProxyConfig.from_env({})
    assert (cfg.serving_port, cfg.user_port, cfg.admin_port, cfg.metrics_port, cfg.user_metrics_port) == (
        8012,
        8080,
        8022,
        9090,
        9091,
    )
    assert cfg.container_concurrency == 0 and cfg.max_concurrency is None
    assert (cfg.revision_timeout, cfg.response_start_timeout, cfg.idle_timeout) == (300, 0, 0)
    assert cfg.drain_quiet_period == 30
    assert cfg.readiness_probes == (ProbeSpec("tcp"),)


def test_values_are_read() -> None:
    cfg = QueueProxyConfig.from_env(
        {
            "QUEUE_SERVING_PORT": "18012",
            "USER_PORT": "18080",
            "CONTAINER_CONCURRENCY": "3",
            "REVISION_TIMEOUT_SECONDS": "10",
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS": "2",
            "REVISION_IDLE_TIMEOUT_SECONDS": "1.5",
            "SERVING_NAMESPACE": "ns",
            "SERVING_SERVICE": "svc",
            "SERVING_CONFIGURATION": "cfg",
            "SERVING_REVISION": "rev-1",
            "SERVING_POD": "pod-a",
            "SERVING_POD_IP": "10.0.0.1",
            "QUEUE_ADMIN_PORT": "18022",
            "QUEUE_METRICS_PORT": "19090",
            "USER_METRICS_PORT": "19091",
            "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0.5",
        }
    )
    assert cfg.serving_port == 18012 and cfg.user_port == 18080 and cfg.max_concurrency == 3
    assert (cfg.revision_timeout, cfg.response_start_timeout, cfg.idle_timeout) == (10, 2, 1.5)
    assert (cfg.namespace, cfg.service, cfg.configuration, cfg.revision, cfg.pod, cfg.pod_ip) == (
        "ns",
        "svc",
        "cfg",
        "rev-1",
        "pod-a",
        "10.0.0.1",
    )
    assert (cfg.admin_port, cfg.metrics_port, cfg.user_metrics_port, cfg.drain_quiet_period) == (
        18022,
        19090,
        19091,
        0.5,
    )


@pytest.mark.parametrize(
    ("env", "match"),
    [
        pytest.param({"CONTAINER_CONCURRENCY": "many"}, "CONTAINER_CONCURRENCY='many'", id="cc-text"),
        pytest.param(
            {"CONTAINER_CONCURRENCY": "-1"}, "CONTAINER_CONCURRENCY='-1' is out of range", id="cc-neg"
        ),
        pytest.param({"USER_PORT": "0"}, "USER_PORT='0' is out of range", id="user-port-0"),
        pytest.param({"QUEUE_SERVING_PORT": "70000"}, "QUEUE_SERVING_PORT='70000'", id="port-big"),
        pytest.param(
            {"REVISION_TIMEOUT_SECONDS": "5m"}, "REVISION_TIMEOUT_SECONDS='5m' is not a number", id="to"
        ),
        pytest.param({"REVISION_IDLE_TIMEOUT_SECONDS": "-2"}, "REVISION_IDLE_TIMEOUT_SECONDS", id="idle-neg"),
        pytest.param(
            {"QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "x"}, "QUEUE_DRAIN_QUIET_PERIOD_SECONDS", id="quiet"
        ),
        pytest.param(
            {"QUEUE_METRICS_PORT": "8012"},
            "QUEUE_METRICS_PORT=8012 is already used by QUEUE_SERV",
            id="port-clash",
        ),
        pytest.param({"USER_PORT": "8012"}, "QUEUE_SERVING_PORT=8012 equals USER_PORT", id="self-loop"),
        pytest.param({"ZEROSCALE_NATIVE": "ture"}, "ZEROSCALE_NATIVE='ture' is not a boolean", id="native"),
        pytest.param(
            {"SERVING_READINESS_PROBE": "{"}, "SERVING_READINESS_PROBE is not valid JSON", id="probe-json"
        ),
        pytest.param(
            {"SERVING_READINESS_PROBE": "{}"}, "SERVING_READINESS_PROBE has no httpGet", id="probe-empty"
        ),
        pytest.param(
            {"SERVING_READINESS_PROBE": '{"tcpSocket": {"port": 99999}}'},
            "SERVING_READINESS_PROBE.tcpSocket.port=99999",
            id="probe-port",
        ),
        pytest.param(
            {"SERVING_READINESS_PROBE": '{"httpGet": {"scheme": "FTP"}}'},
            "SERVING_READINESS_PROBE.httpGet.scheme='FTP'",
            id="probe-scheme",
        ),
        pytest.param(
            {"SERVING_READINESS_PROBE": '[{"tcpSocket": {}}, {"periodSeconds": "x", "tcpSocket": {}}]'},
            r"SERVING_READINESS_PROBE\[1\].periodSeconds='x'",
            id="probe-list-item",
        ),
    ],
)
def test_malformed_values_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QueueProxyConfig.from_env(env)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        pytest.param(
            '{"tcpSocket": {"port": 8080, "host": "127.0.0.1"}, "successThreshold": 1}',
            (ProbeSpec("tcp", port=8080),),
            id="tcp",
        ),
        pytest.param(
            '{"httpGet": {"path": "healthz", "port": 8080, "scheme": "HTTP",'
            ' "httpHeaders": [{"name": "X-A", "value": "1"}]}, "periodSeconds": 5}',
            (
                ProbeSpec(
                    "http",
                    port=8080,
                    path="/healthz",
                    headers=(("X-A", "1"),),
                    period_seconds=5,
                    timeout_seconds=1,
                ),
            ),
            id="http-periodic-gets-1s-timeout",
        ),
        pytest.param('{"exec": {"command": ["true"]}}', (ProbeSpec("tcp"),), id="exec-becomes-tcp"),
        pytest.param('{"tcpSocket": {"port": "http"}}', (ProbeSpec("tcp"),), id="named-port-is-user-port"),
        pytest.param(
            '[{"tcpSocket": {}}, {"httpGet": {"port": 9000}}]',
            (ProbeSpec("tcp"), ProbeSpec("http", port=9000)),
            id="multi-container",
        ),
    ],
)
def test_readiness_probe_parsing(raw: str, want: tuple[ProbeSpec, ...]) -> None:
    assert parse_readiness_probe(raw) == want
    assert want[0].aggressive == (want[0].period_seconds == 0)


def test_start_up_stops_on_a_malformed_value() -> None:
    env = {"PATH": "/usr/bin:/bin", "CONTAINER_CONCURRENCY": "lots", "QUEUE_BIND_ADDRESS": "127.0.0.1"}
    out = subprocess.run(
        [sys.executable, "-m", "queueproxy"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "CONTAINER_CONCURRENCY='lots'" in out.stderr
    assert "Traceback" not in out.stderr


def test_start_up_stops_when_a_port_is_taken() -> None:
    import socket

    from tests.conftest import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "PATH": "/usr/bin:/bin",
            "QUEUE_BIND_ADDRESS": "127.0.0.1",
            "QUEUE_SERVING_PORT": str(free_port()),
            "QUEUE_ADMIN_PORT": str(port),
            "QUEUE_METRICS_PORT": str(free_port()),
            "USER_METRICS_PORT": str(free_port()),
        }
        out = subprocess.run(
            [sys.executable, "-m", "queueproxy"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode != 0
    assert "cannot listen" in out.stderr and str(port) in out.stderr
