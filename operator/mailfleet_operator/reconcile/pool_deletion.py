"""A deleted SendingPool drains before it goes: gather, evaluate (`logic.pool_deletion`),
apply (DESIGN.md §4; docs/sendingpool.md "What deletion does").

kopf keeps the operator's finalizer on the pool while its delete handler runs, and stops the
pool's daemons (main cycle and lease loop) first. So one step here does what those loops did
that still matters:
1. gathers the pool (fresh: a person's annotation must be seen), its pods' `/v1/stats`, its
   spool volumes and the StatefulSet's replicas;
2. decides with `logic.pool_deletion.decide_deletion`;
3. applies: every pod stops intake (drain without hand-off: every peer is leaving too), a pod
   comes back for a spool volume without one, the IP leases are renewed (mail must still
   leave from them), and the `Deleting` condition says what is left. When the decision is
   to finish, the pods give their IPs back (a confirmed release), and a confirmed empty
   spool's volumes are deleted; the handler then lets kopf remove the finalizer.

A pod drained here reports itself unready (Services stop sending it mail), so for the lease
plan it counts as ready while it answers: unready-for-`unhealthyAfter` would otherwise move
its IPs away from the very mail they must carry.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from mailfleet_sender import units, wire
from pydantic import ValidationError

from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    children,
    conditions,
    pool_deletion,
    submission_access,
    usage_book,
)
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import pod_admin, pool_leases, pool_policy, pool_status
from mailfleet_operator.reconcile.pool_state import (
    Cycle,
    PoolMemory,
    World,
    endpoint_of,
    memory_for,
    parse_time,
)

log = logging.getLogger(__name__)

SPOOL_VOLUME = "spool"  # the StatefulSet's volumeClaimTemplate: PVCs spool-<pool>-<ordinal>


@dataclasses.dataclass(frozen=True)
class Step:
    finished: bool
    requeue_after: float
    decision: pool_deletion.DeletionDecision | None = None


async def drain_until_done(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: Callable[[], World],
) -> None:
    """Step until the pool may go. One long handler run rather than kopf retries: a retry is
    an ERROR line every half lease interval for as long as a drain lasts. Cancelled when the
    operator stops (the finalizer stays; the next operator resumes here)."""
    meta = body["metadata"]
    current: Mapping[str, Any] | None = body
    period = max(ctx.settings.lease_renew_interval / 2, 0.2)
    while current is not None:
        try:
            step = await reconcile_deletion(ctx, admin, current, world())
        except (kube_client.ApiError, OSError, TimeoutError) as error:
            # Not a kopf retry (its back-off would leave the leases unrenewed): next step.
            log.warning("pool deletion step failed", extra={
                "pool": meta["name"], "namespace": meta.get("namespace"), "error": str(error)})
            step = Step(finished=False, requeue_after=period)
        if step.finished:
            return
        await asyncio.sleep(step.requeue_after)
        try:
            current = await ctx.client.get(
                resources.SENDING_POOLS, name=meta["name"], namespace=meta.get("namespace")
            )
        except kube_client.ApiError:
            pass  # keep the last body: the drain and the renewals must go on


async def reconcile_deletion(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: World,
) -> Step:
    """One step of a deleted pool's drain. Only the elected leader acts."""
    period = max(ctx.settings.lease_renew_interval / 2, 0.2)
    if not ctx_module.leading(ctx):
        return Step(finished=False, requeue_after=max(period, ctx_module.FOLLOWER_DELAY))
    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace") or "default"
    memory = memory_for(meta["uid"], ctx.client)
    now = ctx.clock.now()
    spec = _spec(body, memory)

    # --- gather ---------------------------------------------------------------------------
    token = memory.token or children.admin_token(
        await ctx.client.get(
            resources.SECRETS, name=children.Names(name).admin_secret, namespace=namespace
        )
    )
    memory.token = token or None
    port = spec.submission.admin_port if spec is not None else sp.Submission().admin_port
    stats = await _read_stats(admin, world.pods, port, token)
    # The leases first: a slow or failing API read below must not let them lapse.
    draining = {n for n, s in stats.items() if s.draining}
    lease_world = dataclasses.replace(
        world, pods=[_ready(p) if p["metadata"]["name"] in draining else p for p in world.pods],
    )
    if spec is not None:
        await _renew(ctx, admin, body, lease_world, memory, spec, token, release=False)
    sts = await ctx.client.get(resources.STATEFUL_SETS, name=name, namespace=namespace)
    replicas = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
    volumes = await _spool_volumes(ctx, namespace, name)
    timeout = units.parse_duration(
        spec.deletion.drain_timeout if spec is not None else sp.Deletion().drain_timeout
    )
    wanted = spec.deletion.handoff_to if spec is not None else None
    target, handoff = (
        await _handoff_target(ctx, namespace, name, wanted) if wanted else (None, None)
    )

    # --- evaluate -------------------------------------------------------------------------
    decision = pool_deletion.decide_deletion(
        pool_deletion.DeletionInput(
            started=parse_time(meta.get("deletionTimestamp")) or now,
            now=now,
            drain_timeout=timeout,
            annotations=meta.get("annotations") or {},
            pods=[_queue_of(p["metadata"]["name"], stats.get(p["metadata"]["name"]))
                  for p in world.pods],
            volumes=sorted(volumes),
            replicas=replicas,
            handoff=handoff,
        )
    )

    # --- apply ----------------------------------------------------------------------------
    if decision.replicas is not None and sts is not None:
        await ctx.client.patch(
            resources.STATEFUL_SETS, name=name, namespace=namespace,
            patch={"spec": {"replicas": decision.replicas}},
        )
    await _drain(admin, world.pods, decision.drain, port, token,
                 target if decision.handoff else None)
    if spec is not None and decision.finish:
        await _renew(ctx, admin, body, lease_world, memory, spec, token, release=True)
    await _report(ctx, body, decision, now)
    if not decision.finish:
        return Step(finished=False, requeue_after=period, decision=decision)
    if decision.delete_volumes:
        for volume in sorted(volumes.values()):
            await ctx.client.delete(
                resources.PERSISTENT_VOLUME_CLAIMS, name=volume, namespace=namespace
            )
    log.info(
        "pool deletion goes ahead",
        extra={"pool": name, "namespace": namespace, "phase": decision.phase.value,
               "left": pool_deletion.describe(decision.remaining)},
    )
    return Step(finished=True, requeue_after=0.0, decision=decision)


