"""What one IPWarmup cycle writes: its status (one patch, only when it changed), the events
it collected, the `warmups` gauge, and the annotation that marks a gate Pause.

Events are posted after the status patch and best effort: a user reads the outcome in status
first, and a lost event must not fail a cycle that already converged.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from mailfleet_operator import metrics
from mailfleet_operator.api import common
from mailfleet_operator.api import ipwarmup as ipw
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import conditions, warmup_checks
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import warmup_figures

PAUSED_AT_ANNOTATION = "mailfleet.io/warmup-paused-at-generation"
"""Set by a gate Pause to the generation it paused at; a newer generation resumes."""

EventType = Literal["Normal", "Warning"]

_GAUGED_NAMESPACES: set[str] = set()


@dataclasses.dataclass
class Cycle:
    """The events one cycle decided on, posted once its status is written."""

    events: list[tuple[EventType, str, str]] = dataclasses.field(default_factory=list)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def publish_phases() -> None:
    """`mailfleet_operator_warmups{namespace, phase}`: the IPWarmups this process serves.
    Every phase of every namespace seen is set, 0 included, so a warm-up leaving `Held`
    ends the alert rather than leaving a stale series behind."""
    counts = collections.Counter(m.placed for m in warmup_figures.MEMORY.values() if m.placed)
    _GAUGED_NAMESPACES.update(namespace for namespace, _ in counts)
    for namespace in _GAUGED_NAMESPACES:
        for phase in get_args(ipw.Phase):
            metrics.WARMUPS.labels(namespace=namespace, phase=phase).set(
                counts[(namespace, phase)]
            )


async def set_paused_at(
    ctx: ctx_module.Context, body: Mapping[str, Any], generation: int | None
) -> None:
    """Record (or clear, None) the generation a gate Pause stopped at."""
    meta = body["metadata"]
    await ctx.client.patch(
        resources.IP_WARMUPS,
        name=meta["name"],
        namespace=meta.get("namespace"),
        patch={
            "metadata": {
                "annotations": {
                    PAUSED_AT_ANNOTATION: None if generation is None else str(generation)
                }
            }
        },
    )


async def apply(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    old: Mapping[str, Any],
    status: ipw.IPWarmupStatus,
    verdicts: Sequence[conditions.Verdict],
    now: datetime.datetime,
    cycle: Cycle,
) -> None:
    """One status patch when anything changed, then the cycle's events (best effort)."""
    meta = body["metadata"]
    problems = warmup_checks.PROBLEM_REASONS
    existing = conditions.parse_conditions(old.get("conditions"))
    merged = conditions.set_conditions(
        existing, verdicts, now=now, observed_generation=meta.get("generation")
    )
    for change in conditions.changed_conditions(existing, merged):
        cond = change.new
        if cond.type == ipw.READY and cond.status != "True" and cond.reason in problems:
            cycle.event("Warning", cond.reason, cond.message or cond.reason)
    new = common.dump_status(status.model_copy(update={"conditions": merged}))
    # Observed only when acted on: a held generation (a refused spec, a problem) keeps the last.
    held = any(v.type == ipw.READY and v.reason in problems for v in verdicts)
    new["observedGeneration"] = old.get("observedGeneration") if held else meta.get("generation")
    if "nextAdvanceAt" not in new:
        new["nextAdvanceAt"] = None  # merge patch: null removes it (paused, completed)
    comparable = {k: v for k, v in old.items() if k in new}
    comparable.setdefault("nextAdvanceAt", None)
    if comparable != new:
        await ctx.client.patch_status(
            resources.IP_WARMUPS, name=meta["name"], namespace=meta.get("namespace"), status=new
        )
    warmup_figures.memory_for(meta["uid"]).placed = (
        meta.get("namespace") or "default",
        status.phase,
    )
    publish_phases()
    for type_, reason, message in cycle.events:
        try:
            await ctx.client.post_event(regarding=body, type_=type_, reason=reason, message=message)
        except kube_client.ApiError:
            pass  # events are best effort
