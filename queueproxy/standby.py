"""A queue-proxy started before its pod exists: ``python -m queueproxy --standby``.

Most of a queue-proxy's start is the interpreter and its imports (about 150 ms on a 2-core VM), and
on a cold start that time lies between the first request and its answer. A standby process does that
work ahead of time and then waits, doing nothing, for one line on its standard input: the pod's
environment as a JSON object of strings (Knative's queue-proxy variables). It then becomes that pod's
queue-proxy, configured exactly as ``python -m queueproxy`` with that environment would be. End of
input before a line means it is no longer wanted: it exits 0. A line that is not such an object
stops it with exit code 2 and a message, as a bad configuration does.

The local runtime keeps one or more of these ready (``cluster.local_standby``); on Kubernetes the
queue-proxy is a sidecar container and starts as usual.
"""

from __future__ import annotations

import json
import os
import sys
from typing import BinaryIO

from .app import run

__all__ = ["StandbyInputError", "main", "read_environment"]

MAX_LINE = 1 << 20  # an environment larger than 1 MiB is not a queue-proxy's


class StandbyInputError(ValueError):
    pass


def read_environment(stream: BinaryIO) -> dict[str, str] | None:
    """The environment sent on ``stream``: one JSON line; None at end of input."""
    line = stream.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise StandbyInputError(f"the environment line is longer than {MAX_LINE} bytes")
    try:
        env = json.loads(line)
    except ValueError as e:
        raise StandbyInputError(f"the environment line is not JSON: {e}") from None
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    ):
        raise StandbyInputError('the environment line must be a JSON object of strings: {"NAME": "value"}')
    return env


def _warm() -> None:
    """Imports that ``run`` would otherwise do on the cold path."""
    import uvloop  # noqa: F401  (run() imports it lazily)


def main(stdin: BinaryIO | None = None) -> int:
    _warm()
    try:
        env = read_environment(stdin if stdin is not None else sys.stdin.buffer)
    except StandbyInputError as e:
        print(f"queue-proxy --standby: {e}", file=sys.stderr)
        return 2
    if env is None:
        return 0
    os.environ.clear()
    os.environ.update(env)
    return run(os.environ)
