"""Typed readers of YAML values that fail with the field's path (``spec.template.spec.containers[0]``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "FieldError",
    "check_keys",
    "dns1035_label",
    "dns1123_label",
    "go_duration_seconds",
    "read_bool",
    "read_int",
    "read_list",
    "read_mapping",
    "read_str",
    "read_str_list",
    "read_str_map",
]


class FieldError(ValueError):
    """A bad field: the document parser adds the file name and document index in front."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "empty"
    return type(value).__name__


def read_mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(path, f"expected a mapping, got {_kind(value)}")
    return value


def check_keys(obj: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in obj:
        if key not in allowed:
            prefix = f"{path}." if path else ""
            raise FieldError(f"{prefix}{key}", f"unknown field (expected one of: {', '.join(allowed)})")


def read_str(value: Any, path: str, *, required: bool = False, default: str = "") -> str:
    if value is None:
        if required:
            raise FieldError(path, "is required")
        return default
    if not isinstance(value, str):
        raise FieldError(path, f'expected a string, got {_kind(value)} {value!r}; quote it: "{value}"')
    if required and value == "":
        raise FieldError(path, "must not be empty")
    return value


def read_int(
    value: Any,
    path: str,
    *,
    default: int | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(path, f"expected a whole number, got {_kind(value)} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            raise FieldError(path, f"{value} is out of range: must be at least {minimum}")
        raise FieldError(path, f"{value} is out of range: must be between {minimum} and {maximum}")
    return value


def read_bool(value: Any, path: str, *, default: bool | None = None) -> bool | None:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FieldError(path, f"expected true or false, got {_kind(value)} {value!r}")
    return value


def read_list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(path, f"expected a list, got {_kind(value)}")
    return value


def read_str_list(value: Any, path: str) -> tuple[str, ...]:
    return tuple(read_str(v, f"{path}[{i}]") for i, v in enumerate(read_list(value, path)))


def read_str_map(value: Any, path: str) -> Mapping[str, str]:
    """Labels and annotations: Kubernetes wants string values, so `target: 10` must be `target: "10"`."""
    out: dict[str, str] = {}
    for key, v in read_mapping(value, path).items():
        if not isinstance(key, str):
            raise FieldError(f"{path}.{key}", "keys must be strings")
        if not isinstance(v, str):
            raise FieldError(
                f"{path}.{key}", f'expected a string, got {_kind(v)} {v!r}; quote it: {key}: "{v}"'
            )
        out[key] = v
    return MappingProxyType(out)


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def dns1035_label(value: str, path: str) -> str:
    """Service names: lower-case letters, digits and '-', starting with a letter, at most 63 characters."""
    if len(value) > 63 or not _DNS1035.match(value):
        raise FieldError(
            path,
            f"{value!r} is not a valid name: use at most 63 lower-case letters, digits and '-', "
            "starting with a letter and ending with a letter or digit",
        )
    return value


def dns1123_label(value: str, path: str) -> str:
    if len(value) > 63 or not _DNS1123.match(value):
        raise FieldError(
            path,
            f"{value!r} is not a valid name: use at most 63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return value


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def go_duration_seconds(raw: str, path: str) -> float:
    """A Go duration string (``90s``, ``1m30s``, ``250ms``) in seconds; ``0`` alone is allowed."""
    text = raw.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _GO_PART.match(text, pos)
        if m is None:
            raise FieldError(path, f"{raw!r} is not a duration (expected e.g. 90s, 5m or 1m30s)")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise FieldError(path, "is empty; expected a duration such as 90s")
    return total
