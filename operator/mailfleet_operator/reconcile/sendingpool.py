"""The SendingPool controller's main cycle: gather, evaluate with pure functions, apply
(DESIGN.md §4).

One level-based cycle (`reconcile_pool`) serves create, update, resume and the timer. It:
1. gathers the pool, its pods and nodes (passed in by the handler, from kopf indexes), the
   DomainAuths it names, IPWarmups of the pool, the pods' stats and DNSBL listings
   (`pool_policy`);
2. decides with pure code: replicas (`autoscaling`), the rendered config (`sender_config`),
   children (`children`), the breaker (`reputation`), and what the lease loop must know
   (`pool_leases.LeaseInputs`: the IPs, the active target, listings, quotas, paused classes);
3. applies: children (`pool_children`), drains, then one status patch when the status
   changed (`pool_status`), and an event per transition.

Who holds which IP is not decided here: the lease loop (`pool_leases`) runs on its own daemon
with the last inputs this cycle handed it, so a slow read or an API error never holds up a
renewal (the last good inputs stay in force).

A spec the operator refuses (its models' validation, an egress IP in a refused network) is
never acted on: the cycle goes on with the last good spec (leases, children, status), Ready
says `InvalidSpec` and why, and `status.observedGeneration` stays at the generation acted on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from mailfleet_sender import units
from pydantic import ValidationError

from mailfleet_operator import metrics
from mailfleet_operator import settings as settings_module
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.api.common import describe_errors
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.logic import (
    assigning,
    child_drift,
    children,
    conditions,
    egress_networks,
    event_config,
    ip_leases,
    reputation,
    sender_config,
    submission_access,
    throttle_division,
    usage_book,
)
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import (
    pod_admin,
    pool_children,
    pool_events,
    pool_leases,
    pool_policy,
    sendingpool_dnsbl,
)
from mailfleet_operator.reconcile import pool_status as status_module
from mailfleet_operator.reconcile.pool_state import (
    MEMORY,
    Cycle,
    PoolMemory,
    World,
    forget,
    memory_for,
    ordinal_of,
    pod_view,
    publish_ip_states,
)

__all__ = ["MEMORY", "PoolMemory", "World", "forget", "reconcile_pool", "renew_leases"]

INVALID_SPEC = "InvalidSpec"
GOOD_SPEC_ANNOTATION = "mailfleet.io/rendered-from"
"""On the pool's ConfigMap: the spec (and generation) the config was rendered from, so that
the last good spec outlives the operator's memory."""
CHILD_NOT_OWNED = "ChildNotOwned"
FENCED_ANNOTATION = "mailfleet.io/fenced-ips"
RECONCILIATION_ANNOTATION = "mailfleet.io/reconciliation"  # "disabled" pauses (as CNPG)


async def reconcile_pool(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: World,
) -> ctx_module.Outcome:
    """One main cycle for one pool. Safe to call concurrently: cycles of a pool serialize.
    Only the elected leader acts; other replicas wait."""
    if not pool_leases.leading(ctx) or body["metadata"].get("deletionTimestamp"):
        # A deleted pool is drained by `pool_deletion`: a main cycle would undrain its pods.
        return ctx_module.Outcome(requeue_after=max(ctx.settings.lease_renew_interval, 0.5))
    memory = memory_for(body["metadata"]["uid"], ctx.client)
    async with memory.lock:
        return await _reconcile_locked(ctx, admin, body, world, memory)


async def renew_leases(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: World,
) -> float:
    """One step of the pool's lease loop (`pool_leases`); the seconds until the next."""
    memory = memory_for(body["metadata"]["uid"], ctx.client)
    return await pool_leases.renew_leases(ctx, admin, body, world, memory)


