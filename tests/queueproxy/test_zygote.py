"""`python -m queueproxy --zygote`: one pre-imported process that forks a queue-proxy per request.

The test talks to a real zygote over the same SOCK_SEQPACKET socket the local runtime uses, and checks
that what it forks is an ordinary queue-proxy: its own session, exactly the environment sent, the cwd,
/dev/null for stdin, the output pipe for stdout and stderr, SIGTERM draining to exit 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest

from queueproxy import zygote_wire as wire
from tests.conftest import PYTHON, ROOT, free_port
from tests.queueproxy.procs import port_open, user_app
from tests.util import wait_until

TIMEOUT = 30.0


@dataclass
class ZygoteProc:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    forked: list[int] = field(default_factory=list)

    def recv(self, timeout: float = TIMEOUT) -> tuple[dict[str, Any], list[int]]:
        if not select.select([self.sock], [], [], timeout)[0]:
            raise AssertionError(f"no message from the zygote within {timeout} s")
        data, fds, _, _ = socket.recv_fds(self.sock, wire.MAX_MESSAGE + 1, wire.MAX_FDS)
        return (wire.decode(data) if data else {}), fds

    def request(self, message: dict[str, Any] | bytes, fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        socket.send_fds(self.sock, [data], fds)
        reply, rfds = self.recv()
        if "pid" in reply:
            self.forked.append(reply["pid"])
        return reply, rfds

    def fork(self, rid: int, env: dict[str, str], cwd: str = str(ROOT)) -> tuple[int, int, int]:
        """pid, pidfd, and the read end of its output pipe."""
        r, w = os.pipe()
        try:
            reply, fds = self.request({"id": rid, "env": env, "cwd": cwd}, [w])
        finally:
            os.close(w)
        assert reply.get("id") == rid and "pid" in reply, reply
        assert len(fds) == 1
        return reply["pid"], fds[0], r

    def exit_record(self, pid: int) -> int:
        while True:
            msg, fds = self.recv()
            for fd in fds:
                os.close(fd)
            if msg.get("exit") == pid:
                return int(msg["code"])


@contextlib.contextmanager
def zygote(**env: str) -> Iterator[ZygoteProc]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [PYTHON, "-m", "queueproxy", "--zygote"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdin=theirs.fileno(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    theirs.close()
    z = ZygoteProc(proc, ours)
    try:
        msg, _ = z.recv(60)
        assert msg == {"ready": proc.pid}
        yield z
    finally:
        for pid in z.forked:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(10)
        ours.close()


def qp_env(user_port: int, serving: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "QUEUE_BIND_ADDRESS": "127.0.0.1",
        "QUEUE_SERVING_PORT": str(serving),
        "QUEUE_ADMIN_PORT": str(free_port()),
        "QUEUE_METRICS_PORT": str(free_port()),
        "USER_METRICS_PORT": str(free_port()),
        "USER_PORT": str(user_port),
        "SERVING_REVISION": "zygote-00001",
        "QUEUE_DRAIN_QUIET_PERIOD_SECONDS": "0.2",
        **extra,
    }


def read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def test_a_forked_queue_proxy_is_an_ordinary_one_and_drains_on_sigterm(tmp_path: Any) -> None:
    # The zygote's own environment asks for JSON log lines; the child's, sent without that variable,
    # must give text lines: os.environ was replaced, not merged. (/proc/<pid>/environ still shows the
    # zygote's: the kernel keeps the environment a process was exec'd with, and the child was not.)
    with user_app() as app, zygote(ZEROSCALE_LOG_FORMAT="json") as z:
        serving = free_port()
        env = qp_env(app.port, serving)
        pid, pidfd, out = z.fork(1, env, cwd=str(tmp_path))
        try:
            wait_until(lambda: port_open(serving), timeout=TIMEOUT, what="the forked queue-proxy serving")
            child = psutil.Process(pid)
            assert child.ppid() == z.proc.pid  # forked by the zygote, not started anew
            assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # its own session and group
            assert child.cwd() == str(tmp_path)
            assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
            assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2")
            assert os.readlink(f"/proc/{pid}/fd/1").startswith("pipe:")
            assert child.name() == "queue-proxy"
            assert len(psutil.Process(z.proc.pid).threads()) == 1  # it forks with no other thread
            r = httpx.get(f"http://127.0.0.1:{serving}/headers", timeout=10)
            assert r.status_code == 200 and r.json()["path"] == "/headers"
            r = httpx.get(f"http://127.0.0.1:{serving}/", headers={"K-Network-Probe": "queue"}, timeout=10)
            assert (r.status_code, r.text) == (200, "queue")
            os.killpg(pid, signal.SIGTERM)
            assert z.exit_record(pid) == 0  # drained, exited 0, reaped by the zygote
            assert select.select([pidfd], [], [], 0)[0]  # the pidfd says so too
            text = read_all(out)
            assert b"serving on 127.0.0.1:%d" % serving in text and b"SIGTERM: draining" in text
            assert b"queue-proxy INFO serving on" in text and b'"severity"' not in text  # text, not JSON
        finally:
            os.close(pidfd)
            os.close(out)


def test_a_killed_child_is_reported_with_its_signal_and_a_bad_config_as_usual() -> None:
    with zygote() as z:
        pid, pidfd, out = z.fork(1, qp_env(free_port(), free_port()))
        os.kill(pid, signal.SIGKILL)
        assert z.exit_record(pid) == -signal.SIGKILL
        os.close(pidfd)
        os.close(out)
        pid, pidfd, out = z.fork(2, qp_env(free_port(), free_port(), QUEUE_SERVING_PORT="eighty"))
        assert z.exit_record(pid) == 2
        assert b"QUEUE_SERVING_PORT" in read_all(out)
        os.close(pidfd)
        os.close(out)


@pytest.mark.parametrize(
    ("message", "nfds", "says"),
    [
        pytest.param(b"PORT=8080", 1, "not JSON", id="not-json"),
        pytest.param(b"[1, 2]", 1, "JSON object", id="not-an-object"),
        pytest.param({"env": {}, "cwd": "/"}, 1, '"id" must be an integer', id="no-id"),
        pytest.param({"id": 3, "env": {"A": 1}, "cwd": "/"}, 1, '"env" must be', id="env-not-strings"),
        pytest.param({"id": 3, "env": {"A=B": "1"}, "cwd": "/"}, 1, '"env" must be', id="env-name-with-eq"),
        pytest.param({"id": 3, "env": {}, "cwd": 7}, 1, '"cwd" must be', id="cwd-not-a-string"),
        pytest.param({"id": 3, "env": {}, "cwd": "/no/such/dir"}, 1, "is not a directory", id="cwd-missing"),
        pytest.param({"id": 3, "env": {}, "cwd": "/"}, 0, "needs one fd", id="no-pipe"),
        pytest.param({"id": 3, "env": {}, "cwd": "/"}, 2, "needs one fd", id="two-fds"),
    ],
)
def test_a_bad_request_gets_an_error_and_the_zygote_goes_on(
    message: dict[str, Any] | bytes, nfds: int, says: str
) -> None:
    with zygote() as z:
        pipes = [os.pipe() for _ in range(nfds)]
        try:
            reply, fds = z.request(message, [w for _, w in pipes])
        finally:
            for r, w in pipes:
                os.close(r)
                os.close(w)
        assert fds == []
        assert reply["id"] == (message.get("id") if isinstance(message, dict) else None)
        assert says in reply["error"], reply
        # still serving: the next request is answered
        reply, fds = z.request({"id": 9, "env": {}, "cwd": "/no/such/dir"}, [])
        assert reply["id"] == 9 and "error" in reply
        assert z.proc.poll() is None


def test_an_oversized_request_is_refused() -> None:
    with zygote() as z:
        r, w = os.pipe()
        try:
            reply, _ = z.request(b"x" * (wire.MAX_MESSAGE + 1), [w])
        finally:
            os.close(r)
            os.close(w)
        assert reply["id"] is None and "over" in reply["error"]


def test_end_of_input_stops_the_zygote_with_exit_0() -> None:
    with zygote() as z:
        z.sock.shutdown(socket.SHUT_WR)
        assert z.proc.wait(TIMEOUT) == 0


@pytest.mark.parametrize("how", ["end of input", "SIGTERM"])
def test_a_runtime_gone_with_queue_proxies_running_stops_them(how: str) -> None:
    """The runtime stops its pods before it lets the zygote go; one that died (kill -9) could not: the
    zygote then sends SIGTERM to what it forked, which drains and exits, instead of serving on."""
    with user_app() as app, zygote() as z:
        serving = free_port()
        _pid, pidfd, out = z.fork(1, qp_env(app.port, serving))
        try:
            wait_until(lambda: port_open(serving), timeout=TIMEOUT, what="the forked queue-proxy serving")
            if how == "SIGTERM":  # as the kernel's parent-death signal (setpriv --pdeathsig) sends it
                z.proc.send_signal(signal.SIGTERM)
            else:
                z.sock.shutdown(socket.SHUT_WR)
            assert z.proc.wait(TIMEOUT) == 0
            assert select.select([pidfd], [], [], TIMEOUT)[0], "the queue-proxy still runs"
            assert b"SIGTERM: draining" in read_all(out)
        finally:
            os.close(pidfd)
            os.close(out)


def test_stdin_that_is_not_a_socket_is_refused() -> None:
    r = subprocess.run(
        [PYTHON, "-m", "queueproxy", "--zygote"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 1 and b"queue-proxy --zygote: standard input" in r.stderr


def test_unknown_arguments_are_refused() -> None:
    r = subprocess.run([PYTHON, "-m", "queueproxy", "--bogus"], cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == 2 and b"usage: queue-proxy [--zygote]" in r.stderr


@pytest.mark.parametrize(
    ("message", "error"),
    [
        pytest.param({"id": True, "env": {}, "cwd": "/"}, '"id"', id="bool-id"),
        pytest.param({"id": 1, "env": [], "cwd": "/"}, '"env"', id="env-list"),
        pytest.param({"id": 1, "env": {"": "x"}, "cwd": "/"}, '"env"', id="empty-name"),
        pytest.param({"id": 1, "env": {"A": "x\0"}, "cwd": "/"}, '"env"', id="nul-in-value"),
        pytest.param({"id": 1, "env": {}, "cwd": ""}, '"cwd"', id="empty-cwd"),
    ],
)
def test_parse_request_names_the_bad_field(message: dict[str, Any], error: str) -> None:
    with pytest.raises(wire.WireError, match=error):
        wire.parse_request(message)


def test_messages_are_bounded_both_ways() -> None:
    assert wire.parse_request({"id": 1, "env": {"A": "b"}, "cwd": "/"}) == wire.ForkRequest(
        1, {"A": "b"}, "/"
    )
    with pytest.raises(wire.WireError, match="over the"):
        wire.encode({"env": {"A": "x" * wire.MAX_MESSAGE}})
    with pytest.raises(wire.WireError, match="over the"):
        wire.decode(b" " * (wire.MAX_MESSAGE + 1))
