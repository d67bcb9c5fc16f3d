"""Polling helpers: wait for a condition with a generous deadline instead of sleeping for a guess."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(
    cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> None:
    """Return once cond() is truthy; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or cond}")
        await asyncio.sleep(interval)


def wait_until(
    cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> None:
    """Blocking twin of until() for synchronous tests."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or cond}")
        time.sleep(interval)
