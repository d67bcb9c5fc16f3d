"""Queue-proxies started ahead of their pods, so a cold start does not wait for one to boot.

A queue-proxy process spends ~150 ms on the interpreter and its imports before it listens, and on a
cold start that is time the first request waits. The pool keeps ``size`` processes of
``python -m queueproxy --standby`` (queueproxy.standby) started and idle; ``take`` hands one to a pod
by writing the pod's environment to its standard input. The pod calls ``fill`` once it is ready (or
has failed), so the replacement's start does not compete for the CPU with the app's. When none is
ready (the pool is empty, all are being replaced, or the pod's environment needs a different
interpreter set-up) the pod starts its own queue-proxy as before.

An idle standby costs one idle queue-proxy's memory (~30 MB). ``size=0`` turns the pool off.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable, Mapping

from .local_process import ChildProcess

__all__ = ["StandbyPool"]

log = logging.getLogger("zeroscale.local")

STOP_GRACE = 2.0


def _interpreter_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the interpreter reads at its own start: a standby started with other values
    would not be the process the pod asked for."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


class StandbyPool:
    def __init__(
        self,
        size: int,
        *,
        python: str,
        env: Mapping[str, str],
        cwd: str,
        ring: int = 200,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        if size < 0:
            raise ValueError(f"standby pool size must be >= 0, got {size}")
        self.size = size
        self._argv = (python, "-m", "queueproxy", "--standby")
        self._env = dict(env)
        self._python_vars = _interpreter_vars(env)
        self._cwd = cwd
        self._ring = ring
        self._on_line = on_line
        self._ready: list[ChildProcess] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._names = itertools.count(1)
        self._closed = False
        self.taken = 0  # handed to pods
        self.missed = 0  # a pod found none ready and started its own

    @property
    def idle(self) -> int:
        return sum(1 for p in self._ready if p.running)

    def idle_pids(self) -> list[int]:
        return [p.pid for p in self._ready if p.running and p.pid is not None]

    def fill(self) -> None:
        """Start standbys until ``size`` are ready or starting (needs a running loop)."""
        while not self._closed and len(self._ready) + len(self._starting) < self.size:
            task = asyncio.get_running_loop().create_task(self._start_one())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_one(self) -> None:
        proc = ChildProcess(
            f"standby-queue-proxy-{next(self._names)}",
            self._argv,
            env=self._env,
            cwd=self._cwd,
            ring=self._ring,
            on_line=self._on_line,
            stdin_pipe=True,
        )
        if not await proc.start():
            log.warning("cannot start a standby queue-proxy: %s", proc.start_error)
            return
        if self._closed:
            await proc.stop(STOP_GRACE)
            return
        self._ready.append(proc)

    async def take(self, name: str, env: Mapping[str, str]) -> ChildProcess | None:
        """A running queue-proxy configured with ``env`` and renamed ``name``; None when there is no
        standby to use (the caller starts its own). ``fill`` starts the replacement."""
        if self._closed or _interpreter_vars(env) != self._python_vars:
            return None
        line = json.dumps(dict(env), separators=(",", ":")).encode() + b"\n"
        while self._ready:
            proc = self._ready.pop(0)
            if not proc.running:
                # A standby that died while waiting: it is of no use, and should not have happened.
                log.warning(
                    "standby queue-proxy %s exited with code %s: %s",
                    proc.name,
                    proc.returncode,
                    " | ".join(proc.last_lines(5)) or "no output",
                )
                await proc.stop(STOP_GRACE)
                continue
            proc.name = name
            if await proc.feed(line):
                self.taken += 1
                return proc
            await proc.stop(STOP_GRACE)
        self.missed += 1
        return None

    def kill_now(self) -> None:
        """SIGKILL every idle standby without waiting (a shutdown cut short)."""
        self._closed = True
        for p in self._ready:
            p.kill_now()

    async def close(self) -> None:
        """Stop every standby (and any still starting); take() returns None from now on."""
        self._closed = True
        for task in list(self._starting):
            await asyncio.gather(task, return_exceptions=True)
        procs, self._ready = self._ready, []
        await asyncio.gather(*(p.stop(STOP_GRACE) for p in procs))
