"""The SendingPool controller: gather, evaluate with pure functions, apply (DESIGN.md §4).

One level-based cycle (`reconcile_pool`) serves create, update, resume and the timer. It:
1. gathers the pool, its pods and nodes (passed in by the handler, from kopf indexes), the
   DomainAuths it names, IPWarmups of the pool, the pods' stats and DNSBL listings;
2. decides with pure code: replicas (`autoscaling`), IP holders (`assigning`), the rendered
   config (`sender_config`), children (`children`), the breaker (`reputation`);
3. applies: children (only when their content hash changed), lease grants and renewals to
   the pods (`pod_admin`), drains, then one status patch when the status changed, and an
   event per transition.

Leases survive an operator restart through `status.ips[].pod`: a new holder is written there
*before* its grant is sent (write-ahead), and a restarted operator assumes every recorded
holder may hold its IP for a full lease from now. So a restart mid-failover waits at most one
lease, and never hands an IP to a second pod.

Per-pool memory (leases with expiries, stats samples, scale history) lives in this process;
everything needed for safety is in the API, the rest is rebuilt within a few cycles.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import json
import secrets
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from mailfleet_sender import units, wire
from pydantic import ValidationError

from mailfleet_operator import metrics
from mailfleet_operator.api import domainauth as da
from mailfleet_operator.api import ipwarmup as ipw
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.api.common import describe_errors, dump_status
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    assigning,
    autoscaling,
    children,
    conditions,
    reputation,
    sender_config,
    throttle_division,
    warmup_quotas,
)
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import pod_admin, sendingpool_dnsbl

FENCED_ANNOTATION = "mailfleet.io/fenced-ips"
RECONCILIATION_ANNOTATION = "mailfleet.io/reconciliation"  # "disabled" pauses (as CNPG)
RESUME_ANNOTATION = "mailfleet.io/resume"
BREAKER_ANNOTATION = "mailfleet.io/reputation-breaker"
HASH_ANNOTATION = "mailfleet.io/applied-hash"
PAUSED = "Paused"
EventType = Literal["Normal", "Warning"]


@dataclasses.dataclass
class PoolMemory:
    """What the operator remembers about one pool between cycles (process memory)."""

    leases: dict[str, assigning.Lease] | None = None
    generations: dict[str, int] = dataclasses.field(default_factory=dict)  # pod -> last sent
    applied: dict[str, str] = dataclasses.field(default_factory=dict)  # child -> hash
    token: str | None = None
    stats: dict[str, wire.Stats] = dataclasses.field(default_factory=dict)
    stats_at: datetime | None = None
    samples: list[reputation.Sample] = dataclasses.field(default_factory=list)
    scale_history: tuple[autoscaling.Recommendation, ...] = ()
    active: int | None = None
    listed: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    dnsbl_at: datetime | None = None
    drained: dict[str, datetime] = dataclasses.field(default_factory=dict)  # pod uid -> since
    leaving_since: dict[str, datetime] = dataclasses.field(default_factory=dict)
    sts_replicas: int | None = None
    domain_auths: dict[str, da.DomainAuth | None] = dataclasses.field(default_factory=dict)
    quotas: dict[str, int | None] = dataclasses.field(default_factory=dict)
    slow_at: datetime | None = None
    slow_key: Any = None
    ip_states: dict[str, int] = dataclasses.field(default_factory=dict)  # state -> count
    # Warm-up quota accounting of the senders' current day: ip -> pod -> the highest sentToday
    # seen (a pod that vanished still counts); ip -> pod -> what its last lease allowed it to
    # reach; ip -> pods whose count is final (they reported it while not holding the IP).
    # A pod whose count is not final may have sent up to its allowance.
    usage_day: int | None = None
    ip_sent: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    ip_allowance: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    ip_final: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    # ip -> (holder, seconds, count) of its last reading, and the rate measured between the
    # last two readings (messages/s): sizes the automatic quota chunk.
    ip_rate_probe: dict[str, tuple[str, float, int]] = dataclasses.field(default_factory=dict)
    ip_rate: dict[str, float] = dataclasses.field(default_factory=dict)
    # Set when leases were rebuilt from status (restart): each recorded holder of a warming
    # IP counts with the whole day until it acknowledges a lease of ours.
    seed_allowances: bool = False
    # DomainAuth key Secret -> its private.pem as the API gives it (base64); what the pool's
    # DKIM Secret was last written with. Never logged.
    dkim_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    dkim_applied: dict[str, str] | None = None
    # Admin calls to failed pods still running in the background ("kind/pod" -> task).
    inflight: dict[str, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


MEMORY: dict[str, PoolMemory] = {}


def memory_for(uid: str) -> PoolMemory:
    return MEMORY.setdefault(uid, PoolMemory())


def forget(uid: str) -> None:
    MEMORY.pop(uid, None)
    _publish_ip_states()


def _publish_ip_states() -> None:
    """`mailfleet_operator_pool_ips{state}`: the IPs of every pool this process serves."""
    for state in assigning.IPState:
        total = sum(m.ip_states.get(state.value, 0) for m in MEMORY.values())
        metrics.POOL_IPS.labels(state=state.value).set(total)


@dataclasses.dataclass(frozen=True)
class World:
    """Inputs the handler gathers from kopf's watch indexes (no API calls needed)."""

    pods: Sequence[Mapping[str, Any]]
    nodes: Mapping[str, Mapping[str, Any]]  # by name; a missing node is treated as NotReady
    # The pool's IPWarmups (read every cycle for quotas); None: list them from the API.
    warmups: Sequence[Mapping[str, Any]] | None = None