def _spec(body: Mapping[str, Any], memory: PoolMemory) -> sp.SendingPoolSpec | None:
    """The pool's spec; the last good one when the current one is refused (a bad edit must
    not stop the drain); None when there is neither (the pods are still drained, but no
    lease is renewed on a spec nobody validated)."""
    try:
        return sp.SendingPoolSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        inputs: pool_leases.LeaseInputs | None = memory.lease_inputs
        return inputs.spec if inputs is not None else None


async def _read_stats(
    admin: pod_admin.PodAdmin, pods: Sequence[Mapping[str, Any]], port: int, token: str
) -> dict[str, wire.Stats]:
    async def one(pod: Mapping[str, Any]) -> tuple[str, wire.Stats | None]:
        endpoint = endpoint_of(pod, port)
        if endpoint is None:
            return pod["metadata"]["name"], None
        try:
            return endpoint.name, await admin.get_stats(endpoint, token=token)
        except pod_admin.PodUnreachable:
            return endpoint.name, None

    answers = await asyncio.gather(*(one(p) for p in pods))
    return {name: s for name, s in answers if s is not None}


def _queue_of(name: str, stats: wire.Stats | None) -> pool_deletion.PodQueue:
    if stats is None:
        return pool_deletion.PodQueue(name)
    queued = sum(q.depth + q.held for q in stats.queues.values()) + stats.handoff.pending
    if stats.handoff.state == "running" and queued == 0:
        # A hand-off (from a scale-down or a failover) is still settling: not known empty.
        return pool_deletion.PodQueue(name, draining=stats.draining, queued=None)
    return pool_deletion.PodQueue(name, draining=stats.draining, queued=queued)


