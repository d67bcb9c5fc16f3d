"""A child process in its own process group, with a bounded ring of its last output lines; free ports.

Every child starts a new session, so a signal to its group reaches whatever it spawned, and a Ctrl-C in
the terminal reaches only ``zeroscale up``, which then stops the children in its own order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence

__all__ = ["ChildProcess", "PortAllocator"]

log = logging.getLogger("zeroscale.local")

_CHUNK = 65536
_MAX_LINE = 4096  # longer lines are cut: the ring holds lines for error reports, not data


class ChildProcess:
    """One process: start it, keep its last ``ring`` output lines (stdout and stderr merged),
    signal its whole process group, stop it with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        ring: int = 200,
        on_line: Callable[[str, str], None] | None = None,
        stdin_pipe: bool = False,
    ) -> None:
        self.name = name
        self._stdin_pipe = stdin_pipe
        self.argv = tuple(argv)
        self.env = dict(env)
        self.cwd = cwd
        self._lines: collections.deque[str] = collections.deque(maxlen=ring)
        self._on_line = on_line
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()
        self.returncode: int | None = None
        self.exited_at: float | None = None  # loop time of the exit
        self.start_error: str | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self.returncode is None

    def last_lines(self, n: int | None = None) -> list[str]:
        lines = list(self._lines)
        return lines if n is None else lines[-n:]

    async def start(self) -> bool:
        """Start the process; False (with ``start_error`` set) when it cannot be executed at all."""
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE if self._stdin_pipe else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        except OSError as e:
            self.start_error = f"cannot start {self.argv[0]!r}: {e.strerror or e}"
            self._lines.append(self.start_error)
            self.returncode = -1
            self._exited.set()
            return False
        self._reader = asyncio.create_task(self._read(), name=f"output of {self.name}")
        self._reaper = asyncio.create_task(self._reap(), name=f"exit of {self.name}")
        return True

    async def feed(self, data: bytes, timeout: float = 5.0) -> bool:
        """Write ``data`` to the process's standard input and close it (``stdin_pipe`` only); False when
        the process is gone or does not take it within ``timeout`` seconds."""
        proc = self._proc
        if proc is None or proc.stdin is None or self.returncode is not None:
            return False
        try:
            async with asyncio.timeout(timeout):
                proc.stdin.write(data)
                await proc.stdin.drain()
        except (OSError, TimeoutError):
            return False
        finally:
            proc.stdin.close()
        return True

    async def _reap(self) -> None:
        assert self._proc is not None
        self.returncode = await self._proc.wait()
        self.exited_at = asyncio.get_running_loop().time()
        self._exited.set()

    async def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        partial = b""
        while True:
            try:
                chunk = await proc.stdout.read(_CHUNK)
            except (OSError, ValueError):
                break
            if not chunk:
                break
            partial += chunk
            *lines, partial = partial.split(b"\n")
            for raw in lines:
                self._line(raw)
            if len(partial) > _MAX_LINE:
                self._line(partial)
                partial = b""
        if partial:
            self._line(partial)

    def _line(self, raw: bytes) -> None:
        text = raw[:_MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        self._lines.append(text)
        if self._on_line is not None:
            self._on_line(self.name, text)

    async def wait(self, timeout: float | None = None) -> int | None:
        """The exit code once exited; None if still running after ``timeout`` seconds."""
        if timeout is None:
            await self._exited.wait()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._exited.wait()
        return self.returncode

    def signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def kill_now(self) -> None:
        """SIGKILL the group without waiting: the last resort of a shutdown that is itself cut short."""
        self.signal_group(signal.SIGKILL)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; then whatever is left of the group."""
        if self._proc is None:
            return self.returncode
        if self.returncode is None:
            self.signal_group(signal.SIGTERM)
            if await self.wait(grace) is None:
                log.warning("%s did not exit %.1f s after SIGTERM: killing it", self.name, grace)
                self.signal_group(signal.SIGKILL)
        # The leader may be gone while something it spawned still runs in its group.
        self.signal_group(signal.SIGKILL)
        await self.wait()
        if self._reader is not None:
            # EOF comes once every process holding the pipe is gone; the group was just killed.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.shield(self._reader)
            if not self._reader.done():
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
        return self.returncode


class PortAllocator:
    """Free loopback ports, never the same one twice among the last ``memory`` handed out.

    The OS may give a just-released port again; remembering recent ones keeps two pods that start at
    the same moment from both being told to use it.
    """

    def __init__(self, memory: int = 4096) -> None:
        self._recent: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._memory = memory

    def take(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in self._recent:
                self._recent[port] = None
                while len(self._recent) > self._memory:
                    self._recent.popitem(last=False)
                return port
        raise OSError("no free loopback port found")

    def take_many(self, n: int) -> list[int]:
        return [self.take() for _ in range(n)]
