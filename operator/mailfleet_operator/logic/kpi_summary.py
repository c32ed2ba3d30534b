"""The pool's `status.kpis`: the pods' 24-hour KPI figures summed (pure, no I/O).

Each pod reports its own figures in /v1/stats `kpis` (`mailfleet_sender.kpis`):
`{"windows": {"24h": {"total": {...}}}}`. Counts add up over pods; rates do not, so they are
recomputed from the summed counts with the senders' denominators (delivery rate over sent,
the others over delivered; absent when the denominator is 0), never averaged. Percentiles do
not add up either: the pool's p95 delivery time is bounded by the largest pod p95 (at most 5 %
of each pod's deliveries are slower than its own p95, so at most 5 % of all are slower than
the largest), which is what is reported.

A pod whose figures are malformed is left out rather than trusted in part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mailfleet_operator.api import pool_events

WINDOW = "24h"
COUNTS = ("sent", "delivered", "hard_bounced", "complained", "opened_human", "clicked_human")
RATE_DIGITS = 4


def _figures(kpis: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod's 24-hour totals, or None when it reports none (or nonsense)."""
    windows = kpis.get("windows")
    window = windows.get(WINDOW) if isinstance(windows, Mapping) else None
    total = window.get("total") if isinstance(window, Mapping) else None
    if not isinstance(total, Mapping):
        return None
    figures: dict[str, Any] = {}
    for name in COUNTS:
        value = total.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        figures[name] = value
    p95 = total.get("deliver_p95_s")
    if p95 is not None and (
        isinstance(p95, bool) or not isinstance(p95, int | float) or not math.isfinite(p95)
        or p95 < 0
    ):
        return None
    figures["deliver_p95_s"] = p95
    return figures


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, RATE_DIGITS) if whole else None


def summarize(per_pod: Mapping[str, Mapping[str, Any]]) -> pool_events.KpiSummary | None:
    """`per_pod`: pod name -> its /v1/stats `kpis`. None when no pod gives 24-hour figures."""
    sums = dict.fromkeys(COUNTS, 0)
    p95s: list[float] = []
    pods = 0
    for kpis in per_pod.values():
        figures = _figures(kpis)
        if figures is None:
            continue
        pods += 1
        for name in COUNTS:
            sums[name] += figures[name]
        if figures["deliver_p95_s"] is not None:
            p95s.append(float(figures["deliver_p95_s"]))
    if pods == 0:
        return None
    sent, delivered = sums["sent"], sums["delivered"]
    return pool_events.KpiSummary(
        window=WINDOW,
        pods=pods,
        sent=sent,
        delivered=delivered,
        hard_bounced=sums["hard_bounced"],
        complained=sums["complained"],
        opened=sums["opened_human"],
        clicked=sums["clicked_human"],
        delivery_rate=_rate(delivered, sent),
        hard_bounce_rate=_rate(sums["hard_bounced"], delivered),
        complaint_rate=_rate(sums["complained"], delivered),
        open_rate=_rate(sums["opened_human"], delivered),
        click_rate=_rate(sums["clicked_human"], delivered),
        deliver_p95_seconds=round(max(p95s), 3) if p95s else None,
    )
