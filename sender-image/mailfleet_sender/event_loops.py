"""The event loop a sender process runs on: uvloop when it is installed (libuv in C: socket
I/O, transports and timers cost less Python per message, see docs/sender.md "Performance"),
else asyncio's own. `MAILFLEET_EVENT_LOOP=asyncio` forces the standard loop (to compare, or to
rule uvloop out when chasing a bug); the sender behaves the same on both.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

ENV = "MAILFLEET_EVENT_LOOP"
T = TypeVar("T")


def loop_factory(
    env: Mapping[str, str] | None = None,
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's default) when absent or turned off."""
    choice = (os.environ if env is None else env).get(ENV, "").strip().lower()
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