async def _reconcile_locked(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: World,
    memory: PoolMemory,
) -> ctx_module.Outcome:
    settings = ctx.settings
    now = ctx.clock.now()
    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace") or "default"
    annotations = meta.get("annotations") or {}
    period = max(settings.lease_renew_interval, 0.5)
    cycle = Cycle()
    old_status = dict(body.get("status") or {})
    refused = _refusal(body, settings)
    if refused is None:
        spec = sp.SendingPoolSpec.model_validate(body.get("spec") or {})
        generation = meta.get("generation")
        memory.good = (spec, generation)
    else:
        # Last good spec: the pool keeps running (leases, children, status) as it was; the
        # refused generation is reported, never acted on. A restarted operator (or a new
        # leader) finds it beside the config rendered from it.
        memory.good = memory.good or await _recorded_spec(ctx, body, world, settings)
    if refused is not None and memory.good is not None:
        spec, generation = memory.good
    elif refused is not None:
        # Nothing good known yet (a new pool, or an operator that restarted since): hold.
        verdicts = [conditions.Verdict(sp.READY, False, INVALID_SPEC, refused)]
        await status_module.write_status(
            ctx, body, old_status, {}, verdicts, now, cycle,
            acted_on=old_status.get("observedGeneration"),
        )
        return ctx_module.Outcome(requeue_after=settings.error_delay)

    frozen = annotations.get(RECONCILIATION_ANNOTATION, "").lower() == "disabled"
    names = children.Names(name)
    applied = pool_children.Applied()
    token = await pool_children.ensure_admin_secret(
        ctx, body, names, memory, cycle, live=world.children, applied=applied
    )
    await pool_children.ensure_generated_secrets(
        ctx, body, names, memory, cycle, now.timestamp(), live=world.children,
        tracking=spec.tracking is not None,
    )

    # --- gather: stats, DNSBL, DomainAuths, warm-ups -------------------------------------
    http_port = spec.submission.admin_port  # every call to the pods goes to their admin port
    if memory.stats_at is None or now - memory.stats_at >= timedelta(
        seconds=settings.stats_interval
    ):
        await pool_policy.read_stats(admin, world.pods, world.nodes, http_port, token, memory, now)
        pool_policy.report_quarantines(memory, cycle)
    zones = spec.health_checks.dnsbl.zones
    owners = ip_leases.ip_owners(world.pools) if world.pools is not None else {}
    elsewhere = {
        ip.address: f"{owner[0]}/{owner[1]}"
        for ip in spec.egress.ips
        if (owner := owners.get(ip.address)) is not None and owner != (namespace, name)
    }
    addresses = [ip.address for ip in spec.egress.ips]
    if zones and (
        memory.dnsbl_at is None
        or now - memory.dnsbl_at >= units.parse_duration(spec.health_checks.dnsbl.interval)
    ):
        resolver = sendingpool_dnsbl.make_resolver(
            settings.dns_nameservers, timeout=settings.dns_timeout
        )
        memory.listed = await sendingpool_dnsbl.check_ips(
            resolver, addresses, zones, previous=memory.listed
        )
        memory.dnsbl_at = now
    elif not zones:
        memory.listed = {}
    # DomainAuths and IPWarmups change slowly: re-read them with the stats, or on a spec change.
    slow_key = (generation, tuple(spec.domains))
    if (
        memory.slow_key != slow_key
        or memory.slow_at is None
        or now - memory.slow_at >= timedelta(seconds=settings.stats_interval)
    ):
        memory.domain_auths = await pool_policy.read_domain_auths(ctx, namespace, spec.domains)
        memory.event_secrets = await pool_events.read_secret_keys(
            ctx, namespace, event_config.secret_names(spec), memory.event_secrets
        )
        memory.slow_at, memory.slow_key = now, slow_key
        memory.dkim_keys = {}  # re-read with the DomainAuths
    # Warm-up quotas every cycle: a day's new quota or a pause reaches the leases at once.
    previous_quotas = memory.quotas
    memory.quotas = await pool_policy.read_warmup_quotas(
        ctx, namespace, name, world.warmups, book=memory
    )
    requota = {
        a
        for a in set(previous_quotas) | set(memory.quotas)
        if previous_quotas.get(a) != memory.quotas.get(a)
    }
    domain_auths, quotas = memory.domain_auths, memory.quotas

    # --- decide replicas ----------------------------------------------------------------
    if memory.sts_replicas is None:
        sts = await pool_children.read_live(
            ctx, "StatefulSet", names.statefulset, namespace, world.children
        )
        memory.sts_replicas = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
    current_total = memory.sts_replicas
    active = pool_policy.decide_active(
        spec,
        memory,
        now,
        running=max(0, current_total - spec.standby_replicas),
        window=timedelta(seconds=settings.autoscale_stabilization),
        cycle=cycle,
    )
    desired_total = active + spec.standby_replicas
    leaving = {
        p["metadata"]["name"]
        for p in world.pods
        if ordinal_of(p["metadata"]["name"]) >= desired_total
    }
    for pod_name in list(memory.leaving_since):
        if pod_name not in leaving:
            del memory.leaving_since[pod_name]
    for pod_name in leaving:
        memory.leaving_since.setdefault(pod_name, now)
    views = [
        pod_view(p, nodes=world.nodes, leaving=p["metadata"]["name"] in leaving) for p in world.pods
    ]

    # --- breaker --------------------------------------------------------------------------
    breaker = pool_policy.run_breaker(spec, annotations, memory, now)
    paused_classes = set(breaker.paused_classes)
    pool_paused = spec.paused or breaker.pool_paused
    class_names = [c.name for c in spec.classes]
    allowed = [] if pool_paused else [c for c in class_names if c not in paused_classes]

    # --- hand the lease loop its inputs --------------------------------------------------
    fenced = frozenset(
        ip.strip()
        for ip in annotations.get(FENCED_ANNOTATION, "").replace(";", ",").split(",")
        if ip.strip()
    )
    previous_inputs: pool_leases.LeaseInputs | None = memory.lease_inputs
    memory.lease_inputs = pool_leases.LeaseInputs(
        name=name,
        namespace=namespace,
        spec=spec,
        addresses=tuple(addresses),
        elsewhere=elsewhere,
        active=active,
        leaving=frozenset(leaving),
        listed={a: tuple(z) for a, z in memory.listed.items()},
        fenced=fenced,
        frozen=frozen,
        allowed=tuple(allowed),
        quotas=dict(quotas),
        requota=frozenset(requota)
        | (previous_inputs.requota if previous_inputs is not None else frozenset()),
        token=token,
        chunking=usage_book.Chunking(
            fixed=None if settings.warmup_quota_chunk == "auto" else settings.warmup_quota_chunk,
            day_seconds=settings.warmup_day_seconds or 86400.0,
            renew_interval=settings.lease_renew_interval,
        ),
        status_ips=tuple(old_status.get("ips") or ()),
        queued=frozenset(
            pod_name
            for pod_name, stats in memory.stats.items()
            if not stats.draining and any(q.depth > 0 for q in stats.queues.values())
        ),
    )
    if memory.plan is None:
        await pool_leases.renew_leases(ctx, admin, body, world, memory)
    plan = memory.plan or _empty_plan(addresses)

    # --- render config and children -----------------------------------------------------
    holders = sum(1 for p in plan.pods if p.ips)
    ready_active = sum(1 for v in views if v.ready and v.name not in leaving)
    divisor = throttle_division.count_active_pods(
        holders=holders,
        ready_active=min(ready_active, active) if active else 0,
        relay=spec.egress.mode == "relay" or not addresses,
    )
    key_data = await pool_children.read_dkim_keys(
        ctx, namespace, sender_config.dkim_key_secrets(spec.domains, domain_auths), memory
    )
    rendered = sender_config.render_config(
        sender_config.RenderInput(
            name=name,
            namespace=namespace,
            spec=spec,
            active_pods=divisor,
            domain_auths=domain_auths,
            dkim_available=frozenset(key_data),
            generation=generation,
            nameservers=tuple(pool_children.hostport(s) for s in settings.sender_nameservers),
            smtp_port=settings.sender_smtp_port,
            tls_ca_file=settings.sender_tls_ca_file,
            mta_sts_port=settings.sender_mta_sts_port,
            dane_resolver=pool_children.hostport(settings.sender_dane_resolver)
            if settings.sender_dane_resolver else None,
            # The senders' quota day must be the operator's warm-up day (sandbox time scale).
            day_length=units.format_duration(settings.warmup_day_seconds)
            if settings.warmup_day_seconds
            else None,
            timezone=memory.quota_timezone,
            event_secrets=memory.event_secrets,
        )
    )
    # Scale-down: shrink the StatefulSet only past pods whose queue emptied (or timed out).
    sts_replicas = desired_total
    if current_total > desired_total:
        pending = [
            p
            for p in leaving
            if not pool_policy.drained_enough(
                p, memory, plan, now, timedelta(seconds=settings.drain_timeout)
            )
        ]
        if pending:
            sts_replicas = max(ordinal_of(p) for p in pending) + 1
        if not frozen:
            pool_policy.report_drain_timeouts(
                leaving, memory, sts_replicas, current_total, settings.drain_timeout, cycle
            )
    pool_objects = children.PoolObjects(
        name=name,
        namespace=namespace,
        uid=meta["uid"],
        replicas=sts_replicas,
        secret_mounts=rendered.mounts,
        files_mounts=rendered.files_mounts,
        default_image=settings.sender_image,
    )
    submission_secret: str | None = old_status.get("submissionSecret")  # frozen: as it was
    if not frozen:
        # The keys first: a config naming a key the Secret does not hold yet would make the
        # senders fall back to the previous key (or hold mail) for nothing.
        await pool_children.apply_dkim_secret(
            ctx, pool_objects, key_data, memory, cycle, live=world.children, applied=applied
        )
        # Before the pods mount it: a listener without its own Secret uses the generated one.
        submission_secret = await pool_children.ensure_submission_secret(
            ctx, spec, pool_objects, memory, cycle, live=world.children, applied=applied
        )
        owned = [
            *children.build_children(spec, pool_objects, config_yaml=rendered.text),
            submission_access.build_network_policy(
                spec, pool_objects, _operator_pods(settings)
            ),
        ]
        for child in owned:
            if child["kind"] == "ConfigMap":
                annotations_of = child["metadata"].setdefault("annotations", {})
                annotations_of[GOOD_SPEC_ANNOTATION] = _spec_record(spec, generation)
            await pool_children.apply_child(
                ctx, child, meta["uid"], memory, cycle, live=world.children, applied=applied
            )
        recheck = now.timestamp() // max(settings.stats_interval, 1.0)  # drift: re-read
        egress_key = (spec.egress.model_dump_json(), recheck)
        if memory.applied.get("egress-objects") != str(egress_key):
            await pool_children.apply_egress_objects(
                ctx, spec, namespace, name, meta["uid"], cycle
            )
            memory.applied["egress-objects"] = str(egress_key)
        memory.sts_replicas = sts_replicas

    await pool_policy.undrain(
        admin, plan, views, {p["metadata"]["name"]: p for p in world.pods}, http_port, token,
        memory, now, timedelta(seconds=settings.drain_timeout),
    )
    if not frozen:
        await pool_children.label_serving(ctx, spec, plan, world.pods, leaving, cycle)

    # --- status -------------------------------------------------------------------------
    memory.ip_states = {}
    for decision in plan.ips:
        memory.ip_states[decision.state.value] = memory.ip_states.get(decision.state.value, 0) + 1
    publish_ip_states()
    status = status_module.build_status(
        spec, name, plan, views, leaving, memory, quotas, active, old_status=old_status
    )
    if submission_secret:
        status["submissionSecret"] = submission_secret
    elif old_status.get("submissionSecret"):
        status["submissionSecret"] = None  # the spec names its own Secrets now
    verdicts = status_module.verdicts(
        spec, plan, rendered, status, breaker, frozen, sts_replicas, desired_total, active,
        pool_paused,
    )
    verdicts = _held_verdicts(verdicts, refused, applied, memory, cycle)
    # IP transitions are the lease loop's events (pool_leases), not this cycle's.
    if breaker.newly_paused:
        for scope in breaker.newly_paused:
            metrics.POOL_PAUSES.labels(scope="pool" if scope == reputation.POOL else "class").inc()
            cycle.event("Warning", "ReputationPaused", breaker.state.reasons.get(scope, scope))
    for warning in breaker.warnings:
        cycle.event("Warning", "ReputationWarning", warning.message)
    if breaker.resumed:
        cycle.event("Normal", "ReputationResumed", "sending resumed by annotation")
    await pool_policy.save_breaker(ctx, body, breaker, cycle)
    await status_module.write_status(
        ctx, body, old_status, status, verdicts, now, cycle, acted_on=generation
    )
    for type_, reason, message in cycle.events:
        try:
            await ctx.client.post_event(
                regarding=body,
                type_=type_,
                reason=reason,
                message=message,  # type: ignore[arg-type]
            )
        except kube_client.ApiError:
            pass  # events are best effort
    return ctx_module.Outcome(requeue_after=period, changed=cycle.writes > 0)


