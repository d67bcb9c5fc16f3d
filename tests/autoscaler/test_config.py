"""config-autoscaler keys and autoscaling.knative.dev/* annotations: defaults, ranges, derivation."""

from __future__ import annotations

import pytest

from autoscaler.config import (
    AutoscalerConfig,
    defaults,
    from_mapping,
    panic_window,
    parse_annotations,
    resolve,
)
from serving.errors import ConfigError

P = "autoscaling.knative.dev/"


def test_knative_defaults() -> None:
    c = defaults()
    assert c.target_burst_capacity == 211
    assert (c.stable_window, c.panic_window_percentage, c.panic_threshold_percentage) == (60, 10, 200)
    assert (c.max_scale_up_rate, c.max_scale_down_rate, c.activator_capacity) == (1000, 2, 100)
    assert (c.scale_to_zero_grace_period, c.scale_to_zero_pod_retention_period, c.scale_down_delay) == (
        30,
        0,
        0,
    )
    assert (c.container_concurrency_target_fraction, c.container_concurrency_target_default) == (0.7, 100)
    assert (c.rps_target_default, c.initial_scale, c.enable_scale_to_zero) == (200, 1, True)


def test_from_mapping_reads_every_kind() -> None:
    c = from_mapping(
        {
            "container-concurrency-target-percentage": "80",
            "stable-window": "2m",
            "scale-to-zero-grace-period": "45s",
            "enable-scale-to-zero": "false",
            "target-burst-capacity": "-1",
            "max-scale": "7",
            "_example": "ignored: Knative ConfigMaps carry a commented example",
        }
    )
    assert c.container_concurrency_target_fraction == pytest.approx(0.8)
    assert (c.stable_window, c.scale_to_zero_grace_period) == (120, 45)
    assert (c.enable_scale_to_zero, c.target_burst_capacity, c.max_scale) == (False, -1, 7)
    assert (
        from_mapping({"container-concurrency-target-percentage": "0.5"}).container_concurrency_target_fraction
        == 0.5
    )


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        pytest.param("stable-window", "5s", "must be in [6s, 1h]", id="window-too-short"),
        pytest.param("stable-window", "2h", "must be in [6s, 1h]", id="window-too-long"),
        pytest.param("stable-window", "6500ms", "whole seconds", id="window-fraction"),
        pytest.param("stable-window", "60", "not a duration", id="window-no-unit"),
        pytest.param("target-burst-capacity", "-2", "-1 for unlimited", id="tbc-negative"),
        pytest.param("max-scale-up-rate", "1", "> 1.0", id="up-rate"),
        pytest.param("max-scale-down-rate", "abc", "not a number", id="down-rate-text"),
        pytest.param("panic-window-percentage", "0", "[1, 100]", id="panic-window-pct"),
        pytest.param("panic-threshold-percentage", "100", "[110, 1000]", id="panic-threshold"),
        pytest.param("initial-scale", "0", "allow-zero-initial-scale", id="initial-zero"),
        pytest.param("scale-to-zero-grace-period", "0s", "> 0s", id="grace-zero"),
        pytest.param("scale-down-delay", "-1s", ">= 0s", id="delay-negative"),
        pytest.param("activator-capacity", "0.5", ">= 1", id="activator-capacity"),
        pytest.param("enable-scale-to-zero", "maybe", "not a boolean", id="bool"),
        pytest.param("container-concurrency-target-percentage", "0", "(0, 100]", id="utilization-zero"),
        pytest.param("requests-per-second-target-default", "0.001", ">= 0.01", id="rps-target"),
        pytest.param("min-scale", "3.5", "not a whole number", id="int-text"),
    ],
)
def test_configmap_errors_name_key_value_and_range(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping({key: value})
    msg = str(e.value)
    assert key in msg and fragment in msg
    assert value.lstrip("-").rstrip("s") in msg or "not a" in msg


def test_max_scale_limit() -> None:
    with pytest.raises(ConfigError, match="max-scale=0"):
        from_mapping({"max-scale-limit": "10"})
    assert from_mapping({"max-scale-limit": "10", "max-scale": "10"}).max_scale == 10
    cfg = from_mapping({"max-scale-limit": "10", "max-scale": "5"})
    with pytest.raises(ConfigError, match="max-scale"):
        parse_annotations({P + "max-scale": "11"}, cfg)


@pytest.mark.parametrize(
    ("annotations", "cc", "target", "total"),
    [
        pytest.param({}, 0, 70, 100, id="cc0-default"),
        pytest.param({}, 10, 7, 10, id="cc10"),
        pytest.param({P + "metric": "rps"}, 0, 140, 200, id="rps-default"),
        pytest.param({P + "target": "50"}, 10, 7, 10, id="target-capped-by-cc"),
        pytest.param({P + "target": "5"}, 10, 3.5, 5, id="target-below-cc"),
        pytest.param({P + "target": "50"}, 0, 35, 50, id="target-no-cc"),
        pytest.param({P + "target-utilization-percentage": "50"}, 0, 50, 100, id="utilization"),
        pytest.param({P + "metric": "rps", P + "target": "10"}, 1, 7, 10, id="rps-target-ignores-cc"),
        pytest.param(
            {P + "target": "0.01", P + "target-utilization-percentage": "1"}, 0, 0.01, 0.01, id="target-floor"
        ),
    ],
)
def test_target_resolution(annotations: dict[str, str], cc: int, target: float, total: float) -> None:
    r = resolve(defaults(), annotations, cc)
    assert r.spec.target_value == pytest.approx(target)
    assert r.spec.total_value == pytest.approx(total)


@pytest.mark.parametrize(
    ("stable", "pct", "expected"),
    [
        pytest.param(60, 10, 6, id="default-6s"),
        pytest.param(15, 10, 2, id="1.5-rounds-up"),
        pytest.param(25, 10, 3, id="2.5-rounds-away-from-zero"),
        pytest.param(6, 1, 1, id="min-1s"),
        pytest.param(6, 10, 1, id="0.6-rounds-to-1"),
        pytest.param(3600, 100, 3600, id="whole-window"),
        pytest.param(64, 10, 6, id="6.4-rounds-down"),
    ],
)
def test_panic_window(stable: float, pct: float, expected: float) -> None:
    assert panic_window(stable, pct) == expected


def test_resolve_reads_every_annotation() -> None:
    r = resolve(
        defaults(),
        {
            P + "window": "20s",
            P + "panic-window-percentage": "25",
            P + "panic-threshold-percentage": "300",
            P + "target-burst-capacity": "0",
            P + "minScale": "1",  # Knative's older camelCase spelling
            P + "max-scale": "4",
            P + "initial-scale": "2",
            P + "activation-scale": "2",
            P + "scale-down-delay": "10s",
            P + "scale-to-zero-pod-retention-period": "1m",
            P + "metric-aggregation-algorithm": "weightedExponential",
            P + "min-scal": "3",  # typo: reported, not applied
            "other.io/x": "y",
        },
        0,
    )
    assert (r.stable_window, r.panic_window) == (20, 5)
    assert r.spec.panic_threshold == 3.0
    assert r.spec.target_burst_capacity == 0
    assert (r.min_scale, r.max_scale, r.initial_scale, r.spec.activation_scale) == (1, 4, 2, 2)
    assert (r.spec.scale_down_delay, r.scale_to_zero_pod_retention_period) == (10, 60)
    assert r.aggregation == "weighted-exponential"
    assert r.annotations.ignored == (P + "min-scal",)


def test_unreachable_revision_has_no_minimum() -> None:
    r = resolve(defaults(), {P + "min-scale": "3"}, 0, reachable=False)
    assert (r.min_scale, r.spec.reachable) == (0, False)


@pytest.mark.parametrize(
    ("annotations", "fragment"),
    [
        pytest.param({P + "window": "5s"}, "window=5s is out of range: must be in [6s, 1h]", id="window"),
        pytest.param({P + "min-scale": "-1"}, "min-scale=-1", id="min-negative"),
        pytest.param(
            {P + "min-scale": "5", P + "max-scale": "2"},
            "min-scale=5 is out of range: must be <= max-scale",
            id="min-above-max",
        ),
        pytest.param({P + "initial-scale": "0"}, "initial-scale=0", id="initial-zero-not-allowed"),
        pytest.param({P + "class": "hpa.autoscaling.knative.dev"}, "class=", id="hpa-class"),
        pytest.param({P + "metric": "cpu"}, "metric='cpu'", id="metric"),
        pytest.param(
            {P + "metric-aggregation-algorithm": "median"}, "metric-aggregation-algorithm", id="algo"
        ),
        pytest.param({P + "panic-threshold-percentage": "100"}, "[110, 1000]", id="threshold"),
        pytest.param({P + "target": "0"}, "target=0 is out of range", id="target-zero"),
        pytest.param({P + "target": "lots"}, "target: 'lots' is not a number", id="target-text"),
        pytest.param({P + "activation-scale": "0"}, "activation-scale=0", id="activation"),
        pytest.param({P + "scale-down-delay": "1.5s"}, "whole seconds", id="delay-fraction"),
        pytest.param({P + "target-burst-capacity": "-5"}, "-1 for unlimited", id="tbc"),
    ],
)
def test_annotation_errors(annotations: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_annotations(annotations, defaults())
    assert fragment in str(e.value)
    assert "autoscaling.knative.dev/" in str(e.value)


def test_initial_scale_zero_when_allowed() -> None:
    cfg = from_mapping({"allow-zero-initial-scale": "true"})
    assert resolve(cfg, {P + "initial-scale": "0"}).initial_scale == 0
    assert resolve(AutoscalerConfig(), {}).initial_scale == 1


def test_negative_container_concurrency() -> None:
    with pytest.raises(ConfigError, match="containerConcurrency=-1"):
        resolve(defaults(), {}, -1)
