"""Logging set-up shared by the binaries: one line per event on stderr, JSON when asked."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

__all__ = ["setup_logging"]


class _JsonFormatter(logging.Formatter):
    def __init__(self, extra: dict[str, str]) -> None:
        super().__init__()
        self._extra = extra

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "severity": record.levelname,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "logger": record.name,
            "message": record.getMessage(),
            **self._extra,
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(component: str, *, level: str | None = None, extra: dict[str, str] | None = None) -> None:
    """Text lines by default; JSON lines (Knative's field names) when ZEROSCALE_LOG_FORMAT=json."""
    lvl = level or os.environ.get("SERVING_LOGGING_LEVEL") or os.environ.get("ZEROSCALE_LOG_LEVEL") or "info"
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("ZEROSCALE_LOG_FORMAT", "text") == "json":
        handler.setFormatter(_JsonFormatter({"component": component, **(extra or {})}))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {component} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, lvl.upper(), logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