def _operator_pods(settings: settings_module.Settings) -> submission_access.OperatorPods:
    """The operator's own pods, let in to the senders' admin port."""
    labels = dict(
        item.split("=", 1) for item in settings.operator_pod_labels if "=" in item
    )
    namespace = settings.operator_namespace or os.environ.get("POD_NAMESPACE") or "default"
    return submission_access.OperatorPods(namespace=namespace, labels=labels)


def _refusal(body: Mapping[str, Any], settings: settings_module.Settings) -> str | None:
    """Why the operator refuses the pool's spec (None: it is good): its models' validation,
    then egress IPs in networks this operator refuses (`refused_egress_networks`) and plain
    http webhooks (`webhook_loopback_http`)."""
    try:
        spec = sp.SendingPoolSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return "; ".join(describe_errors(exc, prefix="spec"))[:2000]
    problems = egress_networks.refusals(
        [ip.address for ip in spec.egress.ips], settings.refused_egress_networks
    ) + event_config.refusals(spec, allow_loopback_http=settings.webhook_loopback_http)
    return "; ".join(problems)[:2000] if problems else None


def _spec_record(spec: sp.SendingPoolSpec, generation: int | None) -> str:
    """The spec a config was rendered from, as kept on the ConfigMap (no secrets: a spec
    holds only references to Secrets)."""
    return json.dumps(
        {"generation": generation,
         "spec": spec.model_dump(mode="json", by_alias=True, exclude_unset=True)},
        sort_keys=True, separators=(",", ":"),
    )


