"""The IPWarmup controller: gather, evaluate with pure functions, apply (DESIGN.md §4).

One level-based cycle (`reconcile_warmup`) serves create, update, resume and the timer:
1. gather the IPWarmup, its SendingPool, the other IPWarmups of the namespace, and the pool's
   pods' `/v1/stats` (per IP and sender day, through `pod_admin`);
2. decide with pure code: problems (spec, pool, addresses, conflicts), the day clock
   (`warmup_clock`), the day-end verdict per IP (`warmup_gates`), the combined decision,
   phase and conditions (`warmup_progress`);
3. apply: one status patch when the status changed, and an event per decision (with the
   figures) and per transition. A gate `Pause` also records the generation it paused at in
   an annotation, so any later spec edit by a person resumes it.

Everything that must survive a restart is in status (`day`, `nextAdvanceAt`, `history`, and
per IP the highest counts seen per pod and sender day, `ips[].usage`) or in the senders (their
per-day counters). Process memory keeps the same counts between cycles and is seeded from
status after a restart, so a restart forgets nothing the operator had seen.

The SendingPool controller reads `status.ips[].dailyQuota` of running warm-ups and puts what
remains of it into each IP's lease; 0 while paused, no limit once Completed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from mailfleet_sender import wire
from pydantic import ValidationError

from mailfleet_operator import metrics
from mailfleet_operator.api import common
from mailfleet_operator.api import ipwarmup as ipw
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    children,
    conditions,
    schedules,
    warmup_clock,
    warmup_gates,
    warmup_holds,
    warmup_progress,
)
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import pod_admin
from mailfleet_operator.reconcile import pool_state as pool_reconcile

PAUSED_AT_ANNOTATION = "mailfleet.io/warmup-paused-at-generation"
"""Set by a gate Pause to the generation it paused at; a newer generation resumes."""

COMPLETED_RECHECK = 3600.0
"""Real seconds between looks at a completed warm-up (nothing changes any more)."""

EventType = Literal["Normal", "Warning"]


@dataclasses.dataclass
class WarmupMemory:
    """Per IPWarmup, in this process: the highest counts seen per IP, sender day and pod."""

    counts: warmup_progress.DayCounts = dataclasses.field(default_factory=dict)
    seeded: bool = False
    """The counts persisted in status were folded in (once per process)."""
    token: str | None = None
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    placed: tuple[str, ipw.Phase] | None = None
    """(namespace, phase) as last written to status, for the `warmups` gauge."""


MEMORY: dict[str, WarmupMemory] = {}
_GAUGED_NAMESPACES: set[str] = set()


def memory_for(uid: str) -> WarmupMemory:
    return MEMORY.setdefault(uid, WarmupMemory())


def forget(uid: str) -> None:
    MEMORY.pop(uid, None)
    _publish_phases()


def _publish_phases() -> None:
    """`mailfleet_operator_warmups{namespace, phase}`: the IPWarmups this process serves.
    Every phase of every namespace seen is set, 0 included, so a warm-up leaving `Held`
    ends the alert rather than leaving a stale series behind."""
    counts = collections.Counter(m.placed for m in MEMORY.values() if m.placed)
    _GAUGED_NAMESPACES.update(namespace for namespace, _ in counts)
    for namespace in _GAUGED_NAMESPACES:
        for phase in get_args(ipw.Phase):
            metrics.WARMUPS.labels(namespace=namespace, phase=phase).set(
                counts[(namespace, phase)]
            )


async def reconcile_warmup(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    *,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> ctx_module.Outcome:
    """One full cycle for one IPWarmup. `pods`: the pool's pods (from a kopf index), or None
    to list them. Safe to call concurrently: cycles of one warm-up serialize."""
    memory = memory_for(body["metadata"]["uid"])
    async with memory.lock:
        return await _reconcile_locked(ctx, admin, body, pods, memory)


@dataclasses.dataclass
class _Cycle:
    events: list[tuple[EventType, str, str]] = dataclasses.field(default_factory=list)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@dataclasses.dataclass(frozen=True)
class _Pool:
    spec: sp.SendingPoolSpec
    listed: dict[str, tuple[str, ...]]


async def _reconcile_locked(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]] | None,
    memory: WarmupMemory,
) -> ctx_module.Outcome:
    settings = ctx.settings
    now = ctx.clock.now()
    meta = body["metadata"]
    namespace = meta.get("namespace") or "default"
    generation = int(meta.get("generation") or 0)
    cycle = _Cycle()
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
    pool: _Pool | None = None
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
        if problem is not None and problem.reason in warmup_holds.REFUSED and not completed:
            # Fail closed: the pool holds the IPs at the last published quota (0 if none).
            held = warmup_holds.imposed_quotas(
                {**body, "status": {**old_raw, "conditions": [_refused(problem.reason)]}}
            )
            problem = warmup_progress.Problem(
                problem.reason, f"{problem.message}; {warmup_holds.hold_message(held)}"
            )
        verdicts = warmup_progress.verdicts(
            phase=status.phase,
            problem=problem,
            day=day,
            quota=quota,
            target=spec.target if spec else 0,
            paused_by=None,
            last=history[-1] if history else None,
        )
        await _apply(ctx, body, old_raw, status, verdicts, now, cycle)
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
    paused_at = annotations.get(PAUSED_AT_ANNOTATION)
    if paused_at is not None:
        if _int(paused_at) >= generation:
            gate_paused = True
        else:
            await _set_paused_at(ctx, body, None)  # the "Resumed" event follows below

    # --- the senders' figures ----------------------------------------------------------------
    readings, listed, answers = await _read_stats(ctx, admin, body, pool, pods, addresses, memory)
    if not memory.seeded:
        readings = warmup_progress.readings_from_usage(old.ips) + readings
        memory.seeded = True
    today_sender_day = warmup_clock.sender_day(clock, now)
    paused = spec.paused or gate_paused
    day_over = not paused and warmup_clock.is_day_over(now=now, next_advance=next_advance)
    ended = (
        warmup_clock.sender_day(clock, next_advance - datetime.timedelta(microseconds=1))
        if day_over and next_advance is not None
        else today_sender_day
    )
    memory.counts = warmup_progress.merge_readings(
        memory.counts, readings, keep_from_day=min(today_sender_day - 2, ended)
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
            await _set_paused_at(ctx, body, generation)
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
    await _apply(ctx, body, old_raw, status, verdicts, now, cycle)
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


def _created(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def _claimed(obj: Mapping[str, Any]) -> set[str]:
    """The IPs another IPWarmup warms: its spec's, or the pool IPs it picked when it started."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return set(spec.get("addresses") or []) or {
        entry.get("address", "") for entry in status.get("ips") or []
    }


