"""Waiting for a condition instead of sleeping: the one `eventually` the tests share.

A generous deadline (the suite must pass with both cores busy); the poll interval is short so
an idle machine does not pay for it. The check may be a plain or an async function."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

DEADLINE = 60.0


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str = "condition",
                     deadline: float = DEADLINE, interval: float = 0.05) -> float:
    """Wait until `check()` is true; the seconds it took. AssertionError naming `what` when
    it is still false after `deadline` seconds."""
    started = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > deadline:
            raise AssertionError(f"not within {deadline} s: {what}")
        await asyncio.sleep(interval)
