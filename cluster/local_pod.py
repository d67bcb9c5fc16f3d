"""One local pod: the user's process and a queue-proxy in front of it, from start to gone.

The pod's task owns both processes: start, wait until the queue-proxy reports the user container
ready (``GET /`` with ``K-Network-Probe: queue`` -> 200 ``queue``, polled every 50 ms), watch it, and
stop it. A graceful stop is Knative's order: the pod is already out of new traffic (terminating),
the queue-proxy gets SIGTERM and drains (in-flight requests and websockets finish), and only once it
has exited does the user process get SIGTERM (SIGKILL after the grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serving.probe import probe_queue
from serving.spec import Revision, encode_readiness_probe
from serving.types import Endpoint, RevisionKey

from .local_process import ChildProcess, ProcessHandle
from .local_standby import StandbyPool

__all__ = [
    "LocalPod",
    "PodFailure",
    "PodPorts",
    "PodSettings",
    "PodState",
    "queue_base_env",
    "queue_env",
    "user_env",
]

log = logging.getLogger("zeroscale.local")

LOCALHOST = "127.0.0.1"
PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)  # where the queueproxy package lives


@dataclass(frozen=True, slots=True)
class PodPorts:
    serving: int
    admin: int
    metrics: int
    user_metrics: int
    user: int


@dataclass(frozen=True, slots=True)
class PodSettings:
    python: str = sys.executable
    ready_timeout: float = 60.0  # not ready by then: reported with its last output and replaced
    poll_interval: float = 0.05  # readiness polling until first ready: at most this far apart,
    first_poll_interval: float = 0.005  # starting this close (a forked queue-proxy listens in ~8 ms)
    watch_interval: float = 0.5  # readiness polling once ready
    watch_failures: int = 3  # consecutive failed checks before a ready pod counts as unready
    drain_quiet_period: float = 1.0  # QUEUE_DRAIN_QUIET_PERIOD_SECONDS: endpoints update at once here
    termination_grace: float | None = None  # None: the revision's timeoutSeconds, as Knative's pods
    kill_grace: float = 3.0  # SIGTERM -> SIGKILL for a pod that failed or is stopped in a hurry
    output_lines: int = 200
    queue_proxy_zygote: bool = True  # queue-proxies forked from a pre-imported zygote (local_standby)


class PodState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    UNREADY = "unready"
    TERMINATING = "terminating"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class PodFailure:
    """A pod that died or never became ready, with the last output lines of each of its processes."""

    revision: RevisionKey
    pod: str
    reason: str
    at: float
    output: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def describe(self, lines: int = 20) -> str:
        out = [f"pod {self.pod} of revision {self.revision}: {self.reason}"]
        for container, text in self.output.items():
            tail = text[-lines:]
            if tail:
                out.append(f"  last output of {container}:")
                out.extend(f"    | {line}" for line in tail)
            else:
                out.append(f"  {container} printed nothing")
        return "\n".join(out)


def user_env(
    revision: Revision, ports: PodPorts, base: Mapping[str, str], python: str = sys.executable
) -> dict[str, str]:
    """The user process's environment: this one's, the spec's env, then Knative's PORT and K_* variables."""
    env = dict(base)
    # `python3` in a command means the interpreter zeroscale runs on (its virtualenv, with aiohttp),
    # as it would in an activated virtualenv.
    bin_dir = os.path.dirname(python)
    path = env.get("PATH", os.defpath)
    if bin_dir and bin_dir not in path.split(os.pathsep):
        env["PATH"] = os.pathsep.join((bin_dir, path))
    env.setdefault("PYTHONUNBUFFERED", "1")  # so that a Python app's output reaches the ring promptly
    for var in revision.template.container.env:
        env[var.name] = var.value
    env.update(
        PORT=str(ports.user),
        K_SERVICE=revision.service,
        K_CONFIGURATION=revision.configuration,
        K_REVISION=revision.name,
    )
    return env


def queue_base_env(base: Mapping[str, str]) -> dict[str, str]:
    """What every queue-proxy's environment starts from: ``base`` with this project on PYTHONPATH."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, base.get("PYTHONPATH", "")) if p)
    return env


