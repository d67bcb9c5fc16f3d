"""Readiness of the user container, probed the way Knative's queue-proxy does it.

A kubelet readiness probe on the queue-proxy (``K-Network-Probe: queue``) triggers a probe of the
user container: a TCP connect by default, or the HTTP/TCP probe from ``SERVING_READINESS_PROBE``.
Until the container is first ready and when ``periodSeconds`` is 0 (Knative's default), a check is
*aggressive*: attempts with a 100 ms timeout each, for up to 10 s, so a container that starts in
300 ms is seen ready after about 300 ms rather than one kubelet period later. Knative spaces them
50 ms apart, which leaves 25 ms on average between the app listening and the pod turning ready, on
every cold start; here the first second of attempts is 10 ms apart (at most 100 cheap loopback
attempts), then Knative's 50 ms. After that,
each check is one attempt, so a container that went away is reported at once and one that came back
(a restart) is reported ready on the next check. Checks asked for while one runs share its result.

An h2c (gRPC) container does not answer an HTTP/1.1 GET, so its HTTP probes go over h2c
(:class:`H2cAttempt`, on the request path's own connection pool when the probe targets the user port);
TCP probes are the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from serving.clock import Clock, MonotonicClock
from serving.upstream import UpstreamError

from .config import ProbeSpec

if TYPE_CHECKING:
    from serving.h2upstream import H2Upstream

__all__ = ["Attempt", "H2cAttempt", "Readiness", "http_attempt", "probe_attempt", "tcp_attempt"]

AGGRESSIVE_INTERVAL = 0.05
AGGRESSIVE_FIRST_INTERVAL = 0.01  # for the first AGGRESSIVE_FIRST_PERIOD seconds of a check
AGGRESSIVE_FIRST_PERIOD = 1.0
AGGRESSIVE_ATTEMPT_TIMEOUT = 0.1
AGGRESSIVE_MAX = 10.0
READY_ATTEMPT_TIMEOUT = 1.0
PROBE_USER_AGENT = b"kube-probe/zeroscale"

Attempt = Callable[[ProbeSpec, int, float], Awaitable[bool]]  # (spec, port, timeout) -> success


class Readiness:
    __slots__ = (
        "_attempt",
        "_clock",
        "_inflight",
        "_probes",
        "_sleep",
        "_user_port",
        "attempts",
        "ever_ready",
    )

    def __init__(
        self,
        probes: Sequence[ProbeSpec],
        user_port: int,
        *,
        attempt: Attempt | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._probes = tuple(probes)
        self._user_port = user_port
        self._attempt: Attempt = attempt or probe_attempt
        self._clock = clock or MonotonicClock()
        self._sleep = sleep
        self._inflight: asyncio.Task[bool] | None = None
        self.ever_ready = False
        self.attempts = 0  # attempts made, for tests and logs

    async def check(self) -> bool:
        """Probe the user container; callers that arrive while a probe runs share its answer.

        Cancelling one caller (its client went away) does not cancel the probe the others wait on.
        """
        task = self._inflight
        if task is None:
            task = asyncio.ensure_future(self._run())
            self._inflight = task
            task.add_done_callback(self._clear)
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Stop a probe still running (shutdown)."""
        task = self._inflight
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _clear(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here so a failure is never logged as unretrieved

    async def _run(self) -> bool:
        aggressive = not self.ever_ready and all(p.aggressive for p in self._probes)
        if not aggressive:
            ok = await self._once(None)
        else:
            ok = await self._aggressive()
        if ok:
            self.ever_ready = True
        return ok

    async def _aggressive(self) -> bool:
        need = max(p.success_threshold for p in self._probes)
        started = self._clock.now()
        deadline = started + AGGRESSIVE_MAX
        streak = 0
        while True:
            if await self._once(AGGRESSIVE_ATTEMPT_TIMEOUT):
                streak += 1
                if streak >= need:
                    return True
            else:
                streak = 0
            now = self._clock.now()
            if now >= deadline:
                return False
            fast = now - started < AGGRESSIVE_FIRST_PERIOD
            await self._sleep(AGGRESSIVE_FIRST_INTERVAL if fast else AGGRESSIVE_INTERVAL)

    async def _once(self, timeout: float | None) -> bool:
        """One attempt of every probe; ready only if all succeed."""
        for spec in self._probes:
            t = timeout if timeout is not None else (spec.timeout_seconds or READY_ATTEMPT_TIMEOUT)
            port = spec.port or self._user_port
            self.attempts += 1
            try:
                ok = await self._attempt(spec, port, t)
            except Exception:
                ok = False
            if not ok:
                return False
        return True


# -- attempts ---------------------------------------------------------------------------------


async def probe_attempt(spec: ProbeSpec, port: int, timeout: float) -> bool:
    if spec.kind == "http":
        return await http_attempt(spec, port, timeout)
    return await tcp_attempt(spec.host, port, timeout)


async def tcp_attempt(host: str, port: int, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


_INSECURE: ssl.SSLContext | None = None


def _insecure_context() -> ssl.SSLContext:
    # Like the kubelet, an HTTPS probe does not verify the certificate.
    global _INSECURE
    if _INSECURE is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _INSECURE = ctx
    return _INSECURE


async def http_attempt(spec: ProbeSpec, port: int, timeout: float) -> bool:
    """GET the probe path; ready iff the status is in [200, 400) (the kubelet's rule)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            ssl_ctx = _insecure_context() if spec.scheme == "https" else None
            reader, writer = await asyncio.open_connection(spec.host, port, ssl=ssl_ctx)
            host = spec.host if port in (80, 443) else f"{spec.host}:{port}"
            lines = [f"GET {spec.path} HTTP/1.1", f"Host: {host}", "Accept: */*", "Connection: close"]
            names = {n.lower() for n, _ in spec.headers}
            if "user-agent" not in names:
                lines.append(f"User-Agent: {PROBE_USER_AGENT.decode()}")
            lines += [f"{n}: {v}" for n, v in spec.headers]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status_line = await reader.readline()
    except (OSError, TimeoutError, UnicodeEncodeError, ssl.SSLError):
        return False
    finally:
        if writer is not None:
            writer.close()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False
    return 200 <= int(parts[1]) < 400


class H2cAttempt:
    """Probe attempts for an h2c user container: HTTP probes as an h2c GET, TCP probes as a connect.

    The pool of the request path serves probes of the user port (a probe then also warms the
    connection requests will use); a probe of another host or port gets a pool of its own.
    """

    __slots__ = ("_own", "_pools")

    def __init__(self, main: H2Upstream) -> None:
        self._pools: dict[tuple[str, int], H2Upstream] = {(main.host, main.port): main}
        self._own: list[H2Upstream] = []

    def _pool(self, host: str, port: int) -> H2Upstream:
        pool = self._pools.get((host, port))
        if pool is None:
            from serving.h2upstream import H2Upstream  # only h2c apps are probed over HTTP/2

            pool = self._pools[(host, port)] = H2Upstream(host, port, max_streams_per_connection=1)
            self._own.append(pool)
        return pool

    async def __call__(self, spec: ProbeSpec, port: int, timeout: float) -> bool:
        if spec.kind != "http":
            return await tcp_attempt(spec.host, port, timeout)
        if spec.scheme == "https":
            return await http_attempt(spec, port, timeout)  # h2 over TLS would need ALPN: HTTP/1.1
        try:
            headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in spec.headers]
            if not any(n == b"user-agent" for n, _ in headers):
                headers.append((b"user-agent", PROBE_USER_AGENT))
            status = await self._pool(spec.host, port).probe(
                spec.path.encode("latin-1"), headers, timeout=timeout
            )
        except (UpstreamError, UnicodeEncodeError):
            return False
        return 200 <= status < 400

    async def close(self) -> None:
        """Close the pools this made (the request path's own pool is closed by its owner)."""
        for pool in self._own:
            pool.abort()
        self._own.clear()
