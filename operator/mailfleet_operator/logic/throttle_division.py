"""Dividing the pool-wide limits of a SendingPool among its active pods (pure, no I/O).

Every limit in the spec is pool-wide (a user thinks "this pool may send 100 msg/s to Gmail"),
but each sender enforces its own token buckets. The operator gives every active pod an equal
share, rendered into the one config file all pods read. Rounding rules, chosen so the pods
together never exceed what the user allowed, except where that would starve a pod:

- Rates (messages per period) are divided exactly and rounded *down* to a thousandth of a
  message per period: 100/s over 3 pods is 33.333/s each (99.999/s in total).
- Whole counts (messages per hour) are rounded down, but never below 1.
- Connections are rounded down, never below 1: a pod with no connection to a provider could
  never deliver there, so 2 connections over 4 pods give 1 each (4 in total). The docs say so.

"Active pods" are the pods that hold IPs (or, in relay mode, the ready active pods); standbys
send nothing and get no share. When the count changes the config is re-rendered and the pods
reload it without a restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mailfleet_sender import units


@dataclass(frozen=True)
class Limits:
    """One destination's limits, pool-wide or per pod (None: unlimited)."""

    messages_per_second: float | None = None
    messages_per_hour: int | None = None
    max_connections: int | None = None


def _checked(pods: int) -> int:
    if pods < 1:
        raise ValueError(f"cannot divide limits among {pods} pods: at least one is needed")
    return pods


def divide_per_second(total: float | None, pods: int) -> float | None:
    """An equal share of a per-second rate, rounded down to 0.001."""
    if total is None:
        return None
    return max(math.floor(total / _checked(pods) * 1000) / 1000, 0.001)


def divide_count(total: int | None, pods: int) -> int | None:
    """An equal share of a whole count, rounded down, at least 1."""
    if total is None:
        return None
    return max(1, total // _checked(pods))


def divide_rate(rate: units.Rate, pods: int) -> units.Rate:
    """ "100/s" over 4 pods is "25/s"; the period is kept so burst sizes stay per period."""
    count = max(math.floor(rate.count / _checked(pods) * 1000) / 1000, 0.001)
    whole = int(count)
    return units.Rate(count=whole if whole == count else count, per=rate.per)


def divide_rate_text(text: str | None, pods: int) -> str | None:
    """The same on the spec's text form: "100/s" -> "25/s"."""
    if text is None:
        return None
    return units.format_rate(divide_rate(units.parse_rate(text), pods))


def divide_limits(limits: Limits, pods: int) -> Limits:
    return Limits(
        messages_per_second=divide_per_second(limits.messages_per_second, pods),
        messages_per_hour=divide_count(limits.messages_per_hour, pods),
        max_connections=divide_count(limits.max_connections, pods),
    )


def count_active_pods(*, holders: int, ready_active: int, relay: bool) -> int:
    """The divisor: pods holding IPs, or in relay mode the ready active pods; at least 1.

    At least 1 so a pool whose pods are all down still renders a valid config (nothing is
    sent then anyway)."""
    return max(1, ready_active if relay else holders)