def _pool_of(obj: Mapping[str, Any]) -> str:
    return str(((obj.get("spec") or {}).get("poolRef") or {}).get("name") or "")


def _finished(obj: Mapping[str, Any]) -> bool:
    return ((obj.get("status") or {}).get("phase")) == "Completed"


async def _check(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    spec: ipw.IPWarmupSpec,
    old: ipw.IPWarmupStatus,
    namespace: str,
) -> tuple[warmup_progress.Problem | None, _Pool | None, list[str]]:
    """Every reason the warm-up cannot run, in the order a user should fix them."""
    found = schedules.validate_spec(spec) + warmup_clock.validate_timezone(spec.timezone)
    if found:
        text = "; ".join(str(p) for p in found)
        return warmup_progress.Problem("InvalidSpec", text), None, []
    pool_name = spec.pool_ref.name
    raw_pool = await ctx.client.get(resources.SENDING_POOLS, name=pool_name, namespace=namespace)
    if raw_pool is None:
        return (
            warmup_progress.Problem(
                "PoolNotFound",
                f"spec.poolRef: SendingPool {pool_name!r} does not exist in namespace "
                f"{namespace}; the warm-up waits for it",
            ),
            None,
            [],
        )
    try:
        pool_spec = sp.SendingPoolSpec.model_validate(raw_pool.get("spec") or {})
    except ValidationError:
        return (
            warmup_progress.Problem(
                "PoolInvalid", f"SendingPool {pool_name!r} has an invalid spec"
            ),
            None,
            [],
        )
    listed = {
        entry["address"]: tuple(entry.get("listedOn") or ())
        for entry in (raw_pool.get("status") or {}).get("ips") or []
        if entry.get("address")
    }
    pool = _Pool(spec=pool_spec, listed=listed)
    pool_ips = [ip.address for ip in pool_spec.egress.ips]
    strangers = [a for a in spec.addresses if a not in pool_ips]
    if strangers:
        return (
            warmup_progress.Problem(
                "AddressNotInPool",
                f"spec.addresses: {', '.join(strangers)} "
                f"{'is not an egress IP' if len(strangers) == 1 else 'are not egress IPs'} "
                f"of SendingPool {pool_name!r} (its IPs: {', '.join(pool_ips) or 'none'})",
            ),
            pool,
            [],
        )
    me = body["metadata"]["name"]
    others = [
        o
        for o in await ctx.client.list(resources.IP_WARMUPS, namespace=namespace)
        if o["metadata"]["name"] != me
    ]
    if spec.addresses:
        addresses = list(spec.addresses)
    elif old.ips:
        addresses = [p.address for p in old.ips]  # fixed when the warm-up started
    else:
        warm = set().union(
            *(_claimed(o) for o in others if _finished(o) and _pool_of(o) == pool_name)
        )
        addresses = [a for a in pool_ips if a not in warm]
    if not addresses:
        return (
            warmup_progress.Problem(
                "NoAddresses", f"SendingPool {pool_name!r} has no IP left to warm up"
            ),
            pool,
            [],
        )
    older = warmup_holds.zone_conflict(body, others)
    if older is not None:
        return (
            warmup_progress.Problem(
                "TimezoneConflict",
                f"spec.timezone: {spec.timezone} differs from "
                f"{warmup_holds.timezone_of(older)} of IPWarmup "
                f"{older['metadata']['name']!r} on the same pool: the pool's senders count "
                "one quota day, in the older warm-up's zone; use the same timezone",
            ),
            pool,
            [],
        )
    mine = _created(body)
    for other in sorted(others, key=_created):
        shared = sorted(_claimed(other) & set(addresses))
        same_pool = _pool_of(other) == pool_name
        if shared and same_pool and not _finished(other) and _created(other) < mine:
            return (
                warmup_progress.Problem(
                    "ConflictingWarmup",
                    f"{', '.join(shared)} already warmed up by IPWarmup "
                    f"{other['metadata']['name']!r}: an IP follows one warm-up at a time; "
                    "delete one of them or remove the address",
                ),
                pool,
                [],
            )
    return None, pool, addresses