async def _spool_volumes(ctx: ctx_module.Context, namespace: str, name: str) -> dict[int, str]:
    """Ordinal -> PVC name of the pool's spool volumes (whether or not a pod uses them)."""
    prefix = f"{SPOOL_VOLUME}-{children.Names(name).statefulset}-"
    claims = await ctx.client.list(
        resources.PERSISTENT_VOLUME_CLAIMS, namespace=namespace,
        label_selector=f"{children.POOL_LABEL}={name}",
    )
    found: dict[int, str] = {}
    for claim in claims:
        claim_name = claim["metadata"]["name"]
        tail = claim_name[len(prefix):]
        if claim_name.startswith(prefix) and tail.isdigit():
            found[int(tail)] = claim_name
    return found


async def _drain(
    admin: pod_admin.PodAdmin,
    pods: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    port: int,
    token: str,
    target: wire.HandoffTarget | None,
) -> None:
    """Stop intake; the pod delivers its queue, or hands it to `target` (idempotent)."""
    by_name = {p["metadata"]["name"]: p for p in pods}

    async def one(name: str) -> None:
        pod = by_name.get(name)
        endpoint = endpoint_of(pod, port) if pod is not None else None
        if endpoint is None:
            return
        try:
            await admin.drain(endpoint, token=token, handoff=target is not None, target=target)
        except pod_admin.PodUnreachable:
            pass  # asked again next step

    await asyncio.gather(*(one(n) for n in names))


async def _handoff_target(
    ctx: ctx_module.Context, namespace: str, name: str, other: str
) -> tuple[wire.HandoffTarget | None, pool_deletion.HandoffTarget]:
    """The pods of the `handoffTo` pool that take mail now (its serving pods: those its
    client Service routes submissions to) and its submission API key; or why not."""

    def problem(text: str) -> tuple[None, pool_deletion.HandoffTarget]:
        return None, pool_deletion.HandoffTarget(other, problem=text)

    if other == name:
        return problem("it is this pool")
    body = await ctx.client.get(resources.SENDING_POOLS, name=other, namespace=namespace)
    if body is None:
        return problem("no such pool in the namespace")
    if body["metadata"].get("deletionTimestamp"):
        return problem("it is being deleted too")
    try:
        spec = sp.SendingPoolSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return problem("its spec is invalid")
    pods = await ctx.client.list(
        resources.PODS, namespace=namespace, label_selector=f"{children.POOL_LABEL}={other}"
    )
    ready = [p for p in pods if _is_ready(p) and (p.get("status") or {}).get("podIP")
             and not p["metadata"].get("deletionTimestamp")]
    serving = [p for p in ready
               if (p["metadata"].get("labels") or {}).get(children.SERVING_LABEL) == "true"]
    chosen = serving or ready
    if not chosen:
        return problem("it has no Ready pod")
    api_key: str | None = None
    # Its own key Secret, else its generated one: what its submission listener accepts.
    access = submission_access.credentials(spec, other)
    if access.api_key_secret is not None:
        secret = await ctx.client.get(
            resources.SECRETS, name=access.api_key_secret, namespace=namespace
        )
        api_key = _secret_value(secret, access.api_key_key)
        if not api_key:
            return problem(f"its API key (Secret {access.api_key_secret}) cannot be read")
    port = spec.submission.http.port
    urls = sorted(pod_admin.PodEndpoint(p["metadata"]["name"], p["status"]["podIP"], port)
                  .base_url for p in chosen)
    return wire.HandoffTarget(urls=urls, api_key=api_key), pool_deletion.HandoffTarget(other)


def _secret_value(secret: Mapping[str, Any] | None, key: str) -> str | None:
    if secret is None:
        return None
    raw = (secret.get("data") or {}).get(key)
    if raw is not None:
        try:
            return base64.b64decode(raw).decode().strip() or None
        except (ValueError, UnicodeDecodeError):
            return None
    text = (secret.get("stringData") or {}).get(key)
    return str(text).strip() or None if text is not None else None