def queue_env(
    revision: Revision, pod: str, ports: PodPorts, drain_quiet_period: float, base: Mapping[str, str]
) -> dict[str, str]:
    """The queue-proxy's environment: Knative's contract, on this pod's loopback ports, plus the app's
    protocol (``QUEUE_USER_PROTOCOL``: ``h2c`` when the container port is named h2c, else ``http1``)."""
    t = revision.template
    env = queue_base_env(base)
    env.update(
        QUEUE_SERVING_PORT=str(ports.serving),
        USER_PORT=str(ports.user),
        CONTAINER_CONCURRENCY=str(t.container_concurrency),
        REVISION_TIMEOUT_SECONDS=str(t.timeout_seconds),
        REVISION_RESPONSE_START_TIMEOUT_SECONDS=str(t.response_start_timeout_seconds),
        REVISION_IDLE_TIMEOUT_SECONDS=str(t.idle_timeout_seconds),
        SERVING_NAMESPACE=revision.namespace,
        SERVING_CONFIGURATION=revision.configuration,
        SERVING_REVISION=revision.name,
        SERVING_SERVICE=revision.service,
        SERVING_POD=pod,
        SERVING_POD_IP=LOCALHOST,
        SERVING_READINESS_PROBE=encode_readiness_probe(t.container.readiness_probe, ports.user),
        QUEUE_ADMIN_PORT=str(ports.admin),
        QUEUE_METRICS_PORT=str(ports.metrics),
        USER_METRICS_PORT=str(ports.user_metrics),
        QUEUE_DRAIN_QUIET_PERIOD_SECONDS=str(drain_quiet_period),
        QUEUE_BIND_ADDRESS=LOCALHOST,
        # Knative tells an h2c revision by its serving port 8013; local ports are random, so say it
        QUEUE_USER_PROTOCOL=t.container.protocol,
    )
    return env


