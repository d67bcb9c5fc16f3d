"""The runtime's end of the queue-proxy zygote (queueproxy.zygote): start it, ask it to fork, follow
what it forked.

``Zygote`` is one zygote process and its control socket (a SOCK_SEQPACKET pair; the zygote's end is its
stdin, its own output goes to a ring like any child's). ``fork(name, env)`` sends the pod's environment
with the write end of a fresh pipe, and returns a ``ForkedProcess``: the queue-proxy the zygote forked,
with everything LocalPod uses of a ChildProcess (the same ProcessHandle: ring, wait, signal_group,
stop). Its output is the pipe's read end; its exit is learnt two ways:

* the zygote reaps its children and reports ``pid code``: that is the exit code;
* the pidfd the zygote sent (``loop.add_reader``: readable once the process has exited) covers a
  zygote that is gone: a process that exits after its zygote died, or whose code was not reported
  within ``CODE_WAIT`` seconds, gets -1, with a line in its ring that says the code is unknown.

A reply that arrives after its request gave up (``FORK_TIMEOUT``), or after ``close()``, names a
process nobody would stop: it is killed at once. ``fork`` answers a string (the reason) instead of a
process whenever it cannot give one; the caller then starts a queue-proxy the ordinary way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from typing import Any

from queueproxy import zygote_wire as wire

from .local_process import OUTPUT_WAIT, ChildProcess, ProcessHandle

__all__ = ["CODE_WAIT", "FORK_TIMEOUT", "ForkedProcess", "Zygote", "zygote_supported"]

log = logging.getLogger("zeroscale.local")

FORK_TIMEOUT = 5.0  # seconds for the zygote to answer a fork request
READY_TIMEOUT = 30.0  # seconds for a new zygote to finish its imports
CODE_WAIT = 2.0  # seconds to wait for the zygote's exit record once the pidfd says the process is gone
UNKNOWN_CODE = -1


def zygote_supported() -> str | None:
    """None when this system can run a zygote, else why not."""
    if not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds"):
        return "pidfd_open and SCM_RIGHTS (Linux, Python >= 3.9) are needed"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as e:
        return f"pidfd_open is not available (Linux >= 5.3 is needed): {e.strerror or e}"
    return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ForkedProcess(ProcessHandle):
    """A queue-proxy forked by the zygote: not this process's child, so its exit comes from the
    zygote's report or, failing that, its pidfd."""

    def __init__(
        self,
        name: str,
        pid: int,
        pidfd: int,
        *,
        ring: int = 200,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(name, ring=ring, on_line=on_line)
        self._pid = pid
        self._pidfd: int | None = pidfd
        self._orphan = False  # its zygote is gone: no exit code will be reported
        self._gone = False  # the pidfd said it exited
        self._code_timer: asyncio.TimerHandle | None = None
        self._following = asyncio.Event()  # its output is being read
        self._ending: asyncio.Task[None] | None = None
        asyncio.get_running_loop().add_reader(pidfd, self._on_pidfd)

    async def follow_output(self, read_fd: int) -> None:
        """Read its output from ``read_fd`` (the pipe's read end; owned from now on)."""
        await self._follow_pipe(os.fdopen(read_fd, "rb", buffering=0))
        self._following.set()

    def _on_pidfd(self) -> None:
        self._gone = True
        self._drop_pidfd()
        if self._orphan:
            self._finish(UNKNOWN_CODE, "its zygote is gone")
        elif self._ending is None:
            self._code_timer = asyncio.get_running_loop().call_later(
                CODE_WAIT, self._finish, UNKNOWN_CODE, f"its zygote reported none within {CODE_WAIT:g} s"
            )

    def exit_code(self, code: int) -> None:
        """The zygote reaped it with ``code``."""
        self._finish(code)

    def zygote_gone(self) -> None:
        """Its zygote died or was closed: from now on its exit is known by the pidfd only."""
        self._orphan = True
        if self._gone:
            self._finish(UNKNOWN_CODE, "its zygote is gone")

    def _finish(self, code: int, unknown: str | None = None) -> None:
        if self._code_timer is not None:
            self._code_timer.cancel()
            self._code_timer = None
        self._drop_pidfd()
        if self._ending is None:
            loop = asyncio.get_running_loop()
            self._ending = loop.create_task(
                self._end(code, loop.time(), unknown), name=f"exit of {self.name}"
            )

    async def _end(self, code: int, at: float, unknown: str | None) -> None:
        # Its last lines (a configuration error, a traceback) are read before its exit is told, as
        # asyncio does for a child's pipes; bounded, in case something else holds the pipe open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OUTPUT_WAIT):
                await self._following.wait()
                if self._reader is not None:
                    await asyncio.shield(self._reader)
        if unknown is not None:
            self.note(
                f"zeroscale: {self.name} (pid {self._pid}) exited; exit code unknown ({unknown}): {code}"
            )
        self._exit(code, at)

    def _drop_pidfd(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class Zygote:
    """One zygote process and its control socket; ``start()``, then ``fork()`` as often as needed."""

    def __init__(
        self,
        *,
        python: str,
        env: Mapping[str, str],
        cwd: str,
        ring: int = 200,
        on_line: Callable[[str, str], None] | None = None,
        on_lost: Callable[[Zygote], None] | None = None,
        name: str = "queue-proxy-zygote",
    ) -> None:
        self._argv = (python, "-m", "queueproxy", "--zygote")
        self._env = dict(env)
        self.cwd = cwd
        self._ring = ring
        self._on_line = on_line
        self._on_lost = on_lost
        self.name = name
        self.process: ChildProcess | None = None
        self._sock: socket.socket | None = None
        self._ready: asyncio.Future[str | None] | None = None  # None: ready; a string: why not
        self.ready = False
        self.fatal: str | None = None  # it cannot work on this system: do not start it again
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[ForkedProcess | str], str]] = {}
        self._children: dict[int, ForkedProcess] = {}  # by pid, until the zygote reports the exit
        self._forked: list[ForkedProcess] = []  # every one not seen exited (also once the zygote is gone)
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def children(self) -> list[ForkedProcess]:
        """The queue-proxies it forked that have not exited yet."""
        self._forked = [c for c in self._forked if c.returncode is None]
        return list(self._forked)

    async def start(self, timeout: float = READY_TIMEOUT) -> str | None:
        """Start the zygote and wait for its imports; None once ready, else why it is not."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = ChildProcess(
            self.name,
            self._argv,
            env=self._env,
            cwd=self.cwd,
            ring=self._ring,
            on_line=self._on_line,
            stdin=theirs.fileno(),
        )
        try:
            started = await self.process.start()
        finally:
            theirs.close()
        if not started:
            ours.close()
            return self.process.start_error or "cannot start"
        ours.setblocking(False)
        self._sock = ours
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        why: str | None
        try:
            async with asyncio.timeout(timeout):
                why = await asyncio.shield(self._ready)
        except TimeoutError:
            why = f"not ready after {timeout:g} s"
        if why is None:
            self.ready = True
            return None
        self._lose()
        await self.process.stop(2.0)
        return why

    async def fork(
        self, name: str, env: Mapping[str, str], timeout: float = FORK_TIMEOUT
    ) -> ForkedProcess | str:
        """A new queue-proxy named ``name`` running with ``env``; or why there is none."""
        if not self.ready or self._sock is None:
            return "the zygote is not ready"
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        done: asyncio.Future[ForkedProcess | str] = loop.create_future()
        read_fd, write_fd = os.pipe()
        self._pending[rid] = (done, name)
        try:
            try:
                async with asyncio.timeout(timeout):
                    await self._send(wire.encode({"id": rid, "env": dict(env), "cwd": self.cwd}), [write_fd])
                    result = await asyncio.shield(done)
            finally:
                os.close(write_fd)  # the zygote's child holds its own copy
        except BaseException as e:
            # Given up (or cancelled): a reply that comes later finds no request and kills its child.
            self._pending.pop(rid, None)
            os.close(read_fd)
            late = done.result() if done.done() else None
            if isinstance(late, ForkedProcess):
                late.kill_now()
            if isinstance(e, TimeoutError):
                return f"no answer from the zygote within {timeout:g} s"
            if isinstance(e, (OSError, wire.WireError)):
                return str(e)
            raise
        if isinstance(result, str):
            os.close(read_fd)
            return result
        try:
            await result.follow_output(read_fd)
        except BaseException:
            result.kill_now()
            raise
        return result

    async def _send(self, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock = self._sock
            if sock is None:
                raise OSError("the zygote is gone")
            try:
                socket.send_fds(sock, [data], fds)
                return
            except BlockingIOError:
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(sock.fileno(), _resolve, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(sock.fileno())

    def _on_readable(self) -> None:
        while self._sock is not None:
            try:
                data, fds, flags, _ = socket.recv_fds(self._sock, wire.MAX_MESSAGE + 1, wire.MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._lose()
                return
            if not data and not fds:
                self._lose()
                return
            try:
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    raise wire.WireError("a message from the zygote was cut")
                self._on_message(wire.decode(data), fds)
            except wire.WireError as e:
                log.warning("%s: %s", self.name, e)
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _on_message(self, msg: dict[str, Any], fds: list[int]) -> None:
        """One message; the fds it uses are taken out of ``fds``, the rest are closed by the caller."""
        if "exit" in msg:
            pid, code = msg["exit"], msg.get("code")
            child = self._children.pop(pid, None) if isinstance(pid, int) else None
            if child is not None:
                child.exit_code(code if isinstance(code, int) else UNKNOWN_CODE)
            return
        if "ready" in msg or "fatal" in msg:
            if "fatal" in msg:
                self.fatal = str(msg["fatal"])
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None if "ready" in msg else self.fatal)
            return
        rid = wire.request_id(msg)
        waiting = self._pending.pop(rid, None) if rid is not None else None
        pid = msg.get("pid")
        if isinstance(pid, int) and fds:
            pidfd = fds.pop(0)
            if waiting is None or waiting[0].done() or self._closing:
                # Nobody waits for it any more: a queue-proxy nobody would ever stop.
                log.warning("%s forked pid %s after its request gave up: killing it", self.name, pid)
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                os.close(pidfd)
                return
            child = ForkedProcess(waiting[1], pid, pidfd, ring=self._ring, on_line=self._on_line)
            self._children[pid] = child
            self.children()  # prunes the exited ones
            self._forked.append(child)
            waiting[0].set_result(child)
        elif waiting is not None and not waiting[0].done():
            waiting[0].set_result(f"the zygote could not fork: {msg.get('error', 'no reason given')}")
        elif "error" in msg:
            log.warning("%s: %s", self.name, msg["error"])

    def _lose(self) -> None:
        """The control socket is closed or broken: the zygote is gone (or going)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self.ready = False
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result("it exited before it was ready")
        for done, _ in self._pending.values():
            if not done.done():
                done.set_result("the zygote is gone")
        self._pending.clear()
        children, self._children = self._children, {}
        for child in children.values():
            child.zygote_gone()
        if not self._closing and self._on_lost is not None:
            self._on_lost(self)

    async def close(self, grace: float = 2.0) -> None:
        """End of input for the zygote, then stop it. It exits 0, after SIGTERM to any queue-proxy it
        forked that still runs (the runtime stops its pods first: a runtime that died did not)."""
        self._closing = True
        self._lose()
        if self.process is not None:
            await self.process.stop(grace)

    def kill_zygote(self) -> None:
        """SIGKILL the zygote alone (it hangs): what it forked keeps running."""
        if self.process is not None:
            self.process.kill_now()

    def kill_now(self) -> None:
        """SIGKILL the zygote and every queue-proxy it forked that still runs."""
        self._closing = True
        for child in self.children():
            child.kill_now()
        if self.process is not None:
            self.process.kill_now()