def _is_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _ready(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The pod as the lease plan should see it: drained on purpose, so not failed."""
    status = dict(pod.get("status") or {})
    kept = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
    status["conditions"] = [*kept, {"type": "Ready", "status": "True"}]
    return {**pod, "status": status}


async def _renew(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    world: World,
    memory: PoolMemory,
    spec: sp.SendingPoolSpec,
    token: str,
    *,
    release: bool,
) -> None:
    """One lease step, as the (stopped) lease loop would. With `release`, the pool holds no
    IP any more: the pods are told so, and the Leases they confirm are released."""
    inputs: pool_leases.LeaseInputs | None = memory.lease_inputs
    if inputs is None:
        inputs = await _inputs_after_restart(ctx, body, world, memory, spec, token)
        memory.lease_inputs = inputs
    if release:
        memory.lease_inputs = dataclasses.replace(inputs, addresses=(), active=0)
    await pool_leases.renew_leases(ctx, admin, body, world, memory)
    if release:
        # The release is confirmed by the pods' answers, one step later; its Lease writes run
        # in the background, and the pool's memory goes with it: wait for them here.
        await pool_leases.renew_leases(ctx, admin, body, world, memory)
        writes = [t for key, t in memory.inflight.items() if key.startswith("lease/")]
        await asyncio.gather(*writes, return_exceptions=True)


async def _inputs_after_restart(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    world: World,
    memory: PoolMemory,
    spec: sp.SendingPoolSpec,
    token: str,
) -> pool_leases.LeaseInputs:
    """The lease loop's inputs when no main cycle ran in this process (the operator restarted
    during the drain): the spec's IPs on the pods there are, with today's warm-up quotas (an
    unknown quota is 0, never unlimited) and the breaker's paused classes."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace") or "default"
    annotations = meta.get("annotations") or {}
    memory.quotas = await pool_policy.read_warmup_quotas(ctx, namespace, name, world.warmups)
    breaker = pool_policy.run_breaker(spec, annotations, memory, ctx.clock.now())
    paused = spec.paused or breaker.pool_paused
    settings = ctx.settings
    return pool_leases.LeaseInputs(
        name=name,
        namespace=namespace,
        spec=spec,
        addresses=tuple(ip.address for ip in spec.egress.ips),
        elsewhere={},
        active=max(len(world.pods) - spec.standby_replicas, 0),
        leaving=frozenset(),
        listed={},
        fenced=frozenset(),
        frozen=False,
        allowed=() if paused else tuple(
            c.name for c in spec.classes if c.name not in breaker.paused_classes
        ),
        quotas=dict(memory.quotas),
        requota=frozenset(),
        token=token,
        chunking=usage_book.Chunking(
            fixed=None if settings.warmup_quota_chunk == "auto" else settings.warmup_quota_chunk,
            day_seconds=settings.warmup_day_seconds or 86400.0,
            renew_interval=settings.lease_renew_interval,
        ),
    )


async def _report(
    ctx: ctx_module.Context,
    body: Mapping[str, Any],
    decision: pool_deletion.DeletionDecision,
    now: datetime,
) -> None:
    """`Deleting` (True while the pool waits) and `Ready` say what is left; an event when the
    phase changes. Best effort: the drain does not wait for a status write."""
    old = dict(body.get("status") or {})
    verdicts = [
        conditions.Verdict(pool_deletion.DELETING, not decision.finish, decision.phase.value,
                           decision.message),
        conditions.Verdict(sp.READY, False, decision.phase.value, decision.message),
    ]
    before: Mapping[str, Any] = next(
        (c for c in old.get("conditions") or [] if c.get("type") == pool_deletion.DELETING), {}
    )
    cycle = Cycle()
    try:
        # A deleting pool drains on the spec it has; no new generation is acted on.
        await pool_status.write_status(ctx, body, old, {}, verdicts, now, cycle,
                                       acted_on=old.get("observedGeneration"))
    except kube_client.ApiError:
        return
    if before.get("reason") != decision.phase.value:
        warning = decision.phase in (pool_deletion.Phase.TIMED_OUT,
                                     pool_deletion.Phase.ABANDONED)
        try:
            await ctx.client.post_event(
                regarding=body, type_="Warning" if warning else "Normal",
                reason=decision.phase.value,
                message=decision.message,  # type: ignore[arg-type]
            )
        except kube_client.ApiError:
            pass

