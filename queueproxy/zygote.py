"""A queue-proxy fork server for the local runtime: ``python -m queueproxy --zygote``.

Most of a queue-proxy's start is the interpreter and its imports (~115-150 ms of CPU on a 2-core VM);
25 cold starts at once pay that 25 times on the same two cores. The zygote pays it once: it imports
everything a queue-proxy runs (and what one imports later: uvloop, the Stat protobuf, the h2c
client), freezes those objects out of the garbage collector's reach (``gc.freeze``, so children do
not copy the pages a collection would touch), then forks one queue-proxy per request: a few ms.

Its standard input is a SOCK_SEQPACKET unix socket to the runtime (queueproxy.zygote_wire has the
messages). It is single-threaded and never creates an event loop: it waits in ``poll`` on that
socket and on the signal wake-up pipe, and SIGCHLD only writes to that pipe, so reaping and answering
never interleave. Per request it forks a child that becomes an ordinary queue-proxy process:

1. ``setsid()``: its own session and process group, like every process the runtime starts; the
   zygote waits (at most 5 s) for the child to say so before it answers, so a signal the runtime
   sends to the new group cannot arrive before the group exists;
2. signals back to their defaults (SIGINT to Python's KeyboardInterrupt), no wake-up fd;
3. stdin /dev/null, stdout and stderr the pipe the runtime sent, every other fd closed;
4. ``chdir(cwd)``, ``os.environ`` replaced wholesale by the pod's environment;
5. its name (``/proc/self/comm``, what ps and top show) ``queue-proxy``;
6. ``queueproxy.app.run(os.environ)`` (SIGTERM drains as usual), then ``os._exit(code)``: the child
   never returns into the zygote's loop.

What differs from a started process: ``/proc/<pid>/cmdline`` and ``/proc/<pid>/environ`` are the
kernel's copies from the zygote's exec (``ps -f`` shows ``python -m queueproxy --zygote``, ``ps e``
the zygote's environment); the process itself sees only the pod's.

The answer carries a pidfd of the child (opened by the zygote, which has not reaped it yet, so it
cannot name a reused pid); the runtime watches it for the exit. The zygote reaps its children and
reports each ``pid code``; if the zygote dies its children keep serving, their exit is still seen
through the pidfd, and their exit code is unknown. End of input on the socket: it exits 0. The
runtime stops its pods before it closes the socket, so a child still running then was left by a
runtime that died (``kill -9`` of ``zeroscale up``): the zygote sends it SIGTERM (it drains and exits)
rather than leave it serving for nobody. SIGTERM to the zygote (the runtime's stop, or the kernel's
parent-death signal that ``setpriv --pdeathsig`` arms when the runtime dies) does the same, then
exits. Without pidfd_open (Linux < 5.3) it answers ``fatal`` and exits 3. A request it cannot serve
gets an error answer; it never stops on one.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import NoReturn

from . import zygote_wire as wire

__all__ = ["main"]

SETSID_WAIT = 5.0  # seconds the zygote waits for a child's setsid() before answering anyway
_FD_LIMIT = 1 << 20


def _warm() -> None:
    """Everything a queue-proxy imports, at start and later, so that no child imports anything."""
    import uvloop  # noqa: F401  (run() imports it lazily)

    import serving.h2upstream
    import serving.stat  # noqa: F401  (the first protobuf scrape imports it)

    from . import app  # noqa: F401


class _Gone(Exception):
    """The runtime's end of the control socket is closed."""


