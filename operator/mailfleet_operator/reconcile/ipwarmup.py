"""The IPWarmup controller: gather, evaluate with pure functions, apply (DESIGN.md §4).

One level-based cycle (`reconcile_warmup`) serves create, update, resume and the timer:
1. gather the IPWarmup, its SendingPool, the other IPWarmups of the namespace, and the pool's
   pods' `/v1/stats` (per IP and sender day, `warmup_figures`);
2. decide with pure code: problems (spec, pool, addresses, conflicts: `warmup_checks`), the
   day clock (`warmup_clock`), the day-end verdict per IP (`warmup_gates`), the combined
   decision, phase and conditions (`warmup_progress`);
3. apply (`warmup_status`): one status patch when the status changed, and an event per
   decision (with the figures) and per transition. A gate `Pause` also records the
   generation it paused at in an annotation, so any later spec edit by a person resumes it.

Everything that must survive a restart is in status (`day`, `nextAdvanceAt`, `history`, and
per IP the highest counts seen per pod and sender day, `ips[].usage`) or in the senders (their
per-day counters). Process memory keeps the same counts between cycles and is seeded from
status after a restart, so a restart forgets nothing the operator had seen.

The SendingPool controller reads `status.ips[].dailyQuota` of running warm-ups and puts what
remains of it into each IP's lease; 0 while paused, no limit once Completed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from mailfleet_operator.api import common
from mailfleet_operator.api import ipwarmup as ipw
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    conditions,
    schedules,
    warmup_checks,
    warmup_clock,
    warmup_gates,
    warmup_progress,
)
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import pod_admin, warmup_figures, warmup_status

COMPLETED_RECHECK = 3600.0
"""Real seconds between looks at a completed warm-up (nothing changes any more)."""


def forget(uid: str) -> None:
    """The warm-up is gone: drop its memory, and its phase from the gauge."""
    warmup_figures.MEMORY.pop(uid, None)
    warmup_status.publish_phases()


async def reconcile_warmup(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    *,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> ctx_module.Outcome:
    """One full cycle for one IPWarmup. `pods`: the pool's pods (from a kopf index), or None
    to list them. Safe to call concurrently: cycles of one warm-up serialize."""
    memory = warmup_figures.memory_for(body["metadata"]["uid"])
    async with memory.lock:
        return await _reconcile_locked(ctx, admin, body, pods, memory)


async def _reconcile_locked(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]] | None,
    memory: warmup_figures.WarmupMemory,
) -> ctx_module.Outcome:
    settings = ctx.settings
    now = ctx.clock.now()
    meta = body["metadata"]
    namespace = meta.get("namespace") or "default"
    generation = int(meta.get("generation") or 0)
    cycle = warmup_status.Cycle()
    old_raw = dict(body.get("status") or {})
    old = _parse_status(old_raw)
    history = list(old.history)
    last_action = warmup_gates.Action(history[-1].decision) if history else None
    completed = last_action is warmup_gates.Action.COMPLETE

    # --- gather and check ------------------------------------------------------------------
    spec: ipw.IPWarmupSpec | None = None
    problem: warmup_progress.Problem | None = None
    try:
        spec = ipw.IPWarmupSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        problem = warmup_progress.Problem(
            "InvalidSpec", "; ".join(common.describe_errors(exc, prefix="spec"))[:2000]
        )
    pool: warmup_checks.Pool | None = None
    addresses: list[str] = []
    if spec is not None:
        problem, pool, addresses = await _check(ctx, body, spec, old, namespace)

    if spec is None or pool is None or problem is not None or completed:
        # A problem after the start freezes the day and keeps the last quotas in force (the
        # pool still limits the IPs): a typo in the spec must not lift a warm-up's limit.
        phase: ipw.Phase = "Completed" if completed else old.phase if old.day else "Pending"
        status = old.model_copy(update={"phase": phase, "next_advance_at": None})
        day = old.day
        quota = old.daily_quota
        if problem is not None and not completed:
            # Fail closed: a refused spec holds the IPs at the last published quota.
            problem = warmup_checks.explain_hold(problem, body, old_raw)
        verdicts = warmup_progress.verdicts(
            phase=status.phase,
            problem=problem,
            day=day,
            quota=quota,
            target=spec.target if spec else 0,
            paused_by=None,
            last=history[-1] if history else None,
        )
        await warmup_status.apply(ctx, body, old_raw, status, verdicts, now, cycle)
        delay = COMPLETED_RECHECK if completed else settings.error_delay
        return ctx_module.Outcome(requeue_after=delay)

    # --- the day clock -----------------------------------------------------------------------
    schedule = schedules.schedule_from_spec(spec.schedule)
    safety = warmup_gates.SafetyPolicy.from_spec(spec.safety)
    clock = warmup_clock.make_clock(
        timezone=spec.timezone,
        seconds_per_day=settings.warmup_day_seconds,
        origin=warmup_progress.EPOCH,
    )
    day, started_at, next_advance = old.day, old.started_at, old.next_advance_at
    if day < 1:
        day, started_at, next_advance = 1, now, None
        cycle.event(
            "Normal",
            "Started",
            f"warm-up of {', '.join(addresses)} started on day 1 with a quota of "
            f"{schedules.quota_for_day(schedule, 1, spec.target)} per IP "
            f"({schedules.describe_schedule(schedule)}, target {spec.target})",
        )

    annotations = meta.get("annotations") or {}
    gate_paused = False
    paused_at = annotations.get(warmup_status.PAUSED_AT_ANNOTATION)
    if paused_at is not None:
        if _int(paused_at) >= generation:
            gate_paused = True
        else:
            # The "Resumed" event follows below.
            await warmup_status.set_paused_at(ctx, body, None)

    # --- the senders' figures ----------------------------------------------------------------
    readings, listed, answers = await warmup_figures.read_stats(
        ctx, admin, body, pool, pods, addresses, memory
    )
    today_sender_day = warmup_clock.sender_day(clock, now)
    paused = spec.paused or gate_paused
    day_over = not paused and warmup_clock.is_day_over(now=now, next_advance=next_advance)
    ended = (
        warmup_clock.sender_day(clock, next_advance - datetime.timedelta(microseconds=1))
        if day_over and next_advance is not None
        else today_sender_day
    )
    warmup_figures.remember(
        memory, readings, persisted=old.ips, keep_from_day=min(today_sender_day - 2, ended)
    )

    # --- day end -------------------------------------------------------------------------------
    awaiting: str | None = None
    missing = (
        warmup_progress.missing_figures(listed, answers, day=ended) if day_over else []
    )
    if missing:
        # Fail closed: a day is judged on its figures, never blind; the quota stays meanwhile.
        assert next_advance is not None
        awaiting = (
            f"day {day} ended at {next_advance.isoformat()}; it is judged once the senders' "
            f"counters of that day are read (waiting for {', '.join(missing)}); the quota "
            f"stays at {schedules.quota_for_day(schedule, day, spec.target)}/day per IP"
        )
        was = conditions.parse_conditions(old_raw.get("conditions"))
        if not any(c.type == ipw.HELD and c.reason == "AwaitingFigures" for c in was):
            cycle.event("Warning", "AwaitingFigures", awaiting)
    elif day_over:
        assert next_advance is not None
        quota = schedules.quota_for_day(schedule, day, spec.target)
        group = warmup_progress.decide_group(
            [
                (
                    address,
                    warmup_gates.evaluate_day(
                        day=day,
                        quota=quota,
                        target=spec.target,
                        figures=warmup_progress.figures_for(
                            memory.counts, address=address, sender_day=ended
                        ),
                        safety=safety,
                        dnsbl_listed=pool.listed.get(address, ()),
                    ),
                )
                for address in addresses
            ]
        )
        history.append(group.history_row())
        last_action = group.action
        day = group.decisive.next_day
        passed = group.action in (warmup_gates.Action.ADVANCE, warmup_gates.Action.COMPLETE)
        cycle.event("Normal" if passed else "Warning", group.action.value, group.message())
        next_advance = None
        if group.action is warmup_gates.Action.PAUSE:
            gate_paused = paused = True
            await warmup_status.set_paused_at(ctx, body, generation)
    completed = last_action is warmup_gates.Action.COMPLETE
    if not completed:
        was_paused = old.phase == "Paused"
        if spec.paused and not was_paused:
            cycle.event("Normal", "Paused", f"paused by spec.paused on day {day}")
        elif not paused and was_paused:
            cycle.event("Normal", "Resumed", f"day {day} resumed")

    # --- status --------------------------------------------------------------------------------
    quota = schedules.quota_for_day(schedule, day, spec.target)
    allowed = 0 if paused and not completed else quota
    phase = warmup_progress.phase_of(
        problem=None, started=True, paused=paused, last_action=last_action
    )
    if completed:
        next_advance = None
    elif awaiting is None:
        next_advance = warmup_clock.next_advance_at(
            clock, now=now, current=next_advance, paused=paused
        )
    sent = {
        address: warmup_progress.figures_for(
            memory.counts, address=address, sender_day=today_sender_day
        ).sent
        for address in addresses
    }
    status = ipw.IPWarmupStatus(
        phase=phase,
        day=day,
        daily_quota=allowed,
        sent_today=sum(sent.values()),
        next_advance_at=next_advance,
        started_at=started_at,
        history=history,
        ips=[
            ipw.IPProgress(
                address=a,
                day=day,
                daily_quota=allowed,
                sent_today=sent[a],
                usage=warmup_progress.usage_entries(
                    memory.counts, address=a, from_day=today_sender_day - 1
                ),
            )
            for a in addresses
        ],
    )
    paused_by = None
    if paused and not completed:
        paused_by = "PausedBySpec" if spec.paused else (history[-1].reason or "Paused")
    verdicts = warmup_progress.verdicts(
        phase=phase,
        problem=None,
        day=day,
        quota=quota,
        target=spec.target,
        paused_by=paused_by,
        last=history[-1] if history else None,
        awaiting=awaiting,
    )
    if completed and old.phase != "Completed":
        cycle.event(
            "Normal",
            "Completed",
            f"{', '.join(addresses)} warm after {len(history)} days: quota limit removed",
        )
    await warmup_status.apply(ctx, body, old_raw, status, verdicts, now, cycle)
    if awaiting is not None:
        return ctx_module.Outcome(requeue_after=max(settings.stats_interval, 0.05))
    return ctx_module.Outcome(requeue_after=_requeue(ctx, now, next_advance, completed))


def _requeue(
    ctx: ctx_module.Context,
    now: datetime.datetime,
    next_advance: datetime.datetime | None,
    completed: bool,
) -> float:
    """Soon enough to read the stats again, and at the day's end to judge it."""
    if completed:
        return COMPLETED_RECHECK
    delay = ctx.settings.stats_interval
    if next_advance is not None:
        delay = min(delay, ctx.clock.real_seconds(next_advance - now))
    return max(delay, 0.05)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _parse_status(raw: Mapping[str, Any]) -> ipw.IPWarmupStatus:
    """The status as written last; a corrupt one starts over rather than crash every cycle."""
    try:
        return ipw.IPWarmupStatus.model_validate(raw)
    except ValidationError:
        return ipw.IPWarmupStatus()


async def _check(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    spec: ipw.IPWarmupSpec,
    old: ipw.IPWarmupStatus,
    namespace: str,
) -> tuple[warmup_progress.Problem | None, warmup_checks.Pool | None, list[str]]:
    """Every reason the warm-up cannot run, in the order a user should fix them; the pool and
    the other warm-ups are read only once the checks before them passed."""
    problem = warmup_checks.check_spec(spec)
    if problem is not None:
        return problem, None, []
    raw_pool = await ctx.client.get(
        resources.SENDING_POOLS, name=spec.pool_ref.name, namespace=namespace
    )
    problem, pool = warmup_checks.check_pool(spec, raw_pool, namespace)
    if problem is not None or pool is None:
        return problem, pool, []
    me = body["metadata"]["name"]
    others = [
        o
        for o in await ctx.client.list(resources.IP_WARMUPS, namespace=namespace)
        if o["metadata"]["name"] != me
    ]
    addresses = warmup_checks.pick_addresses(spec, old, pool, others)
    problem = warmup_checks.check_siblings(body, spec, addresses, others)
    if problem is not None:
        return problem, pool, []
    return None, pool, addresses