async def _admin_token(
    ctx: ctx_module.Context, pool_name: str, namespace: str, memory: WarmupMemory
) -> str:
    if memory.token:
        return memory.token
    secret = await ctx.client.get(
        resources.SECRETS, name=children.Names(pool_name).admin_secret, namespace=namespace
    )
    if secret is None:
        return ""
    memory.token = children.admin_token(secret)
    return memory.token


async def _read_stats(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    pool: _Pool,
    pods: Sequence[Mapping[str, Any]] | None,
    addresses: Sequence[str],
    memory: WarmupMemory,
) -> tuple[list[warmup_progress.PodReading], list[str], dict[str, warmup_progress.PodAnswer]]:
    """Every pod's counts for the warm-up's IPs, today's and the past days' it reports; a pod
    that does not answer is skipped (its earlier counts stay in memory). Also the pods listed
    and, per pod that answered, which days it reported (`missing_figures`)."""
    namespace = body["metadata"].get("namespace") or "default"
    pool_name = body["spec"]["poolRef"]["name"]
    if pods is None:
        pods = await ctx.client.list(
            resources.PODS,
            namespace=namespace,
            label_selector=f"{children.POOL_LABEL}={pool_name}",
        )
    token = await _admin_token(ctx, pool_name, namespace, memory)
    port = pool.spec.submission.http.port
    wanted = set(addresses)

    async def one(pod: Mapping[str, Any]) -> tuple[str, wire.Stats | None]:
        name = str(pod["metadata"]["name"])
        endpoint = pool_reconcile.endpoint_of(pod, port)
        if endpoint is None:
            return name, None
        try:
            return name, await admin.get_stats(endpoint, token=token)
        except pod_admin.PodUnreachable:
            return name, None

    readings = []
    answers: dict[str, warmup_progress.PodAnswer] = {}
    for name, stats in await asyncio.gather(*(one(p) for p in pods)):
        if stats is None:
            continue
        past = None if stats.days is None else frozenset(d.day for d in stats.days)
        answers[name] = warmup_progress.PodAnswer(day=stats.day, past=past)
        for past_day in stats.days or ():
            for counted in past_day.ips:
                if counted.address in wanted:
                    readings.append(
                        warmup_progress.PodReading(
                            pod=name,
                            address=counted.address,
                            sender_day=past_day.day,
                            figures=warmup_gates.DayFigures(
                                sent=counted.sent,
                                delivered=counted.delivered,
                                hard_bounces=counted.bounced,
                                complaints=counted.complained,
                                deferrals=counted.deferred,
                            ),
                        )
                    )
        for ip in stats.ips:
            if ip.address not in wanted:
                continue
            readings.append(
                warmup_progress.PodReading(
                    pod=name,
                    address=ip.address,
                    sender_day=stats.day,
                    figures=warmup_gates.DayFigures(
                        sent=ip.sent_today,
                        delivered=ip.delivered_today,
                        hard_bounces=ip.bounced_today,
                        complaints=ip.complained_today,
                        deferrals=ip.deferred_today,
                    ),
                )
            )
    return readings, [str(p["metadata"]["name"]) for p in pods], answers


