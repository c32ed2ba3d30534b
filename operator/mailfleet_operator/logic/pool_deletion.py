"""What a deleted SendingPool does next (pure: no I/O).

A pool marked for deletion holds on to the operator's finalizer until the mail it accepted
has left: its pods stop taking mail and keep their IPs, and deliver what is queued (a drain
without hand-off: every peer is leaving too); or, with `spec.deletion.handoffTo`, hand it to
that pool's pods (delivering it themselves while that pool cannot take it). The pool goes
when every pod reports, while draining, an empty queue and every spool volume has a pod that
reported. Past `spec.deletion.drainTimeout` with mail left it stays, still draining, with a
condition naming what is left, until its queues empty or a person sets
`mailfleet.io/deletion: abandon-queued-mail` (which lets it go and keeps the spool volumes
for them to inspect).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

DELETION_ANNOTATION = "mailfleet.io/deletion"
ABANDON = "abandon-queued-mail"
DELETING = "Deleting"
"""Condition type: True while a deleted pool waits for its mail to leave."""


class Phase(enum.Enum):
    DRAINING = "Draining"  # within the bound, mail left (or not yet known)
    TIMED_OUT = "DrainTimedOut"  # past the bound, mail left: a person decides
    DRAINED = "Drained"  # every queue empty: the pool goes, its spool volumes too
    ABANDONED = "QueuedMailAbandoned"  # a person let it go: volumes kept


@dataclasses.dataclass(frozen=True)
class PodQueue:
    """One pod as its last `/v1/stats` answer showed it (None fields: it did not answer)."""

    name: str
    draining: bool | None = None
    queued: int | None = None
    """Messages in the spool: queued, held and not yet handed off."""

    @property
    def known_empty(self) -> bool:
        return self.draining is True and self.queued == 0


@dataclasses.dataclass(frozen=True)
class HandoffTarget:
    """`spec.deletion.handoffTo` as gathered: the pool, and why it cannot take mail now."""

    pool: str
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class DeletionInput:
    started: datetime  # metadata.deletionTimestamp
    now: datetime
    drain_timeout: timedelta
    annotations: Mapping[str, str]
    pods: Sequence[PodQueue]
    volumes: Sequence[int] = ()
    """Ordinals of the pool's spool volumes (PVCs), whether or not a pod runs on them."""
    replicas: int = 0
    """The StatefulSet's current replicas."""
    handoff: HandoffTarget | None = None


@dataclasses.dataclass(frozen=True)
class DeletionDecision:
    phase: Phase
    drain: tuple[str, ...]
    """Pods to ask to stop intake (those not reporting draining yet)."""
    replicas: int | None
    """Scale the StatefulSet to this so every spool volume has a pod to drain it (None: as is)."""
    remaining: Mapping[str, int | None]
    """Pod (or volume without a pod) -> messages left; None when unknown."""
    message: str
    handoff: bool = False
    """`drain` hands the queues to the handoffTo pool (asked again every step, so that a
    restarted pod hears the target again); else each pod delivers its own."""

    @property
    def finish(self) -> bool:
        return self.phase in (Phase.DRAINED, Phase.ABANDONED)

    @property
    def delete_volumes(self) -> bool:
        """Only a confirmed empty spool goes; an abandoned one is kept."""
        return self.phase is Phase.DRAINED


def abandoned(annotations: Mapping[str, str]) -> bool:
    return annotations.get(DELETION_ANNOTATION, "").strip() == ABANDON


def decide_deletion(given: DeletionInput) -> DeletionDecision:
    """The next step of a deleted pool's drain."""
    ordinals = {_ordinal(p.name) for p in given.pods}
    # A volume with no pod (left by an earlier scale-down whose drain timed out) may hold
    # mail: its pod is brought back so that it drains too.
    orphans = sorted(v for v in given.volumes if v not in ordinals)
    wanted = max([given.replicas, *(v + 1 for v in orphans)])
    remaining: dict[str, int | None] = {
        p.name: p.queued for p in given.pods if not p.known_empty
    }
    for volume in orphans:
        remaining.setdefault(f"volume {volume} (no pod yet)", None)
    target = given.handoff
    handoff = target is not None and target.problem is None
    drain = tuple(sorted(p.name for p in given.pods if handoff or p.draining is not True))
    replicas = wanted if wanted != given.replicas else None
    if target is None:
        doing = "draining before deletion (intake stopped, IPs kept)"
    elif handoff:
        doing = f"handing the queues to pool {target.pool} before deletion"
    else:
        doing = (f"cannot hand off to pool {target.pool} ({target.problem}): delivering from "
                 f"this pool's IPs meanwhile")
    if abandoned(given.annotations):
        return DeletionDecision(
            phase=Phase.ABANDONED, drain=(), replicas=None, remaining=remaining,
            message=f"deletion goes ahead on {DELETION_ANNOTATION}={ABANDON}; "
            + (f"left in the kept spool volumes: {describe(remaining)}" if remaining
               else "no mail was left"),
        )
    if not remaining:
        return DeletionDecision(
            phase=Phase.DRAINED, drain=(), replicas=None, remaining={},
            message="every queue is empty: the pool and its spool volumes go",
        )
    elapsed = given.now - given.started
    if elapsed < given.drain_timeout:
        return DeletionDecision(
            phase=Phase.DRAINING, drain=drain, replicas=replicas, remaining=remaining,
            message=f"{doing}: {describe(remaining)}", handoff=handoff,
        )
    return DeletionDecision(
        phase=Phase.TIMED_OUT, drain=drain, replicas=replicas, remaining=remaining,
        handoff=handoff,
        message=(
            f"{doing}; not drained within drainTimeout ({_duration(given.drain_timeout)}): "
            f"{describe(remaining)}. The pool stays, still draining, until its queues empty "
            f"or the annotation {DELETION_ANNOTATION}={ABANDON} is set (the spool volumes "
            f"are then kept), or spec.deletion.handoffTo names a pool that can take them"
        ),
    )


def describe(remaining: Mapping[str, int | None]) -> str:
    """`12 messages (mail-0: 5, mail-1: 7)`; pods that did not answer count as unknown."""
    known = sum(n for n in remaining.values() if n is not None)
    unknown = [k for k, n in remaining.items() if n is None]
    parts = [f"{k}: {'unknown' if n is None else n}" for k, n in sorted(remaining.items())]
    total = f"{known}{'+' if unknown else ''} message{'' if known == 1 and not unknown else 's'}"
    return f"{total} ({', '.join(parts)})"


def _ordinal(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
