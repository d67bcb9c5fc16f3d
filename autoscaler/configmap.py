"""config-autoscaler, Knative's autoscaler ConfigMap: keys, defaults, ranges (pure).

``defaults()`` -> ``from_mapping(data)`` -> ``validate(cfg)``: a pure function of a string map. A bad
value raises :class:`ConfigError` naming the key, the value and what is allowed, e.g.
``config-autoscaler: stable-window=3s is out of range: must be in [6s, 1h], whole seconds``.
Values are shown as the user wrote them (``2h``, not 7200). Import these from :mod:`autoscaler.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from serving.errors import ConfigError

from .goparse import format_duration, parse_bool, parse_duration, parse_float, parse_int32

__all__ = [
    "ANNOTATION_PREFIX",
    "KPA_CLASS",
    "AutoscalerConfig",
    "defaults",
    "from_mapping",
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

PARSERS = {
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
            values[name] = PARSERS[kind](str(raw))
        except ValueError as e:
            raise ConfigError(f"config-autoscaler: {key}: {e}") from None
    cfg = replace(base or defaults(), **values)  # type: ignore[arg-type]
    # Percent or fraction: values <= 1.0 are taken as fractions, for legacy reasons.
    if cfg.container_concurrency_target_fraction > 1.0:
        cfg = replace(
            cfg, container_concurrency_target_fraction=cfg.container_concurrency_target_fraction / 100
        )
    return validate(cfg, raw=data)


def range_error(
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


def whole_seconds(v: float) -> bool:
    return abs(v - round(v)) < 1e-9


def validate(cfg: AutoscalerConfig, raw: Mapping[str, str] | None = None) -> AutoscalerConfig:
    """Check every range; ``raw`` (the ConfigMap data, when known) only improves the messages."""
    k = _FIELD_KEY

    def _bad(key: str, value: object, allowed: str) -> ConfigError:
        return range_error(key, value, allowed, raw=raw)

    if not cfg.scale_to_zero_grace_period > 0:
        raise _bad(k["scale_to_zero_grace_period"], cfg.scale_to_zero_grace_period, "> 0s")
    if cfg.scale_down_delay < 0 or not whole_seconds(cfg.scale_down_delay):
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
    if not WINDOW_MIN <= sw <= WINDOW_MAX or not whole_seconds(sw):
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