async def _set_paused_at(
    ctx: ctx_module.Context, body: Mapping[str, Any], generation: int | None
) -> None:
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


async def _apply(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    old: Mapping[str, Any],
    status: ipw.IPWarmupStatus,
    verdicts: Sequence[conditions.Verdict],
    now: datetime.datetime,
    cycle: _Cycle,
) -> None:
    """One status patch when anything changed, then the cycle's events (best effort)."""
    meta = body["metadata"]
    existing = conditions.parse_conditions(old.get("conditions"))
    merged = conditions.set_conditions(
        existing, verdicts, now=now, observed_generation=meta.get("generation")
    )
    for change in conditions.changed_conditions(existing, merged):
        cond = change.new
        if cond.type == ipw.READY and cond.status != "True" and cond.reason in _PROBLEM_REASONS:
            cycle.event("Warning", cond.reason, cond.message or cond.reason)
    new = common.dump_status(status.model_copy(update={"conditions": merged}))
    # Observed only when acted on: a held generation (a refused spec, a problem) keeps the last.
    held = any(v.type == ipw.READY and v.reason in _PROBLEM_REASONS for v in verdicts)
    new["observedGeneration"] = old.get("observedGeneration") if held else meta.get("generation")
    if "nextAdvanceAt" not in new:
        new["nextAdvanceAt"] = None  # merge patch: null removes it (paused, completed)
    comparable = {k: v for k, v in old.items() if k in new}
    comparable.setdefault("nextAdvanceAt", None)
    if comparable != new:
        await ctx.client.patch_status(
            resources.IP_WARMUPS, name=meta["name"], namespace=meta.get("namespace"), status=new
        )
    memory_for(meta["uid"]).placed = (meta.get("namespace") or "default", status.phase)
    _publish_phases()
    for type_, reason, message in cycle.events:
        try:
            await ctx.client.post_event(regarding=body, type_=type_, reason=reason, message=message)
        except kube_client.ApiError:
            pass  # events are best effort


def _refused(reason: str) -> dict[str, str]:
    return {"type": ipw.READY, "reason": reason}


_PROBLEM_REASONS = frozenset(
    {
        "InvalidSpec",
        "PoolNotFound",
        "PoolInvalid",
        "AddressNotInPool",
        "NoAddresses",
        "ConflictingWarmup",
        "TimezoneConflict",
    }
)
