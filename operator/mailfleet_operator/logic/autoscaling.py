"""Replica count of an autoscaled SendingPool from the queue depth its pods report (pure, no I/O).

The rule is the HPA's: replicas = ceil(total queue / targetQueuePerReplica), clamped to
[minReplicas, maxReplicas]. Scaling up acts at once (a backlog is costly); scaling down takes
the highest recommendation of the stabilization window (default 5 minutes, the HPA's
default), so a queue that empties in bursts does not make pods come and go. When some pods
did not report, the pool never scales down: missing numbers are not an empty queue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

DEFAULT_STABILIZATION = timedelta(minutes=5)


@dataclass(frozen=True)
class Recommendation:
    at: datetime
    replicas: int


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    raw: int  # the recommendation of this moment alone
    history: tuple[Recommendation, ...]  # to pass back in on the next call
    reason: str


def recommend_replicas(
    *, queue_depth: int, target_per_replica: int, min_replicas: int, max_replicas: int
) -> int:
    wanted = math.ceil(max(queue_depth, 0) / max(target_per_replica, 1))
    return max(min_replicas, min(max_replicas, wanted))


def decide_replicas(
    *,
    current: int,
    queue_depth: int,
    complete: bool,
    target_per_replica: int,
    min_replicas: int,
    max_replicas: int,
    history: Sequence[Recommendation],
    now: datetime,
    window: timedelta = DEFAULT_STABILIZATION,
) -> ScaleDecision:
    """The replica count to run now; `complete` says every active pod reported its queue."""
    raw = recommend_replicas(
        queue_depth=queue_depth,
        target_per_replica=target_per_replica,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
    )
    kept = (*tuple(r for r in history if now - r.at < window), Recommendation(now, raw))
    clamped_current = max(min_replicas, min(max_replicas, current))
    if raw >= clamped_current:
        reason = "QueueAboveTarget" if raw > clamped_current else "Steady"
        return ScaleDecision(replicas=raw, raw=raw, history=kept, reason=reason)
    if not complete:
        return ScaleDecision(clamped_current, raw, kept, "IncompleteStats")
    stabilized = max(r.replicas for r in kept)
    replicas = min(clamped_current, stabilized)
    reason = "QueueBelowTarget" if replicas < clamped_current else "StabilizationWindow"
    return ScaleDecision(replicas=replicas, raw=raw, history=kept, reason=reason)
