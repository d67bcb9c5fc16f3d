"""Go's value syntaxes that Knative ConfigMaps and annotations use: durations, ints, floats, booleans."""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_bool", "parse_duration", "parse_float", "parse_int32"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(raw: str) -> float:
    """Seconds from Go's time.ParseDuration syntax ("60s", "1m30s", "1.5h", "0"); ValueError otherwise."""
    s = raw.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"{raw!r} is not a duration (use e.g. 60s, 1m30s, 1h)")
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"{raw!r} is not a duration (use e.g. 60s, 1m30s, 1h)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    # Go durations are whole nanoseconds.
    return sign * round(total * 1e9) / 1e9


def format_duration(seconds: float) -> str:
    """60 -> "60s", 3600 -> "1h0m0s"-free short form: whole seconds as "Ns", else "N.NNNs"."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


def parse_int32(raw: str) -> int:
    s = raw.strip()
    if not re.fullmatch(r"[+-]?\d+", s):
        raise ValueError(f"{raw!r} is not a whole number")
    v = int(s, 10)
    if not -(2**31) <= v < 2**31:
        raise ValueError(f"{raw!r} does not fit in 32 bits")
    return v


def parse_float(raw: str) -> float:
    try:
        v = float(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{raw!r} is not a finite number")
    return v


_TRUE = {"true", "t", "1"}
_FALSE = {"false", "f", "0"}


def parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean (use true or false)")
