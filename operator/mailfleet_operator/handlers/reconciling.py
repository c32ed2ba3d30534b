"""What every kind's handlers share: one measured reconcile cycle, the change handler's error
policy, and the per-object timer daemon.

Each kind's handlers pass a `cycle` (a coroutine function running one reconcile and returning
the seconds until the next one), so the controllers differ only in how they gather inputs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from mailfleet_operator import metrics

Cycle = Callable[[], Awaitable[float]]
"""One reconcile of one object; returns the seconds after which it wants another."""


async def measured(kind: str, cycle: Cycle) -> float:
    """Run `cycle`, counted and timed per kind; a failure is counted by error class and
    re-raised (the caller decides whether it is retried by kopf or by the timer)."""
    metrics.RECONCILES.labels(kind=kind).inc()
    with metrics.RECONCILE_SECONDS.labels(kind=kind).time():
        try:
            return await cycle()
        except Exception as error:
            metrics.RECONCILE_ERRORS.labels(kind=kind, error=type(error).__name__).inc()
            raise


async def run_now(cycle: Callable[[], Awaitable[object]], *, error_delay: float) -> None:
    """A create/update/resume handler's cycle: a failure becomes kopf's TemporaryError, so
    kopf logs it, posts an event and retries after `error_delay` (never a permanent stop)."""
    try:
        await cycle()
    except Exception as error:
        raise kopf.TemporaryError(
            f"reconcile failed: {type(error).__name__}: {error}", delay=error_delay
        ) from error


async def run_timer(
    stopped: kopf.DaemonStopped,
    cycle: Cycle,
    *,
    first_delay: float,
    error_delay: float,
    logger: Any,
) -> None:
    """A per-object daemon: wait, run a cycle, then wait as long as it asked, until the
    object goes or the operator stops. A failure is logged and retried after `error_delay`;
    it never ends the daemon (kopf would not restart it)."""
    delay = first_delay
    while not stopped:
        await stopped.wait(delay)
        if stopped:
            break
        try:
            delay = await cycle()
        except Exception as error:  # logged and retried; never fatal
            logger.warning(f"reconcile failed: {type(error).__name__}: {error}")
            delay = error_delay
        await asyncio.sleep(0)  # a zero delay must still let the loop breathe
