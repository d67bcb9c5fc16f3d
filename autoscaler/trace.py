"""Traces for ``zeroscale simulate``: CSV ``t,concurrency`` or ``t,rps`` (+ ``ready_pods``), per second."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from serving.errors import ConfigError

__all__ = ["Trace", "TraceError", "TraceRow", "parse_trace", "read_trace"]

METRICS = ("concurrency", "rps")


class TraceError(ConfigError):
    """A malformed trace; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    t: float
    load: float
    ready_pods: int | None


@dataclass(frozen=True, slots=True)
class Trace:
    metric: str  # "concurrency" or "rps": which column the file has
    rows: tuple[TraceRow, ...]
    has_ready: bool


def _number(name: str, raw: str, where: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise TraceError(f"{where}: {name}={raw!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise TraceError(f"{where}: {name}={raw!r} must be a finite number >= 0")
    return v


def parse_trace(text: str, source: str = "trace") -> Trace:
    lines = [
        (i, line)
        for i, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise TraceError(f"{source}: empty: expected a header line t,concurrency or t,rps")
    header_no, header_line = lines[0]
    header = [h.strip().lower() for h in next(csv.reader(io.StringIO(header_line)))]
    where = f"{source}:{header_no}"
    if len(header) < 2 or header[0] != "t" or header[1] not in METRICS:
        raise TraceError(
            f"{where}: header {header_line.strip()!r}: expected t,concurrency or t,rps (+ ,ready_pods)"
        )
    extra = header[2:]
    if extra not in ([], ["ready_pods"]):
        raise TraceError(f"{where}: unknown column(s) {', '.join(extra)}: only ready_pods may follow")
    has_ready = bool(extra)
    rows: list[TraceRow] = []
    for no, line in lines[1:]:
        where = f"{source}:{no}"
        cells = [c.strip() for c in next(csv.reader(io.StringIO(line)))]
        if len(cells) != len(header):
            raise TraceError(
                f"{where}: {len(cells)} values, the header has {len(header)} ({','.join(header)})"
            )
        t = _number("t", cells[0], where)
        load = _number(header[1], cells[1], where)
        ready = None
        if has_ready:
            r = _number("ready_pods", cells[2], where)
            if r != int(r):
                raise TraceError(f"{where}: ready_pods={cells[2]!r} must be a whole number")
            ready = int(r)
        if rows and abs(t - rows[-1].t - 1.0) > 1e-9:
            raise TraceError(
                f"{where}: t={cells[0]} follows t={rows[-1].t:g}: the trace needs one row per second"
            )
        rows.append(TraceRow(t, load, ready))
    if not rows:
        raise TraceError(f"{source}: no data rows after the header")
    return Trace(header[1], tuple(rows), has_ready)


def read_trace(path: str | Path) -> Trace:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise TraceError(f"{p}: cannot read: {e.strerror}") from None
    return parse_trace(text, str(p))
