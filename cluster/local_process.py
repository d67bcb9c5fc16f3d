"""Processes in their own process groups, each with a bounded ring of its last output lines; free ports.

Every child starts a new session, so a signal to its group reaches whatever it spawned, and a Ctrl-C in
the terminal reaches only ``zeroscale up``, which then stops the children in its own order.

A ChildProcess is spawned with ``subprocess.Popen`` (CPython's vfork + exec: ~0.5 ms, however large
this process is) and its exit followed through a pidfd on the loop, then reaped with ``waitpid``. The
loop's own spawn (uvloop's fork + exec) copies this process's page tables: ~2 ms of CPU and ~5 ms of
wall time per process here, during which the loop serves nothing; a cold start spawns the app on its
critical path, and 25 at once did it 25 times. Without pidfd_open (Linux < 5.3) it falls back to the
loop's spawn.

Where util-linux's ``setpriv`` has ``--pdeathsig`` (Linux), every child is spawned through it with
SIGTERM as its parent-death signal: if ``zeroscale up`` is killed outright (``kill -9``, the OOM
killer), its apps get SIGTERM from the kernel instead of running on for nobody. (The queue-proxies
the zygote forked are the zygote's to stop: it does when the runtime's socket closes under it.) The
program is looked up before the spawn, so a missing one is still an error at start, not an exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO

__all__ = ["ChildProcess", "PortAllocator", "ProcessHandle"]

log = logging.getLogger("zeroscale.local")

_CHUNK = 65536
_MAX_LINE = 4096  # longer lines are cut: the ring holds lines for error reports, not data
OUTPUT_WAIT = 2.0  # seconds an exit waits for the end of the process's output


class ProcessHandle:
    """What the runtime holds of one process that leads its own process group: its pid, its last
    ``ring`` output lines (stdout and stderr merged), its exit; signal its whole group, stop it with
    SIGTERM then SIGKILL. How the process was started and how its exit is learnt is the subclass's:
    ChildProcess (spawned here) and cluster.local_zygote.ForkedProcess (forked by the zygote)."""

    def __init__(
        self, name: str, *, ring: int = 200, on_line: Callable[[str, str], None] | None = None
    ) -> None:
        self.name = name
        self._lines: collections.deque[str] = collections.deque(maxlen=ring)
        self._on_line = on_line
        self._pid: int | None = None
        self._reader: asyncio.Task[None] | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._exited = asyncio.Event()
        self.returncode: int | None = None
        self.exited_at: float | None = None  # loop time of the exit
        self.start_error: str | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None and self.returncode is None

    def last_lines(self, n: int | None = None) -> list[str]:
        lines = list(self._lines)
        return lines if n is None else lines[-n:]

    def note(self, text: str) -> None:
        """A line of the runtime's own about this process, kept in its ring with its output."""
        self._line(text.encode())

    def _exit(self, code: int, at: float | None = None) -> None:
        if self.returncode is None:
            self.returncode = code
            self.exited_at = asyncio.get_running_loop().time() if at is None else at
            self._exited.set()

    async def _follow_pipe(self, pipe: IO[bytes]) -> None:
        """Read the process's output from the pipe's read end (a file object, owned from now on).

        The transport is closed once the output ends (a read pipe's transport stays open after its
        EOF otherwise, and one collected unclosed would close the descriptor a second time)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_CHUNK, loop=loop)
        try:
            self._transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
            )
        except BaseException:
            pipe.close()
            raise
        self._follow(reader)

    def _follow(self, stream: asyncio.StreamReader) -> None:
        """Read the process's output from ``stream`` into the ring until end of file."""
        self._reader = asyncio.create_task(self._read(stream), name=f"output of {self.name}")

    async def _read(self, stream: asyncio.StreamReader) -> None:
        partial = b""
        while True:
            try:
                chunk = await stream.read(_CHUNK)
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
        if self._transport is not None:
            self._transport.close()

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
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, sig)

    def kill_now(self) -> None:
        """SIGKILL the group without waiting: the last resort of a shutdown that is itself cut short."""
        self.signal_group(signal.SIGKILL)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; then whatever is left of the group."""
        if self._pid is None:
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


class ChildProcess(ProcessHandle):
    """A process spawned here, in a new session; its exit comes from its pidfd (else the loop's
    child watcher), once its output has been read to the end.
    ``stdin``: a file descriptor to give it as standard input (default /dev/null)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        ring: int = 200,
        on_line: Callable[[str, str], None] | None = None,
        stdin: int | None = None,
    ) -> None:
        super().__init__(name, ring=ring, on_line=on_line)
        self._stdin = stdin
        self.argv = tuple(argv)
        self.env = dict(env)
        self.cwd = cwd
        self._reaper: asyncio.Task[None] | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._pipe: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        """Start the process; False (with ``start_error`` set) when it cannot be executed at all."""
        try:
            if _PIDFD:
                self._start_popen()
            else:
                await self._start_loop()
        except OSError as e:
            self.start_error = f"cannot start {self.argv[0]!r}: {e.strerror or e}"
            self._lines.append(self.start_error)
            self.returncode = -1
            self._exited.set()
            return False
        return True

    def _start_popen(self) -> None:
        proc = subprocess.Popen(
            _guarded(self.argv, self.env, self.cwd),
            stdin=self._stdin if self._stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
        )
        self._pid = proc.pid
        self._popen = proc
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            proc.kill()
            self._waitpid(block=True)
            raise
        self._pidfd = pidfd
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, self._on_pidfd)
        assert proc.stdout is not None
        self._pipe = loop.create_task(self._output_of(proc))

    async def _output_of(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        try:
            await self._follow_pipe(proc.stdout)
        except OSError as e:
            self.note(f"(its output cannot be read: {e})")

    def _on_pidfd(self) -> None:
        self._waitpid(block=False)

    def _waitpid(self, *, block: bool) -> None:
        """Reap the exited child: its status becomes the exit code (a signal's as -N, as Popen's)."""
        pid = self._pid
        if pid is None or self.returncode is not None:
            return
        try:
            got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            got, status = pid, -1  # reaped by someone else: the code is lost
        if got == 0:
            return  # woken early (not yet exited)
        code = os.waitstatus_to_exitcode(status) if status != -1 else -1
        if self._pidfd is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._popen is not None:
            self._popen.returncode = code  # so that Popen never waits for it again
        loop = asyncio.get_running_loop()
        ending = self._exit_after_output(code, loop.time())
        self._reaper = loop.create_task(ending, name=f"exit of {self.name}")

    async def _exit_after_output(self, code: int, at: float) -> None:
        # Its last lines (a configuration error, a traceback) are read before its exit is told, as the
        # loop's own child watcher does; bounded, in case something it spawned holds the pipe open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OUTPUT_WAIT):
                if self._pipe is not None:
                    await asyncio.shield(self._pipe)
                if self._reader is not None:
                    await asyncio.shield(self._reader)
        self._exit(code, at)

    async def _start_loop(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *_guarded(self.argv, self.env, self.cwd),
            stdin=self._stdin if self._stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
        )
        self._pid = proc.pid
        assert proc.stdout is not None
        self._follow(proc.stdout)
        self._reaper = asyncio.create_task(self._reap(proc), name=f"exit of {self.name}")

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        self._exit(await proc.wait())


@functools.cache
def _death_signal() -> tuple[str, ...]:
    """The argv prefix that gives a child SIGTERM when this process dies, or () where there is none."""
    if sys.platform != "linux":
        return ()
    exe = shutil.which("setpriv")
    if exe is None:
        return ()
    try:
        usage = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (exe, "--pdeathsig", "TERM") if "--pdeathsig" in usage else ()


def _program(name: str, env: Mapping[str, str], cwd: str) -> str:
    """The file ``name`` runs, as exec would find it; OSError as exec would fail on it."""
    if "/" in name:
        path = os.path.join(cwd, name)
    else:
        found = shutil.which(name, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        path = found
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    return path


def _guarded(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> list[str]:
    prefix = _death_signal()
    if not prefix or not argv:
        return list(argv)
    return [*prefix, _program(argv[0], env, cwd), *argv[1:]]


def _pidfd_works() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


_PIDFD = _pidfd_works()


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
