"""The queue-proxy zygote's control protocol: one JSON object per SOCK_SEQPACKET message, file
descriptors alongside (SCM_RIGHTS). Shared by the zygote (queueproxy.zygote) and the local runtime
(cluster.local_zygote); standard library only, so the runtime imports it without the queue-proxy.

A message is at most ``MAX_MESSAGE`` bytes (128 KiB, inside Linux's default 208 KiB socket buffer, so
a message always fits in one send); a larger one is refused by its sender (the runtime then starts
the pod's queue-proxy the ordinary way). The messages:

runtime -> zygote
  ``{"id": 7, "env": {"NAME": "value", ...}, "cwd": "/dir"}`` with one fd: the write end of the pipe
  that becomes the new queue-proxy's stdout and stderr.
zygote -> runtime
  ``{"ready": <zygote pid>}`` once, when its imports are done;
  ``{"fatal": "why"}`` instead of ready when it cannot work here (then it exits 3);
  ``{"id": 7, "pid": 1234}`` with one fd: a pidfd of the forked queue-proxy;
  ``{"id": 7, "error": "why"}`` (``"id": null`` when the request had none readable);
  ``{"exit": 1234, "code": 0}`` when it has reaped one of its queue-proxies (code < 0: killed by
  that signal, as asyncio reports it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_FDS",
    "MAX_MESSAGE",
    "ForkRequest",
    "WireError",
    "decode",
    "encode",
    "parse_request",
    "request_id",
]

MAX_MESSAGE = 128 * 1024
MAX_FDS = 4  # more than any message carries: extra ones are closed, and the message refused


class WireError(ValueError):
    pass


def encode(message: Mapping[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise WireError(f"a control message of {len(data)} bytes is over the {MAX_MESSAGE}-byte limit")
    return data


def decode(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE:
        raise WireError(f"a control message is over the {MAX_MESSAGE}-byte limit")
    try:
        message = json.loads(data)
    except ValueError as e:
        raise WireError(f"a control message is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise WireError("a control message must be a JSON object")
    return message


@dataclass(frozen=True, slots=True)
class ForkRequest:
    id: int
    env: dict[str, str]
    cwd: str


def request_id(message: Mapping[str, Any]) -> int | None:
    rid = message.get("id")
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


def parse_request(message: Mapping[str, Any]) -> ForkRequest:
    """A fork request, checked field by field; WireError names the field that is wrong."""
    rid = request_id(message)
    if rid is None:
        raise WireError('"id" must be an integer')
    env = message.get("env")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    ):
        raise WireError('"env" must be a JSON object of strings: {"NAME": "value"}')
    cwd = message.get("cwd")
    if not isinstance(cwd, str) or not cwd or "\0" in cwd:
        raise WireError('"cwd" must be a directory path')
    return ForkRequest(rid, env, cwd)