# --- reading pods and nodes ---------------------------------------------------------------------


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def node_ready(node: Mapping[str, Any] | None) -> bool:
    if node is None:
        return False
    cond = _condition(node, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_view(
    pod: Mapping[str, Any], *, nodes: Mapping[str, Mapping[str, Any]], leaving: bool
) -> assigning.PodView:
    meta = pod["metadata"]
    ready_cond = _condition(pod, "Ready")
    ready = ready_cond is not None and ready_cond.get("status") == "True"
    since = None
    if not ready:
        since = _parse_time((ready_cond or {}).get("lastTransitionTime")) or _parse_time(
            meta.get("creationTimestamp")
        )
    node_name = (pod.get("spec") or {}).get("nodeName")
    return assigning.PodView(
        name=meta["name"],
        uid=meta.get("uid", ""),
        ordinal=ordinal_of(meta["name"]),
        ready=ready,
        unready_since=since,
        node_ready=node_ready(nodes.get(node_name)) if node_name else True,
        terminating=bool(meta.get("deletionTimestamp")),
        leaving=leaving,
    )


def ordinal_of(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def endpoint_of(pod: Mapping[str, Any], port: int) -> pod_admin.PodEndpoint | None:
    ip = (pod.get("status") or {}).get("podIP")
    return pod_admin.PodEndpoint(pod["metadata"]["name"], ip, port) if ip else None


# --- the cycle ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Cycle:
    """Per-cycle scratch: events to post and whether anything was written."""

    events: list[tuple[EventType, str, str]] = dataclasses.field(default_factory=list)
    writes: int = 0

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


async def reconcile_pool(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: World,
) -> ctx_module.Outcome:
    """One full cycle for one pool. Safe to call concurrently: cycles of a pool serialize."""
    uid = body["metadata"]["uid"]
    memory = memory_for(uid)
    async with memory.lock:
        return await _reconcile_locked(ctx, admin, body, world, memory)


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
    period = max(settings.lease_renew_interval / 2, 0.2)
    cycle = Cycle()
    old_status = dict(body.get("status") or {})
    try:
        spec = sp.SendingPoolSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        message = "; ".join(describe_errors(exc, prefix="spec"))[:2000]
        verdicts = [conditions.Verdict(sp.READY, False, "InvalidSpec", message)]
        await _write_status(ctx, body, old_status, {}, verdicts, now, cycle)
        return ctx_module.Outcome(requeue_after=settings.error_delay)

    frozen = annotations.get(RECONCILIATION_ANNOTATION, "").lower() == "disabled"
    lease_settings = assigning.AssignmentSettings(
        lease_duration=timedelta(seconds=settings.lease_duration),
        renew_interval=timedelta(seconds=settings.lease_renew_interval),
        unhealthy_after=units.parse_duration(spec.failover.unhealthy_after),
        drain_on_blocklist=spec.failover.drain_on_blocklist,
    )
    skew = timedelta(seconds=settings.lease_clock_skew)
    names = children.Names(name)
    pods_by_name = {p["metadata"]["name"]: p for p in world.pods}

    # Restart: rebuild leases from status, assuming each recorded holder holds a full lease.
    if memory.leases is None:
        memory.leases = _leases_from_status(old_status, pods_by_name, now, lease_settings, skew)
        memory.seed_allowances = True

    token = await _ensure_admin_secret(ctx, body, names, memory, cycle)

    # --- gather: stats, DNSBL, DomainAuths, warm-ups -------------------------------------
    http_port = spec.submission.http.port
    if memory.stats_at is None or now - memory.stats_at >= timedelta(
        seconds=settings.stats_interval
    ):
        await _read_stats(admin, world.pods, world.nodes, http_port, token, memory, now)
    zones = spec.health_checks.dnsbl.zones
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
    slow_key = (meta.get("generation"), tuple(spec.domains))
    if (
        memory.slow_key != slow_key
        or memory.slow_at is None
        or now - memory.slow_at >= timedelta(seconds=settings.stats_interval)
    ):
        memory.domain_auths = await _read_domain_auths(ctx, namespace, spec.domains)
        memory.slow_at, memory.slow_key = now, slow_key
        memory.dkim_keys = {}  # re-read with the DomainAuths
    # Warm-up quotas every cycle: a day's new quota or a pause reaches the leases at once.
    previous_quotas = memory.quotas
    memory.quotas = await _read_warmup_quotas(ctx, namespace, name, world.warmups)
    requota = {
        a
        for a in set(previous_quotas) | set(memory.quotas)
        if previous_quotas.get(a) != memory.quotas.get(a)
    }
    domain_auths, quotas = memory.domain_auths, memory.quotas
    if memory.seed_allowances:
        _seed_allowances(memory, quotas)
    chunking = _Chunking(
        fixed=None if settings.warmup_quota_chunk == "auto" else settings.warmup_quota_chunk,
        day_seconds=settings.warmup_day_seconds or 86400.0,
        renew_interval=settings.lease_renew_interval,
    )

    # --- decide replicas ----------------------------------------------------------------
    if memory.sts_replicas is None:
        sts = await ctx.client.get(
            resources.STATEFUL_SETS, name=names.statefulset, namespace=namespace
        )
        memory.sts_replicas = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
    current_total = memory.sts_replicas
    active = _decide_active(
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

    # --- decide IPs ---------------------------------------------------------------------
    fenced = frozenset(
        ip.strip()
        for ip in annotations.get(FENCED_ANNOTATION, "").replace(";", ",").split(",")
        if ip.strip()
    )
    plan = assigning.plan_assignment(
        assigning.AssignmentInput(
            ips=addresses,
            pods=views,
            leases=memory.leases,
            now=now,
            active_target=active,
            listed=memory.listed,
            fenced=fenced,
            settings=lease_settings,
        )
    )
    if frozen:
        plan = _freeze(plan)

    # --- breaker --------------------------------------------------------------------------
    breaker = _run_breaker(spec, annotations, memory, now)
    paused_classes = set(breaker.paused_classes)
    pool_paused = spec.paused or breaker.pool_paused

    # --- render config and children -----------------------------------------------------
    holders = sum(1 for p in plan.pods if p.ips)
    ready_active = sum(1 for v in views if v.ready and v.name not in leaving)
    divisor = throttle_division.count_active_pods(
        holders=holders,
        ready_active=min(ready_active, active) if active else 0,
        relay=spec.egress.mode == "relay" or not addresses,
    )
    key_data = await _read_dkim_keys(
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
            generation=meta.get("generation"),
            nameservers=tuple(_hostport(s) for s in settings.sender_nameservers),
            smtp_port=settings.sender_smtp_port,
            # The senders' quota day must be the operator's warm-up day (sandbox time scale).
            day_length=units.format_duration(settings.warmup_day_seconds)
            if settings.warmup_day_seconds
            else None,
        )
    )
    # Scale-down: shrink the StatefulSet only past pods whose queue emptied (or timed out).
    sts_replicas = desired_total
    if current_total > desired_total:
        pending = [
            p
            for p in leaving
            if not _drained_enough(p, memory, plan, now, timedelta(seconds=settings.drain_timeout))
        ]
        if pending:
            sts_replicas = max(ordinal_of(p) for p in pending) + 1
        if not frozen:
            _report_drain_timeouts(
                leaving, memory, sts_replicas, current_total, settings.drain_timeout, cycle
            )
    pool_objects = children.PoolObjects(
        name=name,
        namespace=namespace,
        uid=meta["uid"],
        replicas=sts_replicas,
        secret_mounts=rendered.mounts,
        default_image=settings.sender_image,
    )
    if not frozen:
        # The keys first: a config naming a key the Secret does not hold yet would make the
        # senders fall back to the previous key (or hold mail) for nothing.
        await _apply_dkim_secret(ctx, pool_objects, key_data, memory, cycle)
        for child in children.build_children(spec, pool_objects, config_yaml=rendered.text):
            await _apply_child(ctx, child, memory, cycle)
        memory.sts_replicas = sts_replicas

    # --- apply leases ---------------------------------------------------------------------
    if any(p.granted for p in plan.pods):
        # Write-ahead: the new holders are in the API before any grant leaves.
        await _write_ips(ctx, body, plan, quotas, memory, cycle)
    class_names = [c.name for c in spec.classes]
    allowed = [] if pool_paused else [c for c in class_names if c not in paused_classes]
    # Calls to failed pods (revokes, drains) must not hold up the renewals of the others: a
    # partitioned pod answers nothing until its call times out.
    grace = min(settings.pod_admin_timeout, period / 2)
    failed = {n for n, h in plan.health.items() if h is assigning.PodHealth.FAILED}
    await _run_calls(
        memory,
        [
            (
                f"assignment/{order.pod}",
                order.pod not in failed,
                functools.partial(
                    _send_assignment,
                    admin,
                    order,
                    pods_by_name.get(order.pod),
                    spec,
                    http_port,
                    token,
                    memory,
                    now,
                    lease_settings,
                    skew,
                    quotas,
                    allowed=allowed,
                    chunking=chunking,
                ),
            )
            for order in plan.pods
            if order.send or requota.intersection(order.ips)
        ],
        grace=grace,
    )
    memory.leases = assigning.forget_dead_leases(memory.leases, pods=views, now=now, keep=addresses)
    await _drain(admin, plan, pods_by_name, http_port, token, memory, now, failed, grace)
    await _undrain(
        admin, plan, views, pods_by_name, http_port, token, memory, now,
        timedelta(seconds=settings.drain_timeout),
    )
    if not frozen:
        await _label_serving(ctx, spec, plan, world.pods, leaving, cycle)

    # --- status -------------------------------------------------------------------------
    memory.ip_states = {}
    for decision in plan.ips:
        memory.ip_states[decision.state.value] = memory.ip_states.get(decision.state.value, 0) + 1
    _publish_ip_states()
    status = _build_status(spec, name, plan, views, leaving, memory, quotas, active)
    verdicts = _verdicts(
        spec,
        plan,
        rendered,
        status,
        breaker,
        frozen,
        sts_replicas,
        desired_total,
        active,
        pool_paused,
    )
    _ip_events(old_status, status, cycle)
    if breaker.newly_paused:
        for scope in breaker.newly_paused:
            metrics.POOL_PAUSES.labels(scope="pool" if scope == reputation.POOL else "class").inc()
            cycle.event("Warning", "ReputationPaused", breaker.state.reasons.get(scope, scope))
    for warning in breaker.warnings:
        cycle.event("Warning", "ReputationWarning", warning.message)
    if breaker.resumed:
        cycle.event("Normal", "ReputationResumed", "sending resumed by annotation")
    await _save_breaker(ctx, body, breaker, cycle)
    await _write_status(ctx, body, old_status, status, verdicts, now, cycle)
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


def _freeze(plan: assigning.AssignmentPlan) -> assigning.AssignmentPlan:
    """Reconciliation disabled: keep holders and renew their leases, change nothing else."""
    kept = tuple(
        dataclasses.replace(
            p, ips=tuple(a for a in p.ips if a not in p.granted), granted=(), revoked=()
        )
        for p in plan.pods
    )
    return dataclasses.replace(plan, pods=kept, drain=())


def _hostport(text: str) -> tuple[str, int]:
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


def _leases_from_status(
    status: Mapping[str, Any],
    pods: Mapping[str, Mapping[str, Any]],
    now: datetime,
    lease_settings: assigning.AssignmentSettings,
    skew: timedelta,
) -> dict[str, assigning.Lease]:
    leases = {}
    for entry in status.get("ips") or []:
        holder = entry.get("pod")
        if not holder:
            continue
        pod = pods.get(holder)
        leases[entry["address"]] = assigning.Lease(
            address=entry["address"],
            pod=holder,
            pod_uid=pod.get("metadata", {}).get("uid", "") if pod else "",
            expires_at=now + lease_settings.lease_duration + skew,
        )
    return leases


async def _ensure_admin_secret(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    names: children.Names,
    memory: PoolMemory,
    cycle: Cycle,
) -> str:
    if memory.token:
        return memory.token
    namespace = body["metadata"].get("namespace") or "default"
    current = await ctx.client.get(resources.SECRETS, name=names.admin_secret, namespace=namespace)
    if current is None:
        token = secrets.token_urlsafe(32)
        pool = children.PoolObjects(
            name=body["metadata"]["name"],
            namespace=namespace,
            uid=body["metadata"]["uid"],
            replicas=0,
        )
        try:
            await ctx.client.create(
                resources.SECRETS,
                namespace=namespace,
                body=children.build_admin_secret(pool, token=token),
            )
            cycle.writes += 1
            memory.token = token
            return token
        except kube_client.Conflict:
            current = await ctx.client.get(
                resources.SECRETS, name=names.admin_secret, namespace=namespace
            )
    memory.token = children.admin_token(current)
    return memory.token


async def _read_stats(
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

    async def one(pod: Mapping[str, Any]) -> tuple[str, str, wire.Stats | None]:
        endpoint = endpoint_of(pod, port)
        name, uid = pod["metadata"]["name"], pod["metadata"].get("uid", "")
        node = (pod.get("spec") or {}).get("nodeName")
        if endpoint is None or _condition(pod, "Ready") is None:
            return name, uid, None
        if node and not node_ready(nodes.get(node)):
            return name, uid, None
        try:
            return name, uid, await admin.get_stats(endpoint, token=token)
        except pod_admin.PodUnreachable:
            return name, uid, None

    held_before = {
        (address, lease.pod)
        for address, lease in (memory.leases or {}).items()
        if not lease.released
    }
    results = await asyncio.gather(*(one(p) for p in pods))
    fresh: dict[str, wire.Stats] = {}
    for name, uid, stats in results:
        if stats is None:
            continue
        fresh[name] = stats
        sent = sum(ip.sent_today for ip in stats.ips)
        bounced = sum(ip.bounced_today for ip in stats.ips)
        complained = sum(ip.complained_today for ip in stats.ips)
        memory.samples.append(
            reputation.Sample(
                now, uid, reputation.POOL, reputation.Counts(sent, bounced, complained)
            )
        )
    memory.stats = fresh
    memory.stats_at = now
    _merge_usage(memory, fresh, now, held_before)
    memory.samples = reputation.prune_samples(memory.samples, now=now, window=timedelta(days=1))


async def _read_domain_auths(
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


async def _read_warmup_quotas(
    ctx: ctx_module.Context,
    namespace: str,
    pool: str,
    indexed: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, int | None]:
    """ip -> today's quota from the pool's IPWarmups (None: warm, no cap)."""
    quotas: dict[str, int | None] = {}
    items: Sequence[Mapping[str, Any]]
    if indexed is not None:
        items = indexed
    else:
        try:
            items = await ctx.client.list(resources.IP_WARMUPS, namespace=namespace)
        except kube_client.ApiError:
            return quotas
    for raw in items:
        try:
            warmup = ipw.IPWarmup.model_validate(raw)
        except ValidationError:
            continue
        if warmup.spec.pool_ref.name != pool or warmup.status is None:
            continue
        if warmup.status.phase in ("Completed", "Pending"):
            continue
        per_ip = {p.address: p.daily_quota for p in warmup.status.ips}
        for address in warmup.spec.addresses or per_ip:
            quotas[address] = per_ip.get(address, warmup.status.daily_quota)
    return quotas


def _decide_active(
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


def _drained_enough(
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


def _report_drain_timeouts(
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


def _run_breaker(
    spec: sp.SendingPoolSpec, annotations: Mapping[str, str], memory: PoolMemory, now: datetime
) -> reputation.BreakerOutcome:
    state = _load_breaker(annotations.get(BREAKER_ANNOTATION, ""))
    rep = spec.reputation
    window = units.parse_duration(rep.window)
    counts = reputation.window_counts(memory.samples, now=now, window=window, since=state.since)
    counts.update(_class_counts(memory, window=window, now=now, since=state.since))
    return reputation.run_breaker(
        state,
        counts,
        warn_at=reputation.Thresholds(rep.warn_at.bounce_rate, rep.warn_at.complaint_rate),
        pause_at=reputation.Thresholds(rep.pause_at.bounce_rate, rep.pause_at.complaint_rate),
        min_messages=rep.min_messages,
        resume_token=annotations.get(RESUME_ANNOTATION, ""),
        now=now,
    )


def _class_counts(
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


def _load_breaker(text: str) -> reputation.BreakerState:
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


def _dump_breaker(state: reputation.BreakerState) -> str:
    return json.dumps(
        {
            "paused": list(state.paused),
            "since": state.since.isoformat() if state.since else None,
            "resumeToken": state.resume_token,
            "reasons": dict(state.reasons),
        },
        sort_keys=True,
    )


async def _save_breaker(
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
        patch={"metadata": {"annotations": {BREAKER_ANNOTATION: _dump_breaker(breaker.state)}}},
    )
    cycle.writes += 1


async def _apply_child(
    ctx: ctx_module.Context, body: dict[str, Any], memory: PoolMemory, cycle: Cycle
) -> None:
    """Create or update an owned child; skipped when its content hash is unchanged."""
    resource = {
        "StatefulSet": resources.STATEFUL_SETS,
        "Service": resources.SERVICES,
        "ConfigMap": resources.CONFIG_MAPS,
        "PodDisruptionBudget": resources.POD_DISRUPTION_BUDGETS,
    }[body["kind"]]
    meta = body["metadata"]
    key = f"{body['kind']}/{meta['name']}"
    digest = _hash(body)
    if memory.applied.get(key) == digest:
        return
    meta.setdefault("annotations", {})[HASH_ANNOTATION] = digest
    current = await ctx.client.get(resource, name=meta["name"], namespace=meta["namespace"])
    if current is None:
        try:
            await ctx.client.create(resource, body=body, namespace=meta["namespace"])
            cycle.writes += 1
        except kube_client.Conflict:
            return  # someone else created it: compare next cycle
    elif (current["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) != digest:
        patch: dict[str, Any] = {
            "metadata": {
                "labels": meta["labels"],
                "annotations": meta["annotations"],
                "ownerReferences": meta["ownerReferences"],
            },
        }
        for field in ("spec", "data"):
            if field in body:
                patch[field] = body[field]
        if body["kind"] == "StatefulSet":
            template = patch["spec"]["template"]["spec"]
            for optional in ("nodeSelector", "tolerations"):
                template.setdefault(optional, None)  # merge patch: null removes a dropped field
        await ctx.client.patch(
            resource, name=meta["name"], namespace=meta["namespace"], patch=patch
        )
        cycle.writes += 1
    memory.applied[key] = digest


async def _send_assignment(
    admin: pod_admin.PodAdmin,
    order: assigning.PodAssignment,
    pod: Mapping[str, Any] | None,
    spec: sp.SendingPoolSpec,
    port: int,
    token: str,
    memory: PoolMemory,
    now: datetime,
    lease_settings: assigning.AssignmentSettings,
    skew: timedelta,
    quotas: Mapping[str, int | None],
    *,
    allowed: list[str],
    chunking: _Chunking | None = None,
) -> None:
    assert memory.leases is not None
    expires = now + lease_settings.lease_duration
    # Record first (in memory; new holders are already in status): an answer lost on the
    # way back must not leave us with an expiry earlier than the pod's.
    memory.leases = assigning.record_intent(
        memory.leases,
        order,
        now=now,
        settings=lease_settings,
        request_timeout=timedelta(0),
        skew=skew,
    )
    for address in order.ips:
        lease = memory.leases.get(address)
        if lease is not None and lease.pod == order.pod:
            memory.leases[address] = dataclasses.replace(
                lease, expires_at=max(lease.expires_at, expires + skew)
            )
    if pod is None:
        return
    endpoint = endpoint_of(pod, port)
    if endpoint is None:
        return
    by_address = {ip.address: ip for ip in spec.egress.ips}
    generation = max(memory.generations.get(order.pod, 0) + 1, int(now.timestamp() * 1000))
    memory.generations[order.pod] = generation
    leases = []
    day = memory.usage_day
    allowances: dict[str, int] = {}  # what each warming lease of this call lets the pod reach
    for address in order.ips:
        ip = by_address.get(address)
        if ip is None:
            continue
        quota = quotas.get(address)
        chunk = chunking.chunk(memory, address, quota) if chunking is not None else None
        remaining, basis = _lease_quota(memory, address, order.pod, quota, chunk=chunk)
        if remaining is not None and basis is not None:
            allowances[address] = basis + remaining
        classes = allowed if ip.classes is None else [c for c in ip.classes if c in allowed]
        leases.append(
            wire.Lease(
                address=address,
                helo_name=ip.helo_name,
                expires_at=expires,
                quota_remaining=remaining,
                sent_today_basis=basis,
                warmup=quota is not None,
                lease_id=f"{order.pod_uid[:8]}-{generation}",
                classes=None if classes == [c.name for c in spec.classes] else classes,
            )
        )
    try:
        answer = await admin.put_assignment(
            endpoint, wire.Assignment(generation=generation, leases=leases), token=token
        )
    except pod_admin.PodUnreachable:
        return
    _fold_answer(memory, order.pod, answer, now)
    if memory.generations.get(order.pod) != generation:
        return  # answered late (a background call): a newer assignment has been sent since
    held = [lease.address for lease in answer.leases if lease.valid]
    _acknowledged(memory, order.pod, allowances, granted_day=day, answer_day=answer.day)
    memory.leases = assigning.record_answer(
        memory.leases,
        order,
        held=held,
        answered_at=now,
        settings=lease_settings,
        skew=skew,
    )
    if order.granted:
        metrics.POOL_LEASE_GRANTS.inc(len(set(order.granted) & set(held)))


def _sent_today(memory: PoolMemory) -> dict[str, int]:
    """Per IP, what every pod reported sending from it today (the highest figure per pod)."""
    return {address: sum(by_pod.values()) for address, by_pod in memory.ip_sent.items()}


def _roll_day(memory: PoolMemory, day: int) -> None:
    """Start the senders' new quota day. A pod without a final count may still send what
    its last lease left unsent (the sender counts it on the new day), so that carries over
    as its allowance; everything else starts from zero."""
    if memory.usage_day == day:
        return
    if memory.usage_day is None:
        # Grants made before any count was read belong to this day: keep them all.
        memory.usage_day = day
        return
    carried: dict[str, dict[str, int]] = {}
    if day > memory.usage_day:
        for address, allowances in memory.ip_allowance.items():
            left = warmup_quotas.carry_over(
                memory.ip_sent.get(address, {}), allowances, memory.ip_final.get(address, ())
            )
            if left:
                carried[address] = left
    memory.usage_day, memory.ip_sent, memory.ip_allowance, memory.ip_final = day, {}, carried, {}
    memory.ip_rate_probe = {}  # counts restart; the IP's rate still holds


def _observe(memory: PoolMemory, address: str, pod: str, count: int, now: datetime) -> None:
    """Fold one count of `pod` on `address` into the day's figures and the IP's send rate."""
    by_pod = memory.ip_sent.setdefault(address, {})
    by_pod.update(warmup_quotas.merge_sent_counts(by_pod, {pod: count}))
    at = now.timestamp()
    probe = memory.ip_rate_probe.get(address)
    if probe is not None and probe[0] == pod:
        rate = warmup_quotas.send_rate((probe[1], probe[2]), (at, by_pod[pod]), min_span=0.2)
        if rate is None:
            return  # too close to the last reading: keep it as the reference
        memory.ip_rate[address] = rate
    memory.ip_rate_probe[address] = (pod, at, by_pod[pod])


def _fold_answer(
    memory: PoolMemory, pod: str, answer: wire.AssignmentStatus, now: datetime
) -> None:
    """An assignment answer carries the pod's fresh counts of the IPs it holds: the next
    renewal refills its chunk from them without waiting for a stats read."""
    if memory.usage_day is not None and answer.day < memory.usage_day:
        return
    _roll_day(memory, answer.day)
    for lease in answer.leases:
        if lease.warmup:
            _observe(memory, lease.address, pod, lease.sent_today, now)


def _acknowledged(
    memory: PoolMemory,
    pod: str,
    allowances: Mapping[str, int],
    *,
    granted_day: int | None,
    answer_day: int,
) -> None:
    """The pod applied the leases we granted (`allowances`: address -> the count each lets
    it reach) in place of its earlier ones: what it may reach today is now exactly that, not
    the most any earlier grant allowed. Figures of another day are left alone (the larger,
    earlier figure is the safe one)."""
    if granted_day is None or answer_day != granted_day or memory.usage_day != granted_day:
        return
    for address, reach in allowances.items():
        memory.ip_allowance.setdefault(address, {})[pod] = reach


def _merge_usage(
    memory: PoolMemory,
    fresh: Mapping[str, wire.Stats],
    now: datetime | None = None,
    held_before: Collection[tuple[str, str]] = (),
) -> None:
    """Fold a stats read into the day's per-pod counts; a new sender day starts afresh.

    A pod's count is final only if it held the IP neither when the read started
    (`held_before`: (address, pod)) nor now: a read answered just before a release may miss
    the last messages."""
    if not fresh:
        return
    day = max(stats.day for stats in fresh.values())
    if memory.usage_day is not None and day < memory.usage_day:
        return  # an answer has already shown the next day
    _roll_day(memory, day)
    leases = memory.leases or {}
    when = now or datetime.now(UTC)
    for pod, stats in fresh.items():
        if stats.day != day:
            continue
        for ip in stats.ips:
            _observe(memory, ip.address, pod, ip.sent_today, when)
        for address in set(memory.ip_sent) | set(memory.ip_allowance):
            lease = leases.get(address)
            final = memory.ip_final.setdefault(address, set())
            holding = lease is not None and lease.pod == pod and not lease.released
            if holding or (address, pod) in held_before:
                final.discard(pod)  # still holding: it may send more
            else:
                final.add(pod)


def _seed_allowances(memory: PoolMemory, quotas: Mapping[str, int | None]) -> None:
    """After a restart the operator does not know what the recorded holders' leases allowed:
    each counts with the whole day (at most the quota) until it acknowledges one of ours."""
    memory.seed_allowances = False
    for address, lease in (memory.leases or {}).items():
        quota = quotas.get(address)
        if quota is not None and not lease.released:
            allowances = memory.ip_allowance.setdefault(address, {})
            allowances[lease.pod] = max(allowances.get(lease.pod, 0), quota)


@dataclasses.dataclass(frozen=True)
class _Chunking:
    """How much of a warming IP's day one lease may carry (`warmup_quotas.quota_chunk`)."""

    fixed: int | None
    day_seconds: float
    renew_interval: float

    def chunk(self, memory: PoolMemory, address: str, quota: int | None) -> int | None:
        if quota is None:
            return None
        return warmup_quotas.quota_chunk(
            daily_quota=quota,
            day_seconds=self.day_seconds,
            renew_interval=self.renew_interval,
            observed_rate=memory.ip_rate.get(address, 0.0),
            fixed=self.fixed,
        )


def _lease_quota(
    memory: PoolMemory, address: str, pod: str, quota: int | None, *, chunk: int | None = None
) -> tuple[int | None, int | None]:
    """(quotaRemaining, sentTodayBasis) of `pod`'s lease on `address`: at most `chunk`
    (None: all) of what remains of the day.

    Other pods count with what they reported once they no longer held the IP, or else (lost
    before a final report) with what their last lease allowed (`warmup_quotas.HolderUsage`).
    The pod's own count is sent as the basis: the sender subtracts what it sent since, so a
    stale read (or a renewal between two reads) never grants the same messages twice.
    The pod's recorded allowance only grows here (an earlier lease may still be in force if
    this one never arrives); its acknowledgement sets it exactly (`_send_assignment`)."""
    if quota is None:
        return None, None
    sent = memory.ip_sent.get(address, {})
    allowances = memory.ip_allowance.setdefault(address, {})
    memory.ip_final.setdefault(address, set()).discard(pod)  # it holds the IP: not final
    own = sent.get(pod, 0)
    holders = [warmup_quotas.HolderUsage(pod=pod, sent=own)]
    for other in sorted((set(sent) | set(allowances)) - {pod}):
        holders.append(
            warmup_quotas.HolderUsage(
                pod=other,
                sent=sent.get(other, 0),
                allowance=allowances.get(other),
                final=other in memory.ip_final.get(address, ()),
            )
        )
    remaining = warmup_quotas.lease_quota(daily_quota=quota, holders=holders, chunk=chunk)
    assert remaining is not None
    allowances[pod] = max(allowances.get(pod, 0), own + remaining)
    return remaining, own


async def _run_calls(
    memory: PoolMemory,
    calls: Sequence[tuple[str, bool, Callable[[], Coroutine[Any, Any, None]]]],
    *,
    grace: float,
) -> None:
    """Run admin calls at once: `(key, patient, call)`. The cycle waits for patient calls;
    for the others (to failed pods, often unreachable) at most `grace` seconds, leaving them
    to finish in the background, and a key never has two calls in flight."""
    patient: list[asyncio.Task[None]] = []
    impatient: list[asyncio.Task[None]] = []
    for key, waits, call in calls:
        running = memory.inflight.get(key)
        if running is not None and not running.done():
            continue
        task = asyncio.create_task(call(), name=f"mailfleet-{key}")
        memory.inflight[key] = task
        task.add_done_callback(functools.partial(_call_done, memory, key))
        (patient if waits else impatient).append(task)
    waiting = [asyncio.wait(patient)] if patient else []
    if impatient:
        waiting.append(asyncio.wait(impatient, timeout=grace))
    await asyncio.gather(*waiting)
    for task in patient:
        task.result()  # a patient call's error is the cycle's error


def _call_done(memory: PoolMemory, key: str, task: asyncio.Task[None]) -> None:
    if memory.inflight.get(key) is task:
        del memory.inflight[key]
    if not task.cancelled() and task.exception() is not None:
        pass  # retrieved: a background call's failure only means "try again next cycle"


async def _drain(
    admin: pod_admin.PodAdmin,
    plan: assigning.AssignmentPlan,
    pods: Mapping[str, Mapping[str, Any]],
    port: int,
    token: str,
    memory: PoolMemory,
    now: datetime,
    failed: set[str],
    grace: float,
) -> None:
    """Ask each pod to drain with hand-off once (best effort: a dead pod cannot answer)."""

    async def one(endpoint: pod_admin.PodEndpoint, uid: str) -> None:
        try:
            await admin.drain(endpoint, token=token)
            memory.drained.setdefault(uid, now)
        except pod_admin.PodUnreachable:
            pass

    calls = []
    for name in plan.drain:
        pod = pods.get(name)
        if pod is None:
            continue
        uid = pod["metadata"].get("uid", "")
        endpoint = endpoint_of(pod, port)
        if uid in memory.drained or endpoint is None:
            continue
        calls.append((f"drain/{name}", name not in failed, functools.partial(one, endpoint, uid)))
    await _run_calls(memory, calls, grace=grace)


async def _undrain(
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


async def _label_serving(
    ctx: ctx_module.Context,
    spec: sp.SendingPoolSpec,
    plan: assigning.AssignmentPlan,
    pods: Sequence[Mapping[str, Any]],
    leaving: set[str],
    cycle: Cycle,
) -> None:
    """`mailfleet.io/serving=true` on the pods that take submissions, removed from the others:
    the IP holders, or in relay mode (no leases) every pod that stays."""
    if spec.egress.mode == "relay" or not spec.egress.ips:
        serving = {p["metadata"]["name"] for p in pods if p["metadata"]["name"] not in leaving}
    else:
        serving = {p.pod for p in plan.pods if p.ips}

    async def one(pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        want = "true" if meta["name"] in serving else None
        if (meta.get("labels") or {}).get(children.SERVING_LABEL) == want:
            return
        if meta.get("deletionTimestamp"):
            return
        try:
            await ctx.client.patch(
                resources.PODS,
                name=meta["name"],
                namespace=meta.get("namespace"),
                patch={"metadata": {"labels": {children.SERVING_LABEL: want}}},
            )
            cycle.writes += 1
        except kube_client.ApiError:
            pass  # gone, or the index lags: next cycle

    await asyncio.gather(*(one(p) for p in pods))


async def _read_dkim_keys(
    ctx: ctx_module.Context, namespace: str, wanted: Sequence[str], memory: PoolMemory
) -> dict[str, str]:
    """The private keys (base64, as stored) of the key Secrets the pool's senders may use.
    Keys are never rewritten, so a key read once is kept until the DomainAuths are re-read;
    an unreadable one is left out (and retried next cycle)."""
    found: dict[str, str] = {}
    for secret_name in wanted:
        if secret_name in memory.dkim_keys:
            found[secret_name] = memory.dkim_keys[secret_name]
            continue
        raw = await ctx.client.get(resources.SECRETS, name=secret_name, namespace=namespace)
        data = (raw or {}).get("data") or {}
        value = data.get(sender_config.DKIM_SECRET_KEY)
        if value is None and (raw or {}).get("stringData"):
            text = raw["stringData"].get(sender_config.DKIM_SECRET_KEY)  # type: ignore[index]
            value = base64.b64encode(text.encode()).decode() if text else None
        if value:
            found[secret_name] = value
    memory.dkim_keys = dict(found)
    return found


async def _apply_dkim_secret(
    ctx: ctx_module.Context,
    pool: children.PoolObjects,
    keys: Mapping[str, str],
    memory: PoolMemory,
    cycle: Cycle,
) -> None:
    """Make `<pool>-dkim` hold exactly `keys` (by `children.dkim_key_name`). Its files change
    in place in the pods (the kubelet swaps them), so a rotation never touches the pod
    template. Keys dropped from it are removed (null in the merge patch)."""
    data = {children.dkim_key_name(name): value for name, value in keys.items()}
    if memory.dkim_applied == data:
        return
    body = children.build_dkim_secret(pool, data=data)
    meta = body["metadata"]
    current = await ctx.client.get(resources.SECRETS, name=meta["name"], namespace=pool.namespace)
    if current is None:
        try:
            await ctx.client.create(resources.SECRETS, body=body, namespace=pool.namespace)
            cycle.writes += 1
        except kube_client.Conflict:
            return  # created meanwhile: compare next cycle
    else:
        have = current.get("data") or {}
        if have != body["data"]:
            stale: dict[str, str | None] = {key: None for key in have if key not in data}
            await ctx.client.patch(
                resources.SECRETS,
                name=meta["name"],
                namespace=pool.namespace,
                patch={
                    "metadata": {
                        "labels": meta["labels"],
                        "ownerReferences": meta["ownerReferences"],
                    },
                    "data": {**stale, **body["data"]},
                },
            )
            cycle.writes += 1
    memory.dkim_applied = data


def _build_status(
    spec: sp.SendingPoolSpec,
    name: str,
    plan: assigning.AssignmentPlan,
    views: Sequence[assigning.PodView],
    leaving: set[str],
    memory: PoolMemory,
    quotas: Mapping[str, int | None],
    active: int,
) -> dict[str, Any]:
    holders = {p.pod for p in plan.pods if p.ips}
    staying = [v for v in views if v.name not in leaving]
    # Active pods are the IP holders, then (fewer IPs than replicas, or none held yet) other
    # staying pods up to the active target, so `status.replicas` (the scale subresource)
    # follows `spec.replicas`; the rest are standbys.
    ordered = sorted(staying, key=lambda v: (v.name not in holders, v.ordinal))
    count = max(active, sum(1 for v in staying if v.name in holders))
    active_pods, standby = ordered[:count], [v for v in ordered[count:] if v.ready]
    sent = _sent_today(memory)
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
    )
    data = dump_status(status)
    data.pop("conditions", None)
    data.pop("observedGeneration", None)
    return data


def _verdicts(
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
    return [ready, degraded, failing, progressing, paused]


def _ip_events(old: Mapping[str, Any], new: Mapping[str, Any], cycle: Cycle) -> None:
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


async def _write_ips(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    plan: assigning.AssignmentPlan,
    quotas: Mapping[str, int | None],
    memory: PoolMemory,
    cycle: Cycle,
) -> None:
    """The write-ahead record of holders, before grants are sent."""
    del quotas, memory
    meta = body["metadata"]
    ips = [
        {"address": d.address, "pod": d.pod, "state": d.state.value, "listedOn": list(d.listed_on)}
        for d in plan.ips
    ]
    await ctx.client.patch_status(
        resources.SENDING_POOLS,
        name=meta["name"],
        namespace=meta.get("namespace"),
        status={"ips": ips},
    )
    cycle.writes += 1


async def _write_status(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    old: Mapping[str, Any],
    status: dict[str, Any],
    verdicts: Sequence[conditions.Verdict],
    now: datetime,
    cycle: Cycle,
) -> None:
    meta = body["metadata"]
    existing = conditions.parse_conditions(old.get("conditions"))
    merged = conditions.set_conditions(
        existing, verdicts, now=now, observed_generation=meta.get("generation")
    )
    new = dict(status)
    new["conditions"] = [dump_status(c) for c in merged]
    new["observedGeneration"] = meta.get("generation")
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
