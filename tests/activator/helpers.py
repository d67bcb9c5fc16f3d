"""Small helpers for asyncio tests: poll for a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Yield to the loop until ``cond()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    spins = 0
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        spins += 1
        # First let ready callbacks run; past that, give real I/O a moment.
        await asyncio.sleep(0 if spins < 100 else 0.01)
