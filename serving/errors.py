"""The small error hierarchy shared by every component."""

from __future__ import annotations

__all__ = ["ConfigError", "QueueFullError", "SpecError", "ZeroscaleError"]


class ZeroscaleError(Exception):
    """Base of every error zeroscale raises on purpose."""


class ConfigError(ZeroscaleError):
    """A setting (environment variable, ConfigMap key, annotation, flag) has a bad value.

    The message names the setting, the value and what was expected, so start-up can stop with it as is.
    """


class SpecError(ConfigError):
    """A Knative resource (Service YAML) is malformed; the message names the field path."""


class QueueFullError(ZeroscaleError):
    """The breaker has no pending slot left: the caller answers 503."""

    def __init__(self, message: str = "pending request queue full") -> None:
        super().__init__(message)
