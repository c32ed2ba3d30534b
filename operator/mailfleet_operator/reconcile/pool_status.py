"""A SendingPool's status: per-IP states, queues, deliveries, conditions, and an event per
transition (written only when something changed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from mailfleet_operator import metrics
from mailfleet_operator.api import pool_events
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.api.common import dump_status
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    assigning,
    children,
    conditions,
    kpi_summary,
    reputation,
    sender_config,
    usage_book,
)
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile.pool_policy import RESUME_ANNOTATION
from mailfleet_operator.reconcile.pool_state import Cycle, PoolMemory

PAUSED = "Paused"


def build_status(
    spec: sp.SendingPoolSpec,
    name: str,
    plan: assigning.AssignmentPlan,
    views: Sequence[assigning.PodView],
    leaving: set[str],
    memory: PoolMemory,
    quotas: Mapping[str, int | None],
    active: int,
    *,
    old_status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    holders = {p.pod for p in plan.pods if p.ips}
    staying = [v for v in views if v.name not in leaving]
    # Active pods are the IP holders, then (fewer IPs than replicas, or none held yet) other
    # staying pods up to the active target, so `status.replicas` (the scale subresource)
    # follows `spec.replicas`; the rest are standbys.
    ordered = sorted(staying, key=lambda v: (v.name not in holders, v.ordinal))
    count = max(active, sum(1 for v in staying if v.name in holders))
    active_pods, standby = ordered[:count], [v for v in ordered[count:] if v.ready]
    sent = usage_book.sent_today(memory)
    queues: dict[str, tuple[int, float]] = {}
    deliveries = {"delivered": 0, "deferred": 0, "bounced": 0, "complained": 0}
    for stats in memory.stats.values():
        for cls, q in stats.queues.items():
            depth, age = queues.get(cls, (0, 0.0))
            queues[cls] = (depth + q.depth, max(age, q.oldest_age_seconds))
        deliveries["delivered"] += stats.today.delivered
        deliveries["deferred"] += stats.today.deferred
        deliveries["bounced"] += stats.today.bounced
        deliveries["complained"] += sum(ip.complained_today for ip in stats.ips)
    ips = [
        sp.IPStatus(
            address=d.address,
            pod=d.pod,
            state=d.state.value,
            listed_on=list(d.listed_on),
            quota_today=quotas.get(d.address),
            sent_today=sent.get(d.address, 0),
        )
        for d in plan.ips
    ]
    status = sp.SendingPoolStatus(
        replicas=len(active_pods),
        ready_replicas=sum(1 for v in active_pods if v.ready),
        standby_replicas=len(standby),
        selector=children.selector_string(name),
        ips=ips,
        queue=[
            sp.QueueStatus(class_name=c, depth=d, oldest_age_seconds=int(a))  # type: ignore[call-arg]
            for c, (d, a) in sorted(queues.items())
        ],
        deliveries_24h=sp.Deliveries(**deliveries),  # type: ignore[call-arg]
        active_ips=sum(1 for d in plan.ips if d.state is assigning.IPState.ACTIVE),
        queue_depth=sum(d for d, _ in queues.values()),
        dkim=signing_selectors(memory, views, (old_status or {}).get("dkim")),
        kpis=kpi_summary.summarize(memory.kpis),
    )
    data = dump_status(status)
    data.pop("conditions", None)
    data.pop("observedGeneration", None)
    if "kpis" not in data and (old_status or {}).get("kpis"):
        data["kpis"] = None  # no pod reports them now: removed, not left stale
    return data


def signing_selectors(
    memory: PoolMemory, views: Sequence[assigning.PodView], previous: Any
) -> list[sp.SigningSelector]:
    """What the pods report signing with, per domain (`status.dkim`).

    A pod that should have answered and did not (ready, terminating with its queue, or on a
    lost node where it may still be sending) could still sign with any key it had: the
    previous entries are kept alongside, so a DomainAuth never retires a key on a partial
    report. Pods that never ran (no container to sign with) do not hold anything up."""
    found: set[tuple[str, str]] = set()
    for stats in memory.stats.values():
        for domain, signing in stats.dkim.items():
            found.update((domain, selector) for selector in signing.selectors.values())
    silent = [
        v for v in views
        if v.name not in memory.stats and (v.ready or v.terminating or not v.node_ready)
    ]
    if silent:
        for entry in previous or []:
            if isinstance(entry, Mapping) and entry.get("domain") and entry.get("selector"):
                found.add((str(entry["domain"]), str(entry["selector"])))
    return [sp.SigningSelector(domain=d, selector=s) for d, s in sorted(found)]


def verdicts(
    spec: sp.SendingPoolSpec,
    plan: assigning.AssignmentPlan,
    rendered: sender_config.Rendered,
    status: Mapping[str, Any],
    breaker: reputation.BreakerOutcome,
    frozen: bool,
    sts_replicas: int,
    desired_total: int,
    active: int,
    pool_paused: bool,
) -> list[conditions.Verdict]:
    ready_pods = int(status.get("readyReplicas", 0))
    degraded_reasons = list(plan.degraded_reasons)
    if ready_pods < active and not plan.failing_over:
        degraded_reasons.append(f"{ready_pods} of {active} active pods ready")
    degraded_reasons.extend(w.message for w in breaker.warnings)
    failing = conditions.Verdict(
        sp.FAILING_OVER,
        plan.failing_over,
        "IPsMoving" if plan.failing_over else "NoFailover",
        ", ".join(d.address for d in plan.ips if d.reason == "HolderFailed"),
    )
    degraded = conditions.Verdict(
        sp.DEGRADED,
        bool(degraded_reasons),
        "CapacityReduced" if degraded_reasons else "FullCapacity",
        "; ".join(degraded_reasons),
    )
    waiting = [
        d for d in plan.ips if d.state in (assigning.IPState.STANDBY, assigning.IPState.DRAINING)
    ]
    progressing_reasons = []
    if sts_replicas != desired_total:
        progressing_reasons.append(
            f"scaling down: waiting for pods to drain ({sts_replicas} -> {desired_total})"
        )
    if ready_pods < active:
        progressing_reasons.append(f"{ready_pods}/{active} active pods ready")
    if waiting:
        progressing_reasons.append(f"{len(waiting)} IPs waiting for a holder")
    progressing = conditions.Verdict(
        sp.PROGRESSING,
        bool(progressing_reasons),
        "Reconciling" if progressing_reasons else "Complete",
        "; ".join(progressing_reasons),
    )
    paused_scopes = ["pool" if s == reputation.POOL else f"class {s}" for s in breaker.state.paused]
    if spec.paused:
        paused_scopes.insert(0, "pool (spec.paused)")
    paused = conditions.Verdict(
        PAUSED,
        bool(paused_scopes) or frozen,
        "ReconciliationDisabled"
        if frozen
        else (
            "ReputationBreaker"
            if breaker.state.paused
            else ("PausedBySpec" if spec.paused else "NotPaused")
        ),
        "; ".join([*paused_scopes, *breaker.state.reasons.values()])
        + (
            f"; resume with the annotation {RESUME_ANNOTATION}=<new value>"
            if breaker.state.paused
            else ""
        ),
    )
    # Ready: named DomainAuth problems first (a user must see which one), then capacity.
    if rendered.problems:
        first = rendered.problems[0]
        ready = conditions.Verdict(
            sp.READY,
            False,
            first.reason,
            "; ".join(p.message for p in rendered.problems)
            + "; mail for these domains is held, not sent unsigned",
        )
    elif (
        spec.egress.ips
        and not any(d.state is assigning.IPState.ACTIVE for d in plan.ips)
        and active > 0
    ):
        ready = conditions.Verdict(sp.READY, False, "NoActiveIP", "no egress IP is Active")
    elif ready_pods < min(active, 1):
        ready = conditions.Verdict(sp.READY, False, "NoReadyPod", "no active pod is ready")
    else:
        ready = conditions.Verdict(
            sp.READY,
            True,
            "PoolReady",
            f"{ready_pods}/{active} active pods ready, {status.get('activeIPs', 0)} IPs active"
            + (" (paused)" if pool_paused else ""),
        )
    return [ready, degraded, failing, progressing, paused, events_verdict(spec, rendered)]


def events_verdict(
    spec: sp.SendingPoolSpec, rendered: sender_config.Rendered
) -> conditions.Verdict:
    """EventsReady: False names each webhook left out (its Secret is missing) and a tracking
    host served without its certificate; mail is not held for either."""
    problems = rendered.event_problems
    if problems:
        left_out = sorted({p.webhook for p in problems if p.webhook != "tracking"})
        return conditions.Verdict(
            pool_events.EVENTS_READY,
            False,
            problems[0].reason,
            "; ".join(p.message for p in problems)
            + (f"; left out until fixed: webhook {', '.join(left_out)}" if left_out else "")
            + "; mail and the other event outputs keep flowing",
        )
    webhooks = len(spec.events.webhooks)
    return conditions.Verdict(
        pool_events.EVENTS_READY,
        True,
        "WebhooksReady" if webhooks else "NoWebhooks",
        f"{webhooks} webhook(s) configured" if webhooks else "",
    )


def ip_events(old: Mapping[str, Any], new: Mapping[str, Any], cycle: Cycle) -> None:
    before = {e["address"]: e for e in old.get("ips") or []}
    for entry in new.get("ips") or []:
        prev = before.get(entry["address"], {})
        state, pod = entry["state"], entry.get("pod")
        if prev.get("state") == state and prev.get("pod") == pod:
            continue
        address = entry["address"]
        if state == "Active":
            cycle.event("Normal", "IPAssigned", f"IP {address} is active on pod {pod}")
        elif state == "Draining":
            metrics.POOL_FAILOVERS.labels(reason="HolderFailed").inc()
            cycle.event(
                "Warning",
                "IPFailingOver",
                f"IP {address} is leaving pod {pod}; it moves once released or expired",
            )
        elif state == "Blocklisted":
            metrics.POOL_FAILOVERS.labels(reason="ListedOnDNSBL").inc()
            cycle.event(
                "Warning",
                "IPBlocklisted",
                f"IP {address} is listed on {', '.join(entry.get('listedOn', []))}: "
                "no traffic until delisted",
            )
        elif state == "Unassigned":
            cycle.event("Warning", "IPUnassigned", f"IP {address} has no pod")


async def write_status(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    old: Mapping[str, Any],
    status: dict[str, Any],
    verdicts: Sequence[conditions.Verdict],
    now: datetime,
    cycle: Cycle,
    *,
    acted_on: int | None,
) -> None:
    """One status patch when something changed. `acted_on` is the generation the cycle ran
    (`status.observedGeneration`): a refused generation is reported in the conditions (they
    were judged on it) but never marked observed."""
    meta = body["metadata"]
    existing = conditions.parse_conditions(old.get("conditions"))
    merged = conditions.set_conditions(
        existing, verdicts, now=now, observed_generation=meta.get("generation")
    )
    new = dict(status)
    new["conditions"] = [dump_status(c) for c in merged]
    new["observedGeneration"] = acted_on
    comparable_old = {k: v for k, v in old.items() if k in new}
    if comparable_old == new:
        return
    changes = {
        c.type: c
        for c in merged
        if not any(o.type == c.type and o.status == c.status for o in existing)
    }
    for cond in changes.values():
        if cond.type in (sp.FAILING_OVER, sp.DEGRADED, PAUSED) and cond.status == "True":
            cycle.event("Warning", cond.type, cond.message or cond.reason)
        elif cond.type == sp.EVENTS_READY and cond.status != "True":
            cycle.event("Warning", cond.reason, cond.message)
        elif cond.type == sp.READY:
            cycle.event(
                "Normal" if cond.status == "True" else "Warning",
                "Ready" if cond.status == "True" else "NotReady",
                cond.message or cond.reason,
            )
    await ctx.client.patch_status(
        resources.SENDING_POOLS, name=meta["name"], namespace=meta.get("namespace"), status=new
    )
    cycle.writes += 1
