"""Drain control and the admin port (Knative 8022) with its one endpoint, ``/wait-for-drain``.

SIGTERM starts the drain for good. ``GET /wait-for-drain`` (the user container's preStop hook) starts
or joins it and answers 200 once it completes; if no SIGTERM follows within one second the drain is
called off, because then it was the user container alone restarting (a failed liveness probe) and the
queue-proxy must go on serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from serving.drain import Drainer

if TYPE_CHECKING:
    from serving.httpserver import Request, Responder

    from .sideports import Route

__all__ = ["DrainControl", "admin_routes"]

log = logging.getLogger("queueproxy.drain")

RESET_WITHOUT_SIGTERM = 1.0
POLL = 0.05


class DrainControl:
    __slots__ = ("_reset_after", "drainer", "terminating")

    def __init__(self, drainer: Drainer, *, reset_after: float = RESET_WITHOUT_SIGTERM) -> None:
        self.drainer = drainer
        self._reset_after = reset_after
        self.terminating = False

    @property
    def draining(self) -> bool:
        return self.drainer.draining

    def request_started(self) -> None:
        self.drainer.request_started()

    def request_finished(self) -> None:
        self.drainer.request_finished()

    def terminate(self) -> None:
        """SIGTERM: readiness fails from now on and the drain cannot be called off."""
        if not self.terminating:
            log.info("SIGTERM: draining (quiet period %.1f s)", self.drainer.quiet_period)
        self.terminating = True
        self.drainer.start()

    async def wait_drained(self) -> None:
        """Return once the drain has started and completed (quiet, nothing in flight, or the cap)."""
        while not self.drainer.complete():  # noqa: ASYNC110 - a clock-driven state, not an event
            await asyncio.sleep(POLL)

    async def wait_for_drain(self) -> None:
        """The preStop path: start or join the drain; return when it completes or is called off."""
        self.drainer.start()
        if not self.terminating:
            asyncio.get_running_loop().call_later(self._reset_after, self._reset_unless_terminating)
        while self.drainer.draining and not self.drainer.complete():  # noqa: ASYNC110
            await asyncio.sleep(POLL)

    def _reset_unless_terminating(self) -> None:
        if not self.terminating and self.drainer.draining:
            log.info("no SIGTERM followed /wait-for-drain within %.1f s: drain called off", self._reset_after)
            self.drainer.reset()


def admin_routes(control: DrainControl) -> dict[str, Route]:
    """The admin port's one path (served by :func:`queueproxy.sideports.serve_side_port`)."""

    async def wait_for_drain(request: Request, resp: Responder) -> None:
        await control.wait_for_drain()
        await resp.send(200, "drained" if control.drainer.complete() else "drain called off")

    return {"/wait-for-drain": wait_for_drain}
