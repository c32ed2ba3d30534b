"""A SendingPool's policy: reading the pods' stats, DomainAuths and warm-up quotas, the
autoscaler, the reputation breaker, and the drain of leaving pods (pure decisions in `logic/`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from mailfleet_sender import units, wire
from pydantic import ValidationError

from mailfleet_operator import metrics
from mailfleet_operator.api import domainauth as da
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    assigning,
    autoscaling,
    reputation,
    usage_book,
    warmup_holds,
)
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import pod_admin
from mailfleet_operator.reconcile.pool_state import (
    Cycle,
    PoolMemory,
    condition,
    endpoint_of,
    node_ready,
    ordinal_of,
)

RESUME_ANNOTATION = "mailfleet.io/resume"
BREAKER_ANNOTATION = "mailfleet.io/reputation-breaker"


async def read_stats(
    admin: pod_admin.PodAdmin,
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any]],
    port: int,
    token: str,
    memory: PoolMemory,
    now: datetime,
) -> None:
    """Stats of every pod that can answer. Pods on a NotReady node are skipped: a
    partitioned pod would hold the whole read (and the cycle) up for a timeout."""

    Answer = tuple[str, str, wire.Stats | None, dict[str, Any] | None]

    async def one(pod: Mapping[str, Any]) -> Answer:
        endpoint = endpoint_of(pod, port)
        name, uid = pod["metadata"]["name"], pod["metadata"].get("uid", "")
        node = (pod.get("spec") or {}).get("nodeName")
        if endpoint is None or condition(pod, "Ready") is None:
            return name, uid, None, None
        if node and not node_ready(nodes.get(node)):
            return name, uid, None, None
        try:
            return name, uid, *await admin.get_stats_and_kpis(endpoint, token=token)
        except pod_admin.PodUnreachable:
            return name, uid, None, None

    held_before = {
        (address, lease.pod)
        for address, lease in (memory.leases or {}).items()
        if not lease.released
    }
    started = memory.grant_seq
    results = await asyncio.gather(*(one(p) for p in pods))
    fresh: dict[str, wire.Stats] = {}
    kpis: dict[str, dict[str, Any]] = {}
    for name, uid, stats, figures in results:
        if stats is None:
            continue
        fresh[name] = stats
        if figures is not None:
            kpis[name] = figures
        sent = sum(ip.sent_today for ip in stats.ips)
        bounced = sum(ip.bounced_today for ip in stats.ips)
        complained = sum(ip.complained_today for ip in stats.ips)
        memory.samples.append(
            reputation.Sample(
                now, uid, reputation.POOL, reputation.Counts(sent, bounced, complained)
            )
        )
    memory.stats = fresh
    memory.kpis = kpis
    memory.stats_at = now
    usage_book.merge_usage(memory, fresh, now, held_before, read_started=started)
    memory.samples = reputation.prune_samples(memory.samples, now=now, window=timedelta(days=1))


def report_quarantines(memory: PoolMemory, cycle: Cycle) -> None:
    """One Warning Event per corrupt database a pod set aside at start (its log says it too):
    the pod runs with an empty one, so mail or suppressions it held need a person's look.
    Remembered per pod and path while the pod reports it; a restarted pod reports anew only
    what it set aside itself."""
    seen: set[str] = set()
    for pod, stats in memory.stats.items():
        for moved in stats.spool.quarantined:
            key = f"{pod}/{moved.path}"
            seen.add(key)
            if key not in memory.quarantines:
                cycle.event(
                    "Warning",
                    "SpoolQuarantined",
                    f"pod {pod}: its {moved.database} database was corrupt and was set aside "
                    f"as {moved.path} ({moved.reason or 'corrupt'}); the pod started with an "
                    "empty one (docs/sender.md, Spool quarantine)",
                )
    # Keep the keys of pods not read this cycle: an unanswered read must not re-report.
    read = set(memory.stats)
    memory.quarantines = seen | {k for k in memory.quarantines if k.split("/", 1)[0] not in read}


async def read_domain_auths(
    ctx: ctx_module.Context, namespace: str, wanted: Sequence[str]
) -> dict[str, da.DomainAuth | None]:
    found: dict[str, da.DomainAuth | None] = {}
    for name in wanted:
        raw = await ctx.client.get(resources.DOMAIN_AUTHS, name=name, namespace=namespace)
        try:
            found[name] = da.DomainAuth.model_validate(raw) if raw else None
        except ValidationError:
            found[name] = None
    return found


async def read_warmup_quotas(
    ctx: ctx_module.Context,
    namespace: str,
    pool: str,
    indexed: Sequence[Mapping[str, Any]] | None = None,
    *,
    book: usage_book.UsageBook | None = None,
) -> dict[str, int | None]:
    """ip -> today's quota from the pool's IPWarmups (absent: no warm-up limit).

    Fail closed (`warmup_holds`): an IPWarmup that no longer validates keeps its IPs at the
    last quota it published (0 when it never published one); two naming one IP, the smaller.
    `book`: seeded with what the warm-ups persisted of today's sends (`status.ips[].usage`),
    so after an operator restart a new holder is granted the quota minus what was sent, and
    with the zone of the senders' quota days (`quota_timezone`)."""
    items: Sequence[Mapping[str, Any]]
    if indexed is not None:
        items = indexed
    else:
        try:
            items = await ctx.client.list(resources.IP_WARMUPS, namespace=namespace)
        except kube_client.ApiError:
            return {}
    mine = [raw for raw in items if warmup_holds.pool_of(raw) == pool]
    if book is not None:
        usage_book.seed_recorded(book, warmup_holds.recorded_usage(mine))
        book.quota_timezone = warmup_holds.pool_timezone(mine)
    # One whose poolRef is unreadable may be any pool's: its addresses are held wherever
    # they are (a pool only applies the quotas of its own IPs).
    lost = [raw for raw in items if not warmup_holds.pool_of(raw)]
    return warmup_holds.merge_quotas(warmup_holds.imposed_quotas(raw) for raw in mine + lost)


