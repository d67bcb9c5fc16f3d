"""The config-autoscaler ConfigMap and the autoscaling.knative.dev/* annotations, with Knative's defaults.

``defaults()`` -> ``from_mapping(data)`` -> ``validate(cfg)``: a pure function of a string map. A bad
value raises :class:`ConfigError` naming the key, the value and what is allowed, e.g.
``config-autoscaler: stable-window=3s is out of range: must be in [6s, 1h], whole seconds``.

Per revision, :func:`resolve` turns annotations + containerConcurrency into everything the autoscaler
needs (Knative's ResolveMetricTarget, MakeDecider and MakeMetric):

* concurrency: total = containerConcurrency (0 -> container-concurrency-target-default, 100),
  utilization = container-concurrency-target-percentage (70 %); rps: total = 200, utilization 70 %.
* a ``target`` annotation replaces total, capped at containerConcurrency when that is set;
  ``target-utilization-percentage`` replaces the utilization.
* target = max(0.01, total * utilization): cc 0 -> 70 of 100, cc 10 -> 7 of 10, rps -> 140 of 200.
* panic window = round(stable * panic-window-percentage / 100) to whole seconds (halves away from
  zero), at least 1 s: 60 s at 10 % -> 6 s; 15 s at 10 % -> 2 s (1.5 rounds up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.errors import ConfigError

from .configmap import (
    ANNOTATION_PREFIX,
    BUCKET_SIZE,
    KPA_CLASS,
    PANIC_THRESHOLD_PCT,
    PANIC_WINDOW_PCT,
    PARSERS,
    TARGET_MIN,
    WINDOW_MAX,
    WINDOW_MIN,
    AutoscalerConfig,
    defaults,
    from_mapping,
    range_error,
    validate,
    whole_seconds,
)
from .decider import DeciderSpec

__all__ = [
    "ANNOTATION_PREFIX",
    "KPA_CLASS",
    "Annotations",
    "AutoscalerConfig",
    "RevisionScaling",
    "defaults",
    "from_mapping",
    "initial_scale",
    "panic_window",
    "parse_annotations",
    "resolve",
    "resolve_metric_target",
    "validate",
]

# ---------------------------------------------------------------------------------------------------
# Annotations


@dataclass(frozen=True, slots=True)
class Annotations:
    """autoscaling.knative.dev/* annotations of one revision, parsed; None = not set."""

    autoscaler_class: str = KPA_CLASS
    metric: str = "concurrency"
    target: float | None = None
    target_utilization_percentage: float | None = None
    target_burst_capacity: float | None = None
    window: float | None = None
    panic_window_percentage: float | None = None
    panic_threshold_percentage: float | None = None
    min_scale: int | None = None
    max_scale: int | None = None
    initial_scale: int | None = None
    activation_scale: int | None = None
    scale_down_delay: float | None = None
    scale_to_zero_pod_retention_period: float | None = None
    metric_aggregation_algorithm: str = "linear"
    ignored: tuple[str, ...] = field(default=())  # unknown keys under the prefix (typos), for a warning


_ANN: dict[str, tuple[str, str]] = {
    "class": ("autoscaler_class", "str"),
    "metric": ("metric", "str"),
    "target": ("target", "float"),
    "target-utilization-percentage": ("target_utilization_percentage", "float"),
    "target-burst-capacity": ("target_burst_capacity", "float"),
    "window": ("window", "duration"),
    "panic-window-percentage": ("panic_window_percentage", "float"),
    "panic-threshold-percentage": ("panic_threshold_percentage", "float"),
    "min-scale": ("min_scale", "int"),
    "max-scale": ("max_scale", "int"),
    "initial-scale": ("initial_scale", "int"),
    "activation-scale": ("activation_scale", "int"),
    "scale-down-delay": ("scale_down_delay", "duration"),
    "scale-to-zero-pod-retention-period": ("scale_to_zero_pod_retention_period", "duration"),
    "metric-aggregation-algorithm": ("metric_aggregation_algorithm", "str"),
}
# Knative's older camelCase spellings (minScale, targetBurstCapacity, ...) are still accepted.
_ALIASES = {"".join(w if i == 0 else w.capitalize() for i, w in enumerate(k.split("-"))): k for k in _ANN}
_ALGORITHMS = {
    "linear": "linear",
    "weighted-exponential": "weighted-exponential",
    "weightedexponential": "weighted-exponential",
}


def parse_annotations(annotations: Mapping[str, str], cfg: AutoscalerConfig | None = None) -> Annotations:
    """Parse and validate the autoscaling annotations; other annotations are ignored."""
    cfg = cfg or defaults()
    values: dict[str, object] = {}
    ignored: list[str] = []
    given: dict[str, str] = {}
    for full, raw in annotations.items():
        if not full.startswith(ANNOTATION_PREFIX):
            continue
        short = full[len(ANNOTATION_PREFIX) :]
        short = _ALIASES.get(short, short)
        if short not in _ANN:
            ignored.append(full)
            continue
        name, kind = _ANN[short]
        given[short] = str(raw)
        try:
            values[name] = PARSERS[kind](str(raw))
        except ValueError as e:
            raise ConfigError(f"annotation {ANNOTATION_PREFIX}{short}: {e}") from None
    algo = str(values.get("metric_aggregation_algorithm", "linear"))
    if algo.lower() not in _ALGORITHMS:
        raise ConfigError(
            f"annotation {ANNOTATION_PREFIX}metric-aggregation-algorithm={algo!r}:"
            " must be linear or weighted-exponential"
        )
    values["metric_aggregation_algorithm"] = _ALGORITHMS[algo.lower()]
    ann = Annotations(**values, ignored=tuple(sorted(ignored)))  # type: ignore[arg-type]
    _validate_annotations(ann, cfg, given)
    return ann


def _validate_annotations(a: Annotations, cfg: AutoscalerConfig, raw: Mapping[str, str]) -> None:
    def bad(key: str, value: object, allowed: str) -> ConfigError:
        return range_error(key, value, allowed, where="annotation ", raw=raw)

    if a.autoscaler_class != KPA_CLASS:
        raise ConfigError(
            f"annotation {ANNOTATION_PREFIX}class={a.autoscaler_class!r} is not supported:"
            f" must be {KPA_CLASS}"
        )
    if a.metric not in ("concurrency", "rps"):
        raise ConfigError(f"annotation {ANNOTATION_PREFIX}metric={a.metric!r}: must be concurrency or rps")
    if a.target is not None and a.target < TARGET_MIN:
        raise bad("target", a.target, f">= {TARGET_MIN}")
    if a.target_utilization_percentage is not None and not 1 <= a.target_utilization_percentage <= 100:
        raise bad("target-utilization-percentage", a.target_utilization_percentage, "in [1, 100]")
    tbc = a.target_burst_capacity
    if tbc is not None and tbc < 0 and tbc != -1:
        raise bad("target-burst-capacity", tbc, ">= 0, or -1 for unlimited")
    if a.window is not None and (not WINDOW_MIN <= a.window <= WINDOW_MAX or not whole_seconds(a.window)):
        raise bad("window", a.window, "in [6s, 1h], whole seconds")
    lo, hi = PANIC_WINDOW_PCT
    if a.panic_window_percentage is not None and not lo <= a.panic_window_percentage <= hi:
        raise bad("panic-window-percentage", a.panic_window_percentage, f"in [{lo:g}, {hi:g}]")
    lo, hi = PANIC_THRESHOLD_PCT
    if a.panic_threshold_percentage is not None and not lo <= a.panic_threshold_percentage <= hi:
        raise bad("panic-threshold-percentage", a.panic_threshold_percentage, f"in [{lo:g}, {hi:g}]")
    if a.min_scale is not None and a.min_scale < 0:
        raise bad("min-scale", a.min_scale, ">= 0")
    if a.max_scale is not None:
        if a.max_scale < 0 or (cfg.max_scale_limit > 0 and a.max_scale > cfg.max_scale_limit):
            limit = f" and <= max-scale-limit ({cfg.max_scale_limit})" if cfg.max_scale_limit > 0 else ""
            raise bad("max-scale", a.max_scale, f">= 0{limit}")
    lo_s = a.min_scale if a.min_scale is not None else cfg.min_scale
    hi_s = a.max_scale if a.max_scale is not None else cfg.max_scale
    if hi_s > 0 and lo_s > hi_s:
        raise bad("min-scale", lo_s, f"<= max-scale ({hi_s})")
    if a.initial_scale is not None and (
        a.initial_scale < 0 or (a.initial_scale == 0 and not cfg.allow_zero_initial_scale)
    ):
        raise bad("initial-scale", a.initial_scale, ">= 1 (>= 0 when allow-zero-initial-scale is true)")
    if a.activation_scale is not None and a.activation_scale < 1:
        raise bad("activation-scale", a.activation_scale, ">= 1")
    d = a.scale_down_delay
    if d is not None and (not 0 <= d <= WINDOW_MAX or not whole_seconds(d)):
        raise bad("scale-down-delay", d, "in [0s, 1h], whole seconds")
    r = a.scale_to_zero_pod_retention_period
    if r is not None and not 0 <= r <= WINDOW_MAX:
        raise bad("scale-to-zero-pod-retention-period", r, "in [0s, 1h]")


# ---------------------------------------------------------------------------------------------------
# Per-revision resolution


def resolve_metric_target(
    a: Annotations, container_concurrency: int, cfg: AutoscalerConfig
) -> tuple[float, float]:
    """(target, total) per Knative's ResolveMetricTarget."""
    if a.metric == "rps":
        total = cfg.rps_target_default
        tu = cfg.target_utilization
    else:
        total = (
            float(container_concurrency)
            if container_concurrency > 0
            else cfg.container_concurrency_target_default
        )
        tu = cfg.container_concurrency_target_fraction
    if a.target is not None:
        total = a.target
        if a.metric == "concurrency" and container_concurrency > 0:
            total = min(a.target, float(container_concurrency))
    if a.target_utilization_percentage is not None:
        tu = a.target_utilization_percentage / 100.0
    return max(TARGET_MIN, total * tu), total


def panic_window(stable_window: float, percentage: float) -> float:
    """Whole seconds, halves away from zero (Go's Duration.Round), at least one bucket (1 s)."""
    ns = int(stable_window * 1e9 * percentage / 100.0)  # Go: float -> Duration truncates
    secs = (ns + 500_000_000) // 1_000_000_000
    return max(float(secs), BUCKET_SIZE)


def initial_scale(a: Annotations, cfg: AutoscalerConfig) -> int:
    """Knative's GetInitialScale: the annotation unless absent (or 0 while zero is not allowed)."""
    if a.initial_scale is None or (a.initial_scale == 0 and not cfg.allow_zero_initial_scale):
        return cfg.initial_scale
    return a.initial_scale


@dataclass(frozen=True, slots=True)
class RevisionScaling:
    """Everything the autoscaler needs for one revision, resolved from config + annotations."""

    spec: DeciderSpec
    stable_window: float
    panic_window: float
    aggregation: str  # "linear" | "weighted-exponential"
    min_scale: int
    max_scale: int  # 0 = no cap
    initial_scale: int
    scale_to_zero_pod_retention_period: float
    config: AutoscalerConfig
    annotations: Annotations


def resolve(
    cfg: AutoscalerConfig,
    annotations: Mapping[str, str] | Annotations,
    container_concurrency: int = 0,
    *,
    reachable: bool = True,
) -> RevisionScaling:
    if container_concurrency < 0:
        raise ConfigError(f"containerConcurrency={container_concurrency} is out of range: must be >= 0")
    a = annotations if isinstance(annotations, Annotations) else parse_annotations(annotations, cfg)
    target, total = resolve_metric_target(a, container_concurrency, cfg)
    stable = a.window if a.window is not None else cfg.stable_window
    pct = a.panic_window_percentage if a.panic_window_percentage is not None else cfg.panic_window_percentage
    threshold = (
        a.panic_threshold_percentage
        if a.panic_threshold_percentage is not None
        else (cfg.panic_threshold_percentage)
    )
    spec = DeciderSpec(
        target_value=target,
        total_value=total,
        target_burst_capacity=a.target_burst_capacity
        if a.target_burst_capacity is not None
        else (cfg.target_burst_capacity),
        panic_threshold=threshold / 100.0,
        max_scale_up_rate=cfg.max_scale_up_rate,
        max_scale_down_rate=cfg.max_scale_down_rate,
        activator_capacity=cfg.activator_capacity,
        stable_window=stable,
        scale_down_delay=a.scale_down_delay if a.scale_down_delay is not None else cfg.scale_down_delay,
        reachable=reachable,
        activation_scale=a.activation_scale if a.activation_scale is not None else 1,
        scaling_metric=a.metric,
    )
    return RevisionScaling(
        spec=spec,
        stable_window=stable,
        panic_window=panic_window(stable, pct),
        aggregation=a.metric_aggregation_algorithm,
        # Knative's ScaleBounds: an unreachable revision has no minimum.
        min_scale=(a.min_scale if a.min_scale is not None else cfg.min_scale) if reachable else 0,
        max_scale=a.max_scale if a.max_scale is not None else cfg.max_scale,
        initial_scale=initial_scale(a, cfg),
        scale_to_zero_pod_retention_period=(
            a.scale_to_zero_pod_retention_period
            if a.scale_to_zero_pod_retention_period is not None
            else cfg.scale_to_zero_pod_retention_period
        ),
        config=cfg,
        annotations=a,
    )
