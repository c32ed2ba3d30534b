"""The safety-critical loop of a SendingPool: who holds which egress IP (DESIGN.md §4).

Runs on its own kopf daemon, every half renewal interval, independent of gathering and
applying children (`sendingpool.reconcile_pool` hands it its decisions through
`PoolMemory.lease_inputs`). One step:
1. gathers the pool's `coordination.k8s.io/v1` Leases (from the watch index; when a read
   fails, the last known objects), pods and nodes (watch indexes: no API call);
2. decides holders with `assigning.plan_assignment`;
3. applies: a grant to a new holder is written to its Lease first, with a resourceVersion
   precondition and `leaseTransitions` + 1 (the fencing epoch); only a successful write lets
   the grant leave. Renewals go to the pods at once and their Lease writes run beside them,
   never before them: an API blip must not let the leases lapse.

Timing is on the operator's monotonic clock. A holder may send until the deadline recorded
when its last grant or renewal left (`request timeout + TTL + skew` later; shortened to
`answer + TTL + skew` once it answered). A Lease this process did not write is waited out
from the moment it was first seen, never from its `renewTime`. A pod that does not answer a
renewal is not renewed again (it may be frozen), so its IP moves at most one lease later.
An IP is never re-granted because its pod object vanished (a forced delete on a partitioned
node leaves the process running): only expiry or a confirmed release frees it.

Only the elected leader (`Context.leadership`) grants and renews; a new leader knows no
deadline and waits out every Lease it finds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from mailfleet_sender import units, wire

from mailfleet_operator import metrics
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import assigning, egress_attachment, ip_leases, usage_book
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import lease_records, pod_admin, pool_status
from mailfleet_operator.reconcile.pool_state import (
    Cycle,
    PoolMemory,
    World,
    endpoint_of,
    pod_view,
    run_calls,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LeaseInputs:
    """What the main cycle decided that the lease loop needs (the last good spec's view)."""

    name: str
    namespace: str
    spec: sp.SendingPoolSpec
    addresses: tuple[str, ...]
    elsewhere: Mapping[str, str]  # address -> "namespace/name" of the pool that owns it
    active: int
    leaving: frozenset[str]
    listed: Mapping[str, tuple[str, ...]]
    fenced: frozenset[str]
    frozen: bool
    allowed: tuple[str, ...]  # classes the IPs may carry now (breaker, pause)
    quotas: Mapping[str, int | None]
    requota: frozenset[str]  # IPs whose quota changed since the last step
    token: str
    chunking: usage_book.Chunking | None
    queued: frozenset[str] = frozenset()  # pods whose last stats showed queued mail
    status_ips: tuple[Mapping[str, Any], ...] = ()  # status.ips at the first cycle (upgrade)


@dataclasses.dataclass(frozen=True)
class Timing:
    ttl: float  # what a pod is told
    request_timeout: float
    skew: float
    renew_interval: float

    @property
    def lease_seconds(self) -> int:
        return ip_leases.lease_duration_seconds(self.ttl, self.request_timeout)


def timing_of(ctx: ctx_module.Context) -> Timing:
    s = ctx.settings
    return Timing(
        ttl=s.lease_duration,
        request_timeout=s.pod_admin_timeout,
        skew=s.lease_clock_skew,
        renew_interval=s.lease_renew_interval,
    )


leading = ctx_module.leading


async def renew_leases(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: World,
    memory: PoolMemory,
) -> float:
    """One step of the lease loop; returns the seconds until the next one."""
    period = max(ctx.settings.lease_renew_interval / 2, 0.2)
    async with memory.lease_lock:
        inputs: LeaseInputs | None = memory.lease_inputs
        if inputs is None or not leading(ctx):
            return period
        await _step(ctx, admin, body, world, memory, inputs)
    return period


async def _step(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: World,
    memory: PoolMemory,
    inputs: LeaseInputs,
) -> None:
    timing = timing_of(ctx)
    now, mono = ctx.clock.now(), ctx.clock.monotonic()
    spec = inputs.spec
    lease_settings = assigning.AssignmentSettings(
        lease_duration=timedelta(seconds=timing.ttl),
        renew_interval=timedelta(seconds=timing.renew_interval),
        unhealthy_after=units.parse_duration(spec.failover.unhealthy_after),
        drain_on_blocklist=spec.failover.drain_on_blocklist,
        one_ip_per_pod=not egress_attachment.binds_source(spec.egress.attachment.mode),
    )
    await lease_records.sync_leases(ctx, world, memory, inputs, mono, timing)
    pods_by_name = {p["metadata"]["name"]: p for p in world.pods}
    views = [
        pod_view(p, nodes=world.nodes, leaving=p["metadata"]["name"] in inputs.leaving)
        for p in world.pods
    ]
    assert memory.leases is not None
    planned_leases = {
        address: dataclasses.replace(
            lease, expires_at=now + timedelta(seconds=memory.deadlines.get(address, mono) - mono)
        )
        for address, lease in memory.leases.items()
    }
    plan = assigning.plan_assignment(
        assigning.AssignmentInput(
            ips=inputs.addresses,
            pods=views,
            leases=planned_leases,
            now=now,
            active_target=inputs.active,
            listed=inputs.listed,
            fenced=inputs.fenced,
            elsewhere=inputs.elsewhere,
            unresponsive=frozenset(p for p, n in memory.unanswered.items() if n > 0),
            queued=inputs.queued,
            settings=lease_settings,
        )
    )
    if inputs.frozen:
        plan = freeze(plan)
    if memory.seed_allowances:
        usage_book.seed_from_holders(memory, inputs.quotas)
    # Write-ahead: a grant leaves only once its Lease names the new holder.
    plan = await lease_records.record_grants(ctx, memory, inputs, plan, now, timing)
    if not egress_attachment.binds_source(spec.egress.attachment.mode):
        plan = await _label_holders(ctx, memory, plan, world.pods, mono)
    _post_ip_events(ctx, body, memory.plan, plan, memory)
    memory.plan = plan
    grace = min(ctx.settings.pod_admin_timeout, max(timing.renew_interval / 4, 0.1))
    failed = {n for n, h in plan.health.items() if h is assigning.PodHealth.FAILED}
    await run_calls(
        memory,
        [
            (
                f"assignment/{order.pod}",
                order.pod not in failed,
                functools.partial(
                    _send_assignment, ctx, admin, order, pods_by_name.get(order.pod),
                    inputs, memory, timing,
                ),
            )
            for order in plan.pods
            if order.send or inputs.requota.intersection(order.ips)
        ],
        grace=grace,
    )
    memory.leases = assigning.forget_dead_leases(
        memory.leases, pods=views, now=now, keep=inputs.addresses
    )
    for address in list(memory.deadlines):
        if address not in memory.leases:
            del memory.deadlines[address]
    await _drain(admin, plan, pods_by_name, spec.submission.admin_port, inputs.token, memory,
                 now, failed, grace)


def freeze(plan: assigning.AssignmentPlan) -> assigning.AssignmentPlan:
    """Reconciliation disabled: keep holders and renew their leases, change nothing else."""
    kept = tuple(
        dataclasses.replace(
            p, ips=tuple(a for a in p.ips if a not in p.granted), granted=(), revoked=()
        )
        for p in plan.pods
    )
    return dataclasses.replace(plan, pods=kept, drain=())


def _ip_view(plan: assigning.AssignmentPlan | None) -> dict[str, Any]:
    return {"ips": [
        {"address": d.address, "state": d.state.value, "pod": d.pod,
         "listedOn": list(d.listed_on)}
        for d in (plan.ips if plan is not None else ())
    ]}


def _post_ip_events(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    before: assigning.AssignmentPlan | None,
    after: assigning.AssignmentPlan,
    memory: PoolMemory,
) -> None:
    """An event per IP transition, as the lease loop sees it (the main cycle may never see a
    short Draining). Posted in the background: events never hold up a renewal."""
    cycle = Cycle()
    pool_status.ip_events(_ip_view(before), _ip_view(after), cycle)
    if not cycle.events:
        return

    async def post() -> None:
        for type_, reason, message in cycle.events:
            try:
                await asyncio.wait_for(
                    ctx.client.post_event(
                        regarding=body, type_=type_, reason=reason,
                        message=message,  # type: ignore[arg-type]
                    ),
                    timeout=ctx.settings.pod_admin_timeout * 4,
                )
            except (kube_client.ApiError, TimeoutError, OSError):
                pass  # events are best effort

    task = asyncio.create_task(post(), name="mailfleet-ip-events")
    memory.background.add(task)
    task.add_done_callback(memory.background.discard)


# --- the CNI's holder labels -------------------------------------------------------------------


async def _label_holders(
    ctx: ctx_module.Context,
    memory: PoolMemory,
    plan: assigning.AssignmentPlan,
    pods: Sequence[Mapping[str, Any]],
    mono: float,
) -> assigning.AssignmentPlan:
    """One label per IP on the pod whose traffic the CNI source-NATs to it. A pod keeps the
    label while its lease may be valid (even while the IP drains: its mail must still leave
    from that IP); a new holder gets it only with its grant, which the plan makes only once
    the old lease expired plus skew. A grant whose label did not land is withdrawn."""
    assert memory.leases is not None
    wanted: dict[str, set[str]] = {p["metadata"]["name"]: set() for p in pods}
    for address, lease in memory.leases.items():
        if not lease.released and memory.deadlines.get(address, mono) > mono:
            wanted.setdefault(lease.pod, set()).add(address)
    for order in plan.pods:
        wanted.setdefault(order.pod, set()).update(order.ips)
    failed: set[tuple[str, str]] = set()

    async def one(pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        held = wanted.get(meta["name"], set())
        patch: dict[str, str | None] = {}
        for address in held:
            key, value = egress_attachment.holder_label(address)
            if labels.get(key) != value:
                patch[key] = value
        for key in labels:
            if key.startswith(egress_attachment.HOLDER_LABEL_PREFIX) and key not in {
                egress_attachment.holder_label(a)[0] for a in held
            }:
                patch[key] = None
        if not patch:
            return
        try:
            await asyncio.wait_for(
                ctx.client.patch(
                    resources.PODS, name=meta["name"], namespace=meta.get("namespace"),
                    patch={"metadata": {"labels": patch}},
                ),
                timeout=ctx.settings.pod_admin_timeout,
            )
        except (kube_client.ApiError, TimeoutError, OSError):
            failed.update((meta["name"], a) for a in held)

    await asyncio.gather(*(one(p) for p in pods))
    return assigning.withdraw_grants(plan, failed)


# --- telling the pods ---------------------------------------------------------------------------


async def _send_assignment(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    order: assigning.PodAssignment,
    pod: Mapping[str, Any] | None,
    inputs: LeaseInputs,
    memory: PoolMemory,
    timing: Timing,
) -> None:
    assert memory.leases is not None
    spec = inputs.spec
    now, sent_at = ctx.clock.now(), ctx.clock.monotonic()
    # Record first: the request may land as late as its timeout, and the pod's TTL counts
    # from then. An earlier, longer deadline is never shortened here.
    intent = sent_at + timing.request_timeout + timing.ttl + timing.skew
    before = {a: memory.deadlines.get(a) for a in order.ips}
    for address in order.ips:
        lease = memory.leases.get(address)
        if lease is None or (lease.pod, lease.pod_uid) != (order.pod, order.pod_uid):
            memory.leases[address] = assigning.Lease(
                address=address, pod=order.pod, pod_uid=order.pod_uid, expires_at=datetime.min
            )
        elif lease.released:
            memory.leases[address] = dataclasses.replace(lease, released=False)
        memory.deadlines[address] = max(memory.deadlines.get(address, intent), intent)
    endpoint = endpoint_of(pod, spec.submission.admin_port) if pod is not None else None
    if endpoint is None:
        return
    by_address = {ip.address: ip for ip in spec.egress.ips}
    generation = max(memory.generations.get(order.pod, 0) + 1, int(now.timestamp() * 1000))
    memory.generations[order.pod] = generation
    leases = []
    day = memory.usage_day
    allowances: dict[str, int] = {}  # what each warming lease of this call lets the pod reach
    allowed = list(inputs.allowed)
    for address in order.ips:
        ip = by_address.get(address)
        if ip is None:
            continue
        quota = inputs.quotas.get(address)
        chunk = inputs.chunking.chunk(memory, address, quota) if inputs.chunking else None
        remaining, basis = usage_book.lease_quota(memory, address, order.pod, quota, chunk=chunk)
        if remaining is not None and basis is not None:
            allowances[address] = basis + remaining
        classes = allowed if ip.classes is None else [c for c in ip.classes if c in allowed]
        leases.append(
            wire.Lease(
                address=address,
                helo_name=ip.helo_name,
                ttl_seconds=timing.ttl,
                epoch=memory.epochs.get(address, 0),
                quota_remaining=remaining,
                sent_today_basis=basis,
                warmup=quota is not None,
                lease_id=f"{order.pod_uid[:8]}-{memory.epochs.get(address, 0)}",
                classes=None if classes == [c.name for c in spec.classes] else classes,
            )
        )
    try:
        answer = await admin.put_assignment(
            endpoint,
            wire.Assignment(generation=generation, leases=leases),
            token=inputs.token,
        )
    except pod_admin.PodUnreachable as error:
        if order.ips:
            memory.unanswered[order.pod] = memory.unanswered.get(order.pod, 0) + 1
        if not error.delivered:
            # Never reached the pod (its process is gone): this grant extends nothing.
            for address, deadline in before.items():
                if deadline is None:
                    memory.deadlines[address] = sent_at  # held nothing, ever
                else:
                    memory.deadlines[address] = deadline
        return
    answered_at = ctx.clock.monotonic()
    memory.unanswered.pop(order.pod, None)
    usage_book.fold_answer(memory, order.pod, answer, now)
    if memory.generations.get(order.pod) != generation:
        return  # answered late (a background call): a newer assignment has been sent since
    held = [lease.address for lease in answer.leases if lease.valid]
    usage_book.acknowledged(memory, order.pod, allowances, granted_day=day, answer_day=answer.day)
    held_set = set(held)
    for address in order.ips:
        if address in held_set:
            # The pod received it before it answered: its TTL ends before this.
            memory.deadlines[address] = answered_at + timing.ttl + timing.skew
            lease = memory.leases.get(address)
            if lease is not None and lease.inherited:
                memory.leases[address] = dataclasses.replace(lease, inherited=False)
    for address, lease in list(memory.leases.items()):
        if (lease.pod, lease.pod_uid) == (order.pod, order.pod_uid) and address not in held_set:
            memory.deadlines[address] = answered_at  # it says it does not hold it: not sending
            if address in order.ips:
                # Asked to keep it, it refused: its lease had run out (e.g. no leader for a
                # while) and a lapsed lease is never revived. Not a release: the IP goes
                # back to the same pod with a new grant (new epoch), its queue with it.
                memory.leases[address] = dataclasses.replace(lease, inherited=False)
            else:
                memory.leases[address] = dataclasses.replace(lease, released=True)
    lease_records.renew_lease_records(ctx, memory, inputs, order, held, now, timing)
    if order.granted:
        metrics.POOL_LEASE_GRANTS.inc(len(set(order.granted) & held_set))


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
    await run_calls(memory, calls, grace=grace)