def decide_active(
    spec: sp.SendingPoolSpec,
    memory: PoolMemory,
    now: datetime,
    *,
    running: int,
    window: timedelta,
    cycle: Cycle,
) -> int:
    """Active replicas: `spec.replicas`, or the autoscaler's choice from the queue depth.

    `running` is what the StatefulSet runs now (active part): after an operator restart the
    autoscaler starts from it, as if it had recommended it just now, so a restart never
    scales down before a full stabilization window of low queues."""
    if spec.autoscaling is None:
        memory.active = spec.replicas
        memory.scale_history = ()
        return spec.replicas
    auto = spec.autoscaling
    previous = memory.active
    if previous is None:
        previous = max(auto.min_replicas, min(auto.max_replicas, running))
        memory.scale_history = (autoscaling.Recommendation(now, previous),)
    depth = sum(q.depth for s in memory.stats.values() for q in s.queues.values())
    decision = autoscaling.decide_replicas(
        current=previous,
        queue_depth=depth,
        complete=len(memory.stats) >= previous,
        target_per_replica=auto.target_queue_per_replica,
        min_replicas=auto.min_replicas,
        max_replicas=auto.max_replicas,
        history=memory.scale_history,
        now=now,
        window=window,
    )
    memory.scale_history = decision.history
    memory.active = decision.replicas
    if decision.replicas != previous:
        metrics.POOL_AUTOSCALES.labels(
            direction="up" if decision.replicas > previous else "down"
        ).inc()
        cycle.event(
            "Normal",
            "Autoscaled",
            f"{previous} -> {decision.replicas} active pods: {depth} messages queued, target "
            f"{auto.target_queue_per_replica} per pod ({decision.reason})",
        )
    return decision.replicas


def drained_enough(
    pod: str,
    memory: PoolMemory,
    plan: assigning.AssignmentPlan,
    now: datetime,
    timeout: timedelta,
) -> bool:
    """A leaving pod may go once it holds no IP and reports, while draining (so refusing new
    mail), an empty queue; or after the timeout. A read from before the drain does not count:
    mail may have arrived since."""
    if now - memory.leaving_since.get(pod, now) >= timeout:
        return True
    holds = any(p.pod == pod and p.ips for p in plan.pods) or any(d.pod == pod for d in plan.ips)
    stats = memory.stats.get(pod)
    empty = (
        stats is not None
        and stats.draining
        and sum(q.depth + q.held for q in stats.queues.values()) == 0
        and stats.handoff.pending == 0
        and stats.handoff.state != "running"
    )
    return not holds and empty


def report_drain_timeouts(
    leaving: set[str],
    memory: PoolMemory,
    sts_replicas: int,
    current_total: int,
    drain_timeout: float,
    cycle: Cycle,
) -> None:
    """A Warning for each pod removed now although it did not report an empty queue."""
    for pod in sorted(leaving):
        if not sts_replicas <= ordinal_of(pod) < current_total:
            continue
        stats = memory.stats.get(pod)
        depth = None if stats is None else sum(q.depth for q in stats.queues.values())
        if depth == 0:
            continue
        queued = "an unknown number of" if depth is None else str(depth)
        cycle.event(
            "Warning",
            "DrainTimedOut",
            f"pod {pod} still had {queued} messages queued after {drain_timeout:g}s "
            f"of draining; it is removed and its spool volume spool-{pod} is kept",
        )


