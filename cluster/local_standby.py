"""Warm queue-proxies for the local runtime's pods: forked from one pre-imported zygote.

A queue-proxy process spends ~115-150 ms of CPU on the interpreter and its imports before it listens,
and on a cold start that is time the first request waits; 25 cold starts at once pay it 25 times on
the same cores. The pool keeps one zygote (``python -m queueproxy --zygote``, queueproxy.zygote) that
has done the imports once; ``take`` asks it to fork the pod's queue-proxy (a few ms, no imports), so
every cold start gets a warm one, also many at once. See cluster.local_zygote for the protocol and
how a forked queue-proxy's exit is followed.

A pod that comes while the zygote is importing (the first cold starts after the runtime starts, or
after a restart) waits for it, at most ``START_WAIT`` (0.5 s): its imports are done sooner than a new
process's would be (they began earlier), and a new process would compete with it for the CPU.
``take`` returns None (the pod then starts ``python -m queueproxy`` itself, as before) when the zygote
is not ready by then (or dead and waiting to be restarted), when it cannot fork, and when the
pod's ``PYTHON*`` variables differ from the zygote's (they shape the interpreter at its start, which a
forked child does not redo). A zygote that dies is started again by ``fill`` (called by each pod once
ready, and by a timer), never sooner than the back-off allows: 1 s after the first death, doubling up
to 60 s, back to 1 s once a zygote has lived 60 s. A system without pidfd_open (Linux < 5.3) gets no
zygote at all. Turning it off (``PodSettings.queue_proxy_zygote``) means the runtime makes no pool.

Memory (psutil, idle, measured here): the zygote is one queue-proxy's imports, 32 MB RSS; a forked
queue-proxy shares those pages copy-on-write (``gc.freeze`` keeps collections from touching them):
26 MB RSS of which 6 MB its own (USS), where a started one has 30 MB RSS and 18 MB USS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from .local_process import ProcessHandle
from .local_zygote import ForkedProcess, Zygote, zygote_supported

__all__ = ["Backoff", "StandbyPool"]

log = logging.getLogger("zeroscale.local")

STOP_GRACE = 2.0
START_WAIT = 0.5  # seconds a pod waits for a zygote that is being started before starting its own


def _interpreter_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the interpreter reads at its own start: a child forked from a zygote started with
    other values would not be the process the pod asked for."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


class Backoff:
    """Delays between restarts of something that keeps dying: ``first``, doubling up to ``most``;
    back to ``first`` after something lived ``healthy`` seconds. Pure: times are passed in."""

    def __init__(self, first: float = 1.0, most: float = 60.0, healthy: float = 60.0) -> None:
        self.first, self.most, self.healthy = first, most, healthy
        self._next = first

    def died(self, lived: float) -> float:
        """The delay before the next start, for something that died after ``lived`` seconds."""
        if lived >= self.healthy:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.most)
        return delay


class StandbyPool:
    def __init__(
        self,
        *,
        python: str,
        env: Mapping[str, str],
        cwd: str,
        ring: int = 200,
        on_line: Callable[[str, str], None] | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._python = python
        self._env = dict(env)
        self._python_vars = _interpreter_vars(env)
        self._cwd = cwd
        self._ring = ring
        self._on_line = on_line
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._zygote: Zygote | None = None
        self._retired: list[Zygote] = []  # dead zygotes whose forked queue-proxies may still run
        self._starting: asyncio.Task[None] | None = None
        self._candidate: Zygote | None = None  # the zygote being started
        self._not_before = 0.0  # no zygote starts before this clock time (back-off)
        self._retry: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._closed = False
        self.unusable: str | None = zygote_supported()
        if self.unusable is not None:
            log.warning("no queue-proxy zygote (%s): every queue-proxy is started anew", self.unusable)
        self.starts = 0  # zygotes started (1 + restarts)
        self.taken = 0  # queue-proxies forked for pods
        self.missed = 0  # a pod got none and started its own

    @property
    def zygote(self) -> Zygote | None:
        """The zygote in use, once ready."""
        z = self._zygote
        return z if z is not None and z.ready else None

    @property
    def idle(self) -> int:
        """1 when a ready zygote waits for requests, else 0."""
        return 1 if self.zygote is not None else 0

    def idle_pids(self) -> list[int]:
        z = self.zygote
        return [z.pid] if z is not None and z.pid is not None else []

    def forked(self) -> list[ForkedProcess]:
        """Every queue-proxy forked for a pod that has not been seen exit, of any zygote."""
        self._retired = [z for z in self._retired if z.children()]
        zygotes = [*self._retired, *([self._zygote] if self._zygote is not None else [])]
        return [c for z in zygotes for c in z.children()]

    def fill(self) -> None:
        """Have a zygote running or starting, if the back-off allows (needs a running loop)."""
        if self._closed or self.unusable is not None:
            return
        if self._zygote is not None or self._starting is not None:
            return
        wait = self._not_before - self._clock()
        loop = asyncio.get_running_loop()
        if wait > 0:
            if self._retry is None:
                self._retry = loop.call_later(wait, self._retry_fill)
            return
        self._starting = loop.create_task(self._start(), name="start of the queue-proxy zygote")

    def _retry_fill(self) -> None:
        self._retry = None
        self.fill()

    async def _start(self) -> None:
        z = Zygote(
            python=self._python,
            env=self._env,
            cwd=self._cwd,
            ring=self._ring,
            on_line=self._on_line,
            on_lost=self._lost,
        )
        self.starts += 1
        self._started_at = self._clock()
        self._candidate = z
        try:
            why = await z.start()
        finally:
            self._starting = None
            self._candidate = None
        if why is not None:
            if self._closed:
                return
            if z.fatal is not None:
                self.unusable = z.fatal
                log.warning("no queue-proxy zygote: %s", z.fatal)
            else:
                log.warning("the queue-proxy zygote did not start: %s", why)
                self._died()
            return
        if self._closed:
            await z.close(STOP_GRACE)
            return
        self._zygote = z

    def _lost(self, z: Zygote) -> None:
        """A ready zygote is gone (not by close()): restart it later."""
        if self._zygote is z:
            self._zygote = None
            self._retired.append(z)
            log.warning(
                "the queue-proxy zygote (pid %s) exited: %s",
                z.pid,
                " | ".join(z.process.last_lines(5)) if z.process is not None else "",
            )
            self._died()
            if not self._closed:
                self.fill()

    def _died(self) -> None:
        self._not_before = self._clock() + self._backoff.died(self._clock() - self._started_at)

    async def take(self, name: str, env: Mapping[str, str]) -> ProcessHandle | None:
        """A running queue-proxy named ``name`` with the environment ``env``, forked from the zygote;
        None when there is none to give (the caller starts its own)."""
        if self._zygote is None and self._starting is not None and not self._closed:
            # A zygote that is importing is ready sooner than a new process would be, and does not
            # compete with it for the CPU: wait for it, a bounded time.
            await asyncio.wait({self._starting}, timeout=START_WAIT)
        z = self.zygote
        if self._closed or z is None or _interpreter_vars(env) != self._python_vars:
            self.missed += 1
            self.fill()
            return None
        child = await z.fork(name, env)
        if isinstance(child, str):
            log.warning("no queue-proxy from the zygote for %s: %s", name, child)
            self.missed += 1
            if child.startswith("no answer"):
                z.kill_zygote()  # hung: it is started again after the back-off
            return None
        self.taken += 1
        return child

    async def ready(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, for a zygote being started; True once one is ready."""
        self.fill()
        if self._zygote is None and self._starting is not None:
            await asyncio.wait({self._starting}, timeout=timeout)
        return self.zygote is not None

    def kill_now(self) -> None:
        """SIGKILL the zygote and every queue-proxy forked that still runs (a shutdown cut short)."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for z in [*self._retired, self._zygote, self._candidate]:
            if z is not None:
                z.kill_now()

    async def close(self) -> None:
        """Stop the zygote; take() returns None from now on. Queue-proxies forked for pods are their
        pods' to stop (the runtime closes the pool after its pods); any still running are killed."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._starting is not None:
            if self._candidate is not None:
                self._candidate.kill_now()  # not worth waiting for its imports: its start ends at once
            await asyncio.gather(self._starting, return_exceptions=True)
        left = self.forked()
        for child in left:
            log.warning(
                "queue-proxy %s (pid %s) still runs as the runtime closes: killing it", child.name, child.pid
            )
        await asyncio.gather(*(child.stop(0) for child in left))
        z, self._zygote = self._zygote, None
        if z is not None:
            await z.close(STOP_GRACE)