class Zygote:
    def __init__(self, ctrl: socket.socket) -> None:
        self._ctrl = ctrl
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._children: set[int] = set()  # forked and not reaped yet: their pids cannot be reused

    def _send(self, message: dict[str, object], fds: list[int] | None = None) -> None:
        try:
            socket.send_fds(self._ctrl, [wire.encode(message)], fds or [])
        except OSError as e:  # EPIPE/ECONNRESET: the runtime has gone
            raise _Gone from e

    def serve(self) -> int:
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        # SIGTERM: the runtime's stop, or the kernel's parent-death signal when the runtime was killed
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        poller = select.poll()
        poller.register(self._ctrl.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            self._send({"ready": os.getpid()})
            while True:
                for fd, _ in poller.poll():
                    if fd == self._wake_r:
                        signals = b""
                        with contextlib.suppress(BlockingIOError):
                            while chunk := os.read(self._wake_r, 512):
                                signals += chunk
                        if signal.SIGTERM in signals:
                            self._stop_orphans()
                            return 0
                    elif not self._on_request():
                        self._stop_orphans()
                        return 0
                self._reap()
        except _Gone:
            self._stop_orphans()
            return 0

    def _stop_orphans(self) -> None:
        """The runtime has gone: SIGTERM to every child still running (each drains, then exits)."""
        with contextlib.suppress(_Gone):
            self._reap()  # whatever has exited is reaped first; only unreaped pids are signalled
        for pid in sorted(self._children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        if self._children:
            print(
                f"queue-proxy zygote: the runtime has gone; SIGTERM to the {len(self._children)} "
                "queue-proxies it left running",
                file=sys.stderr,
            )

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._children.discard(pid)
            self._send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def _on_request(self) -> bool:
        """Serve one request; False at end of input."""
        try:
            data, fds, flags, _ = socket.recv_fds(self._ctrl, wire.MAX_MESSAGE + 1, wire.MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data and not fds:
            return False
        rid: int | None = None
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise wire.WireError(f"a request over {wire.MAX_MESSAGE} bytes or {wire.MAX_FDS} fds")
            message = wire.decode(data)
            rid = wire.request_id(message)
            request = wire.parse_request(message)
            if len(fds) != 1:
                raise wire.WireError(f"a request needs one fd (the output pipe), got {len(fds)}")
            if not os.path.isdir(request.cwd):
                raise wire.WireError(f'"cwd" {request.cwd!r} is not a directory')
            pid, pidfd = self._fork(request, fds[0])
        except (wire.WireError, OSError) as e:
            self._send({"id": rid, "error": str(e)})
            return True
        finally:
            for fd in fds:
                os.close(fd)
        try:
            self._send({"id": request.id, "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)
        return True

    def _fork(self, request: wire.ForkRequest, out_fd: int) -> tuple[int, int]:
        sync_r, sync_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()  # or the child would write the zygote's buffered output again
        try:
            pid = os.fork()
        except OSError:
            os.close(sync_r)
            os.close(sync_w)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, which leaves through os._exit
            self._child(request, out_fd, sync_w)
        self._children.add(pid)
        os.close(sync_w)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # reaped and reported as an unknown pid: ignored
            os.close(sync_r)
            raise
        try:
            if select.select([sync_r], [], [], SETSID_WAIT)[0]:
                os.read(sync_r, 1)  # b"" if the child died first: its exit is reported as usual
        finally:
            os.close(sync_r)
        return pid, pidfd

    def _child(self, request: wire.ForkRequest, out_fd: int, sync_w: int) -> NoReturn:  # pragma: no cover
        code = 1
        try:
            os.setsid()
            os.write(sync_w, b"s")
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            os.closerange(3, _FD_LIMIT)  # the socket's copy went with fd 0; pipes, pidfds, wake-up fd
            os.chdir(request.cwd)
            with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
                comm.write("queue-proxy")  # its name in ps and top (the command line stays the zygote's)
            os.environ.clear()
            os.environ.update(request.env)
            from .app import run

            code = run(os.environ)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)


def _control_socket() -> socket.socket:
    try:
        ctrl = socket.socket(fileno=0)
    except OSError as e:
        raise SystemExit(
            f"queue-proxy --zygote: standard input is not a socket ({e.strerror or e})"
        ) from None
    if ctrl.family != socket.AF_UNIX or ctrl.type != socket.SOCK_SEQPACKET:
        ctrl.detach()
        raise SystemExit("queue-proxy --zygote: standard input must be a unix SOCK_SEQPACKET socket")
    return ctrl


def main() -> int:
    t0 = time.perf_counter()
    ctrl = _control_socket()
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as e:
        reason = f"pidfd_open is not available here (Linux >= 5.3 and Python >= 3.9 are needed): {e}"
        print(f"queue-proxy --zygote: {reason}", file=sys.stderr)
        with contextlib.suppress(OSError):
            socket.send_fds(ctrl, [wire.encode({"fatal": reason})], [])
        return 3
    _warm()
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # a fork copies only the forking thread: a lock another one held stays locked
        reason = f"{threads} threads run after the imports; a process that forks must have one"
        print(f"queue-proxy --zygote: {reason}", file=sys.stderr)
        with contextlib.suppress(OSError):
            socket.send_fds(ctrl, [wire.encode({"fatal": reason})], [])
        return 3
    gc.collect()
    gc.freeze()  # imported objects move to a generation no collection walks: their pages stay shared
    print(
        f"queue-proxy zygote {os.getpid()} ready in {1000 * (time.perf_counter() - t0):.0f} ms",
        file=sys.stderr,
    )
    return Zygote(ctrl).serve()