def run_breaker(
    spec: sp.SendingPoolSpec, annotations: Mapping[str, str], memory: PoolMemory, now: datetime
) -> reputation.BreakerOutcome:
    state = load_breaker(annotations.get(BREAKER_ANNOTATION, ""))
    rep = spec.reputation
    window = units.parse_duration(rep.window)
    counts = reputation.window_counts(memory.samples, now=now, window=window, since=state.since)
    counts.update(class_counts(memory, window=window, now=now, since=state.since))
    return reputation.run_breaker(
        state,
        counts,
        warn_at=reputation.Thresholds(rep.warn_at.bounce_rate, rep.warn_at.complaint_rate),
        pause_at=reputation.Thresholds(rep.pause_at.bounce_rate, rep.pause_at.complaint_rate),
        min_messages=rep.min_messages,
        resume_token=annotations.get(RESUME_ANNOTATION, ""),
        now=now,
    )


def class_counts(
    memory: PoolMemory, *, window: timedelta, now: datetime, since: datetime | None
) -> dict[str, reputation.Counts]:
    """Per-class scopes of the breaker from the pods' rolling windows (`rates.byClass`):
    final outcomes, hard bounces and complaints of the window closest to `reputation.window`."""
    lengths: dict[str, timedelta] = {}
    for stats in memory.stats.values():
        for windows in stats.rates.by_class.values():
            for name in windows:
                try:
                    lengths[name] = units.parse_duration(name)
                except ValueError:
                    continue
    label = reputation.pick_window(lengths, window)
    if label is None:
        return {}
    per_pod = [
        {
            name: reputation.Counts(w.final, w.hard_bounce, w.complaint)
            for name, windows in stats.rates.by_class.items()
            if (w := windows.get(label)) is not None
        }
        for stats in memory.stats.values()
    ]
    return reputation.class_window_counts(per_pod, window=lengths[label], now=now, since=since)


def load_breaker(text: str) -> reputation.BreakerState:
    if not text:
        return reputation.BreakerState()
    try:
        raw = json.loads(text)
        return reputation.BreakerState(
            paused=tuple(raw.get("paused", ())),
            since=datetime.fromisoformat(raw["since"]) if raw.get("since") else None,
            resume_token=raw.get("resumeToken", ""),
            reasons=dict(raw.get("reasons", {})),
        )
    except (ValueError, TypeError, AttributeError):
        return reputation.BreakerState()


def dump_breaker(state: reputation.BreakerState) -> str:
    return json.dumps(
        {
            "paused": list(state.paused),
            "since": state.since.isoformat() if state.since else None,
            "resumeToken": state.resume_token,
            "reasons": dict(state.reasons),
        },
        sort_keys=True,
    )


async def save_breaker(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    breaker: reputation.BreakerOutcome,
    cycle: Cycle,
) -> None:
    if not (breaker.newly_paused or breaker.resumed):
        return
    meta = body["metadata"]
    await ctx.client.patch(
        resources.SENDING_POOLS,
        name=meta["name"],
        namespace=meta.get("namespace"),
        patch={"metadata": {"annotations": {BREAKER_ANNOTATION: dump_breaker(breaker.state)}}},
    )
    cycle.writes += 1


async def undrain(
    admin: pod_admin.PodAdmin,
    plan: assigning.AssignmentPlan,
    views: Sequence[assigning.PodView],
    pods: Mapping[str, Mapping[str, Any]],
    port: int,
    token: str,
    memory: PoolMemory,
    now: datetime,
    drain_timeout: timedelta,
) -> None:
    """Cancel the drain of pods that are healthy again and not leaving (`pods_to_undrain`),
    once their hand-off finished (or ran for the drain timeout), so they come back Ready as
    spares instead of staying drained forever."""
    settled: dict[str, bool] = {}
    for view in views:
        stats = memory.stats.get(view.name)
        if stats is None or not stats.draining:
            continue
        since = memory.drained.setdefault(view.uid, now)
        handed_off = stats.handoff.state != "running" and stats.handoff.pending == 0
        settled[view.name] = handed_off or now - since >= drain_timeout
    for name in assigning.pods_to_undrain(plan, views, settled):
        pod = pods.get(name)
        endpoint = endpoint_of(pod, port) if pod is not None else None
        if pod is None or endpoint is None:
            continue
        try:
            await admin.undrain(endpoint, token=token)
        except pod_admin.PodUnreachable:
            continue
        memory.drained.pop(pod["metadata"].get("uid", ""), None)
        stats = memory.stats.get(name)
        if stats is not None:
            memory.stats[name] = stats.model_copy(update={"draining": False})
