"""Processes for the benchmarks: start, wait for a port, measure CPU and memory, always clean up.

Everything listens on 127.0.0.1 on free ports; every process started through :class:`Procs` is
killed (its whole process group) when the ``with`` block ends, whatever happened inside it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

__all__ = ["PYTHON", "ROOT", "Procs", "Usage", "UsageMeter", "free_port", "wait_http", "wait_port"]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s")


def http_get(port: int, path: str = "/", host: str = "bench", headers: str = "", timeout: float = 5.0) -> int:
    """Status of one GET (0 when the connection failed): for readiness polls, not for load."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        parts = data.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except OSError:
        return 0


def wait_http(
    port: int,
    path: str = "/",
    host: str = "bench",
    timeout: float = 60.0,
    procs: Iterable[subprocess.Popen[bytes]] = (),
) -> float:
    """Poll until a GET answers 200; returns the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args!r} exited with {p.returncode}")
        if http_get(port, path, host) == 200:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port}{path} (Host {host}) did not answer 200 within {timeout:.0f} s")


class Procs:
    """Started processes, each in its own session (so its children go with it); all killed on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        try:
            p = subprocess.Popen(
                args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM (a graceful drain), then SIGKILL to the whole group."""
        if p.poll() is None:
            with _quiet():
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with _quiet():
            os.killpg(p.pid, signal.SIGKILL)
        with _quiet():
            p.wait(5)

    def kill(self, p: subprocess.Popen[bytes]) -> None:
        with _quiet():
            os.killpg(p.pid, signal.SIGKILL)
        with _quiet():
            p.wait(5)

    def close(self) -> None:
        for p in reversed(self.procs):
            self.kill(p)
        self.procs.clear()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return t is not None and issubclass(t, OSError | subprocess.TimeoutExpired | psutil.Error)


class Usage:
    def __init__(self, cpu_seconds: float, peak_rss: int, idle_rss: int, pids: int) -> None:
        self.cpu_seconds = cpu_seconds
        self.peak_rss = peak_rss
        self.idle_rss = idle_rss
        self.pids = pids


class UsageMeter:
    """CPU time and peak RSS (summed) of the processes ``select`` names, sampled every 50 ms."""

    def __init__(self, select: Callable[[], list[int]]) -> None:
        self.select = select
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._cpu0: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self.peak_rss = 0
        self.idle_rss = 0

    def _refresh(self) -> None:
        for pid in self.select():
            if pid not in self._procs:
                with _quiet():
                    proc = psutil.Process(pid)
                    self._procs[pid] = proc
                    self._cpu0.setdefault(pid, 0.0 if self._thread is not None else _cpu(proc))

    def _sample(self) -> None:
        total = 0
        for pid, proc in list(self._procs.items()):
            try:
                total += proc.memory_info().rss
                self._cpu_last[pid] = _cpu(proc)
            except psutil.Error:
                self._procs.pop(pid)
        self.peak_rss = max(self.peak_rss, total)

    def __enter__(self) -> UsageMeter:
        self._refresh()
        self._sample()
        self.idle_rss = self.peak_rss
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(0.05):
            n += 1
            if n % 20 == 0:
                self._refresh()  # processes that appeared (pods of zeroscale up)
            self._sample()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample()

    def usage(self) -> Usage:
        cpu = sum(self._cpu_last.get(pid, c0) - c0 for pid, c0 in self._cpu0.items())
        return Usage(cpu, self.peak_rss, self.idle_rss, len(self._cpu0))


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def tree(pid: int, exclude: Callable[[psutil.Process], bool] | None = None) -> list[int]:
    """``pid`` and its descendants, minus those ``exclude`` picks (the user app, in a full path)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for p in procs:
        try:
            if exclude is None or not exclude(p):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def write_json(doc: dict[str, Any], kind: str, started: datetime, json_out: str | None) -> Path:
    """Write a run's JSON to ``json_out``, or to benchmarks/results/<kind>-<start time>.json; the path."""
    default = ROOT / "benchmarks" / "results" / f"{kind}-{started:%Y%m%dT%H%M%S}.json"
    out = Path(json_out) if json_out else default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return out