async def _recorded_spec(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    world: World,
    settings: settings_module.Settings,
) -> tuple[sp.SendingPoolSpec, int | None] | None:
    """The last good spec as the pool's own ConfigMap records it; None when there is none
    the operator would still accept (then the pool holds)."""
    meta = body["metadata"]
    config_map = await pool_children.read_live(
        ctx, "ConfigMap", children.Names(meta["name"]).config_map,
        meta.get("namespace") or "default", world.children,
    )
    if config_map is None or not child_drift.owned_by(config_map, meta["uid"]):
        return None
    text = ((config_map.get("metadata") or {}).get("annotations") or {}).get(
        GOOD_SPEC_ANNOTATION
    )
    try:
        record = json.loads(text) if text else None
        if not isinstance(record, dict):
            return None
        if _refusal({"spec": record.get("spec")}, settings) is not None:
            return None
        spec = sp.SendingPoolSpec.model_validate(record.get("spec") or {})
    except (ValueError, ValidationError):
        return None
    generation = record.get("generation")
    return spec, generation if isinstance(generation, int) else None


def _held_verdicts(
    verdicts: list[conditions.Verdict],
    refused: str | None,
    applied: pool_children.Applied,
    memory: PoolMemory,
    cycle: Cycle,
) -> list[conditions.Verdict]:
    """Ready says first what the operator refused to do: a spec it holds (the last good one
    runs), then children it may not or could not write. A new clash is a Warning event."""
    for clash in applied.clashes:
        if clash not in memory.clashes:
            cycle.event("Warning", CHILD_NOT_OWNED, clash)
    memory.clashes = set(applied.clashes)
    if refused is not None:
        ready = conditions.Verdict(
            sp.READY, False, INVALID_SPEC,
            f"spec refused, the last good spec keeps running: {refused}"[:2000],
        )
    elif applied.clashes:
        ready = conditions.Verdict(sp.READY, False, CHILD_NOT_OWNED, "; ".join(applied.clashes))
    elif applied.failures:
        ready = conditions.Verdict(
            sp.READY, False, "ChildNotApplied", "; ".join(applied.failures)
        )
    else:
        return verdicts
    return [ready if v.type == sp.READY else v for v in verdicts]


def _empty_plan(addresses: list[str]) -> assigning.AssignmentPlan:
    """Before the lease loop has run (not leading yet): every IP waits."""
    return assigning.AssignmentPlan(
        ips=tuple(
            assigning.IPDecision(a, assigning.IPState.STANDBY, None, "WaitingForLeader")
            for a in addresses
        ),
        pods=(),
        drain=(),
        health={},
        failing_over=False,
        degraded_reasons=(),
    )