class LocalPod:
    """A pod's processes and state; ``run()`` is its whole life, ``terminate()`` asks it to go."""

    def __init__(
        self,
        name: str,
        revision: Revision,
        ports: PodPorts,
        settings: PodSettings,
        on_change: Callable[[LocalPod], None],
        on_line: Callable[[str, str], None] | None = None,
        base_env: Mapping[str, str] | None = None,
        standby: StandbyPool | None = None,
    ) -> None:
        self.name = name
        self._standby = standby
        self.revision = revision
        self.ports = ports
        self.settings = settings
        self.state = PodState.STARTING
        self.created_at = time.monotonic()
        self.ready_at: float | None = None
        self.failure: PodFailure | None = None
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._terminating = False
        env = dict(os.environ if base_env is None else base_env)
        c = revision.template.container
        cwd = str(Path(revision.base_dir) / c.working_dir) if c.working_dir else revision.base_dir
        ring = settings.output_lines
        self.user = ChildProcess(
            f"{name}/user-container",
            [*c.command, *c.args],
            env=user_env(revision, ports, env, settings.python),
            cwd=cwd,
            ring=ring,
            on_line=on_line,
        )
        self._own_queue = ChildProcess(  # started when the standby pool has no queue-proxy to give
            f"{name}/queue-proxy",
            [settings.python, "-m", "queueproxy"],
            env=queue_env(revision, name, ports, settings.drain_quiet_period, env),
            cwd=PROJECT_ROOT,
            ring=ring,
            on_line=on_line,
        )
        self.queue: ProcessHandle = self._own_queue

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(
            pod_name=self.name,
            host=LOCALHOST,
            port=self.ports.serving,
            ready=self.state is PodState.READY,
            terminating=self.state is PodState.TERMINATING,
            metrics_port=self.ports.metrics,
            admin_port=self.ports.admin,
        )

    @property
    def terminating(self) -> bool:
        return self._terminating

    def terminate(self) -> None:
        """Out of new traffic now; the pod's task then drains and stops it."""
        if self._terminating:
            return
        self._terminating = True
        if self.state is not PodState.GONE:
            self._set(PodState.TERMINATING)
        self._wake.set()

    def _set(self, state: PodState) -> None:
        if self.state is not state:
            self.state = state
            self._on_change(self)

    def _fail(self, reason: str) -> None:
        self.failure = PodFailure(
            revision=self.revision.key,
            pod=self.name,
            reason=reason,
            at=time.time(),
            output={
                "user-container": tuple(self.user.last_lines()),
                "queue-proxy": tuple(self.queue.last_lines()),
            },
        )

    def _died(self) -> str | None:
        for proc, what in ((self.user, "user-container"), (self.queue, "queue-proxy")):
            if proc.returncode is not None:
                return proc.start_error or f"{what} exited with code {proc.returncode}"
        return None

    async def run(self) -> PodFailure | None:
        """Start, become ready, serve until terminated or dead, stop. Returns the failure, if any."""
        watchers: list[asyncio.Task[None]] = []
        graceful = False
        try:
            if not await self._start_processes(watchers):
                return self.failure
            ready = await self._become_ready()
            if self._standby is not None:
                self._standby.fill()  # now, not while the app was starting: both want the CPU
            if ready:
                await self._watch()
            graceful = self._terminating and self.failure is None
            return self.failure
        finally:
            for w in watchers:
                w.cancel()
            if not graceful:
                # A pod that failed (a process died, never ready) leaves traffic now, before its
                # processes are stopped: a queue-proxy whose app is dead would answer 502 to every
                # request sent to it while it drains.
                self._set(PodState.TERMINATING)
            await self._stop(graceful)
            self._set(PodState.GONE)

    async def _start_processes(self, watchers: list[asyncio.Task[None]]) -> bool:
        """The user process first (its start is the longer), then the queue-proxy: one forked by the
        standby pool's zygote when it can, else a new process."""
        if not await self.user.start():
            self._fail(self.user.start_error or "cannot start")
            return False
        watchers.append(asyncio.create_task(self._wake_on_exit(self.user)))
        taken = None
        if self._standby is not None:
            taken = await self._standby.take(self._own_queue.name, self._own_queue.env)
        if taken is not None:
            self.queue = taken
        elif not await self._own_queue.start():
            self._fail(self._own_queue.start_error or "cannot start")
            return False
        watchers.append(asyncio.create_task(self._wake_on_exit(self.queue)))
        return True

    async def _wake_on_exit(self, proc: ProcessHandle) -> None:
        await proc.wait()
        self._wake.set()

    async def _check(self, timeout: float) -> bool | None:
        """One readiness check, cut short (None) by a process exit or terminate()."""
        probe = asyncio.create_task(
            probe_queue(LOCALHOST, self.ports.serving, timeout, path=b"/", user_agent=b"zeroscale-local")
        )
        woken = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({probe, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (woken, probe):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if self._wake.is_set() or probe.cancelled():
            return None
        return probe.result()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _become_ready(self) -> bool:
        deadline = self.created_at + self.settings.ready_timeout
        pause = self.settings.first_poll_interval
        while True:
            remaining = deadline - time.monotonic()
            # The queue-proxy may hold a check up to 10 s while it probes a starting user process.
            ok = await self._check(max(0.1, min(remaining, 12.0)))
            if ok is None or self._wake.is_set():
                if not self._terminating:
                    self._fail(self._died() or "stopped")
                return False
            if ok:
                self.ready_at = time.monotonic()
                log.info(
                    "pod %s of %s ready in %.2f s",
                    self.name,
                    self.revision.key,
                    self.ready_at - self.created_at,
                )
                self._set(PodState.READY)
                return True
            if time.monotonic() >= deadline:
                self._fail(f"not ready after {self.settings.ready_timeout:g} s")
                return False
            await self._pause(pause)
            pause = min(pause * 1.5, self.settings.poll_interval)

    async def _watch(self) -> None:
        failures = 0
        while not self._wake.is_set():
            await self._pause(self.settings.watch_interval)
            if self._wake.is_set():
                break
            ok = await self._check(2.0)
            if ok is None:
                break
            failures = 0 if ok else failures + 1
            if ok:
                self._set(PodState.READY)
            elif failures >= self.settings.watch_failures:
                self._set(PodState.UNREADY)
        if not self._terminating:
            self._fail(self._died() or "stopped")

    async def _stop(self, graceful: bool) -> None:
        try:
            await self._stop_processes(graceful)
        except BaseException:
            # Cut short (the runtime's shutdown ran out of time, or was itself cancelled): this pod is
            # about to leave the runtime's books, so nobody else would kill what is left of it.
            self.queue.kill_now()
            self.user.kill_now()
            raise

    async def _stop_processes(self, graceful: bool) -> None:
        s = self.settings
        if not graceful:
            await asyncio.gather(self.queue.stop(s.kill_grace), self.user.stop(s.kill_grace))
            return
        # Knative gives a pod terminationGracePeriodSeconds = timeoutSeconds; the drain's quiet period
        # comes first, so it is added here.
        grace = (
            s.termination_grace if s.termination_grace is not None else self.revision.template.timeout_seconds
        )
        deadline = time.monotonic() + s.drain_quiet_period + max(grace, 1.0)
        code = await self.queue.stop(deadline - time.monotonic())
        if code not in (0, None):
            log.warning("queue-proxy of pod %s exited with code %s while draining", self.name, code)
        await self.user.stop(max(deadline - time.monotonic(), s.kill_grace))
