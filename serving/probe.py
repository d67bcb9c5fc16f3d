"""Knative's readiness probe of a queue-proxy over a plain socket: ``K-Network-Probe: queue``.

Used by the activator (is a pod ready for traffic?) and by the local runtime (is a pod up?). One
GET with ``Connection: close``, at most 4 KiB read back; healthy iff status 200 and body ``queue``.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["probe_queue", "queue_probe_healthy"]

_MAX_RESPONSE = 4096


async def probe_queue(host: str, port: int, timeout: float, *, path: bytes, user_agent: bytes) -> bool:
    request = (
        b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nK-Network-Probe: queue\r\nUser-Agent: %s\r\n"
        b"Connection: close\r\n\r\n" % (path, host.encode(), port, user_agent)
    )
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            data = await reader.read(_MAX_RESPONSE)
            while len(data) < _MAX_RESPONSE:
                more = await reader.read(_MAX_RESPONSE - len(data))
                if not more:
                    break
                data += more
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return queue_probe_healthy(data)


def queue_probe_healthy(raw: bytes) -> bool:
    """A raw answer to the probe: status 200 and the body ``queue`` (plain or chunked)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or status_line[1] != b"200":
        return False
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        try:
            body = rest[: int(size, 16)]
        except ValueError:
            return False
    return body.strip() == b"queue"
