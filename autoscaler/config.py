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
from dataclasses import dataclass, field, replace

from serving.errors import ConfigError

from .decider import DeciderSpec
from .goparse import format_duration, parse_bool, parse_duration, parse_float, parse_int32

__all__ = [
    "ANNOTATION_PREFIX",
    "KPA_CLASS",
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

ANNOTATION_PREFIX = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"
TARGET_MIN = 0.01
WINDOW_MIN, WINDOW_MAX = 6.0, 3600.0
PANIC_WINDOW_PCT = (1.0, 100.0)
PANIC_THRESHOLD_PCT = (110.0, 1000.0)
RPS_TARGET_UTILIZATION = 0.7  # Knative's internal TargetUtilization, not read from the ConfigMap
BUCKET_SIZE = 1.0


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    """config-autoscaler, parsed. Durations in seconds; percentages as Knative keeps them."""

    enable_scale_to_zero: bool = True
    allow_zero_initial_scale: bool = False
    container_concurrency_target_fraction: float = 0.7
    container_concurrency_target_default: float = 100.0
    rps_target_default: float = 200.0
    target_utilization: float = RPS_TARGET_UTILIZATION
    target_burst_capacity: float = 211.0
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_period: float = 30.0
    scale_to_zero_pod_retention_period: float = 0.0
    scale_down_delay: float = 0.0
    activator_capacity: float = 100.0
    initial_scale: int = 1
    min_scale: int = 0
    max_scale: int = 0
    max_scale_limit: int = 0
    pod_autoscaler_class: str = KPA_CLASS
    # Knative's progress deadline (config-deployment) + 30 s: how long activation may take.
    activation_timeout: float = 630.0


# ConfigMap key -> (field, parser)
_KEYS: dict[str, tuple[str, str]] = {
    "enable-scale-to-zero": ("enable_scale_to_zero", "bool"),
    "allow-zero-initial-scale": ("allow_zero_initial_scale", "bool"),
    "container-concurrency-target-percentage": ("container_concurrency_target_fraction", "float"),
    "container-concurrency-target-default": ("container_concurrency_target_default", "float"),
    "requests-per-second-target-default": ("rps_target_default", "float"),
    "target-burst-capacity": ("target_burst_capacity", "float"),
    "stable-window": ("stable_window", "duration"),
    "panic-window-percentage": ("panic_window_percentage", "float"),
    "panic-threshold-percentage": ("panic_threshold_percentage", "float"),
    "max-scale-up-rate": ("max_scale_up_rate", "float"),
    "max-scale-down-rate": ("max_scale_down_rate", "float"),
    "scale-to-zero-grace-period": ("scale_to_zero_grace_period", "duration"),
    "scale-to-zero-pod-retention-period": ("scale_to_zero_pod_retention_period", "duration"),
    "scale-down-delay": ("scale_down_delay", "duration"),
    "activator-capacity": ("activator_capacity", "float"),
    "initial-scale": ("initial_scale", "int"),
    "min-scale": ("min_scale", "int"),
    "max-scale": ("max_scale", "int"),
    "max-scale-limit": ("max_scale_limit", "int"),
    "pod-autoscaler-class": ("pod_autoscaler_class", "str"),
}
_FIELD_KEY = {f: k for k, (f, _) in _KEYS.items()}

_PARSERS = {
    "bool": parse_bool,
    "float": parse_float,
    "int": parse_int32,
    "duration": parse_duration,
    "str": lambda raw: raw.strip(),
}


def defaults() -> AutoscalerConfig:
    return AutoscalerConfig()


def from_mapping(data: Mapping[str, str], base: AutoscalerConfig | None = None) -> AutoscalerConfig:
    """Parse config-autoscaler data over ``base`` (defaults); unknown keys (e.g. _example) are ignored."""
    values: dict[str, object] = {}
    for key, raw in data.items():
        if key not in _KEYS:
            continue
        name, kind = _KEYS[key]
        try:
            values[name] = _PARSERS[kind](str(raw))
        except ValueError as e:
            raise ConfigError(f"config-autoscaler: {key}: {e}") from None
    cfg = replace(base or defaults(), **values)  # type: ignore[arg-type]
    # Percent or fraction: values <= 1.0 are taken as fractions, for legacy reasons.
    if cfg.container_concurrency_target_fraction > 1.0:
        cfg = replace(
            cfg, container_concurrency_target_fraction=cfg.container_concurrency_target_fraction / 100
        )
    return validate(cfg, raw=data)


def _bad_at(
    key: str,
    value: object,
    allowed: str,
    where: str = "config-autoscaler: ",
    raw: Mapping[str, str] | None = None,
) -> ConfigError:
    """The message shows the value as the user wrote it when we have it ("2h", not 7200)."""
    if raw is not None and key in raw:
        shown = str(raw[key]).strip()
    elif isinstance(value, float) and key in _DURATION_KEYS:
        shown = format_duration(value)
    else:
        shown = str(value)
    label = key if where.startswith("config") else ANNOTATION_PREFIX + key
    return ConfigError(f"{where}{label}={shown} is out of range: must be {allowed}")


_DURATION_KEYS = {k for k, (_, kind) in _KEYS.items() if kind == "duration"} | {
    "window",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
}


def _whole_seconds(v: float) -> bool:
    return abs(v - round(v)) < 1e-9


def validate(cfg: AutoscalerConfig, raw: Mapping[str, str] | None = None) -> AutoscalerConfig:
    """Check every range; ``raw`` (the ConfigMap data, when known) only improves the messages."""
    k = _FIELD_KEY

    def _bad(key: str, value: object, allowed: str) -> ConfigError:
        return _bad_at(key, value, allowed, raw=raw)

    if not cfg.scale_to_zero_grace_period > 0:
        raise _bad(k["scale_to_zero_grace_period"], cfg.scale_to_zero_grace_period, "> 0s")
    if cfg.scale_down_delay < 0 or not _whole_seconds(cfg.scale_down_delay):
        raise _bad(k["scale_down_delay"], cfg.scale_down_delay, ">= 0s, whole seconds")
    if cfg.scale_to_zero_pod_retention_period < 0:
        raise _bad(k["scale_to_zero_pod_retention_period"], cfg.scale_to_zero_pod_retention_period, ">= 0s")
    if cfg.target_burst_capacity < 0 and cfg.target_burst_capacity != -1:
        raise _bad(k["target_burst_capacity"], cfg.target_burst_capacity, ">= 0, or -1 for unlimited")
    frac = cfg.container_concurrency_target_fraction
    if not 0 < frac <= 1:
        raise _bad(
            k["container_concurrency_target_fraction"], frac, "in (0, 100] percent (or (0, 1] fraction)"
        )
    if frac * cfg.container_concurrency_target_default < TARGET_MIN:
        raise ConfigError(
            "config-autoscaler: container-concurrency-target-percentage x"
            " container-concurrency-target-default"
            f" = {frac * cfg.container_concurrency_target_default:g} is out of range: must be >= {TARGET_MIN}"
        )
    if cfg.rps_target_default < TARGET_MIN:
        raise _bad(k["rps_target_default"], cfg.rps_target_default, f">= {TARGET_MIN}")
    if cfg.activator_capacity < 1:
        raise _bad(k["activator_capacity"], cfg.activator_capacity, ">= 1")
    if not cfg.max_scale_up_rate > 1:
        raise _bad(k["max_scale_up_rate"], cfg.max_scale_up_rate, "> 1.0")
    if not cfg.max_scale_down_rate > 1:
        raise _bad(k["max_scale_down_rate"], cfg.max_scale_down_rate, "> 1.0")
    sw = cfg.stable_window
    if not WINDOW_MIN <= sw <= WINDOW_MAX or not _whole_seconds(sw):
        raise _bad(k["stable_window"], sw, "in [6s, 1h], whole seconds")
    lo, hi = PANIC_WINDOW_PCT
    if not lo <= cfg.panic_window_percentage <= hi:
        raise _bad(k["panic_window_percentage"], cfg.panic_window_percentage, f"in [{lo:g}, {hi:g}]")
    lo, hi = PANIC_THRESHOLD_PCT
    if not lo <= cfg.panic_threshold_percentage <= hi:
        raise _bad(k["panic_threshold_percentage"], cfg.panic_threshold_percentage, f"in [{lo:g}, {hi:g}]")
    if cfg.initial_scale < 0 or (cfg.initial_scale == 0 and not cfg.allow_zero_initial_scale):
        raise _bad(k["initial_scale"], cfg.initial_scale, ">= 1 (>= 0 when allow-zero-initial-scale is true)")
    if cfg.max_scale_limit < 0:
        raise _bad(k["max_scale_limit"], cfg.max_scale_limit, ">= 0")
    min_max = 1 if cfg.max_scale_limit > 0 else 0
    if cfg.max_scale < min_max or (cfg.max_scale_limit > 0 and cfg.max_scale > cfg.max_scale_limit):
        raise _bad(k["max_scale"], cfg.max_scale, f"in [{min_max}, max-scale-limit ({cfg.max_scale_limit})]")
    if cfg.min_scale < 0 or (cfg.max_scale > 0 and cfg.min_scale > cfg.max_scale):
        raise _bad(k["min_scale"], cfg.min_scale, ">= 0 and <= max-scale when max-scale is set")
    return cfg


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
            values[name] = _PARSERS[kind](str(raw))
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
        return _bad_at(key, value, allowed, where="annotation ", raw=raw)

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
    if a.window is not None and (not WINDOW_MIN <= a.window <= WINDOW_MAX or not _whole_seconds(a.window)):
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
    if d is not None and (not 0 <= d <= WINDOW_MAX or not _whole_seconds(d)):
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
