"""Reading and writing a pool's IP Leases (`coordination.k8s.io/v1`) for the lease loop.

Every write carries the resourceVersion it was computed from, so a concurrent writer makes it
fail (409) instead of being overwritten; the Lease is then re-read and the next step decides
again. Grants are written before they leave; renewals and releases are written beside the
pods' renewals, in the background, so the API's health never decides whether a lease lapses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import assigning, ip_leases
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile.pool_state import PoolMemory, World

if TYPE_CHECKING:
    from mailfleet_operator.reconcile.pool_leases import LeaseInputs, Timing

log = logging.getLogger(__name__)


async def sync_leases(
    ctx: ctx_module.Context,
    world: World,
    memory: PoolMemory,
    inputs: LeaseInputs,
    mono: float,
    timing: Timing,
) -> None:
    """Fold the Lease objects into the lease records. A holder we did not record (restart,
    new leader, another writer) may send until its Lease's duration plus skew from now."""
    objects: Sequence[Mapping[str, Any]] | None = world.leases
    if objects is None:
        try:
            objects = await asyncio.wait_for(
                ctx.client.list(
                    resources.LEASES,
                    namespace=inputs.namespace,
                    label_selector=f"{ip_leases.POOL_LABEL}={inputs.name}",
                ),
                timeout=ctx.settings.pod_admin_timeout,
            )
        except (kube_client.ApiError, TimeoutError, OSError) as error:
            log.debug("lease list failed; using the last known Leases", extra={"error": str(error)})
            objects = None
    if objects is not None:
        for obj in objects:
            lease = ip_leases.read_lease(obj)
            if lease is None or lease.pool != inputs.name:
                continue
            known = memory.lease_objects.get(lease.address)
            if known is None or _newer(obj, known):
                memory.lease_objects[lease.address] = dict(obj)
    first = memory.leases is None
    records: dict[str, assigning.Lease] = dict(memory.leases or {})
    for address, obj in memory.lease_objects.items():
        lease = ip_leases.read_lease(obj)
        if lease is None:
            continue
        # The epoch the pods know: a new leader must renew with it, not from zero.
        memory.epochs[address] = max(memory.epochs.get(address, 0), lease.epoch)
        mine = records.get(address)
        if lease.holder is None:
            if mine is not None and not mine.released and address not in memory.deadlines:
                records[address] = dataclasses.replace(mine, released=True)
            continue
        pod, uid = lease.holder
        if mine is not None and (mine.pod, mine.pod_uid) == (pod, uid) and (
            address in memory.deadlines or mine.released
        ):
            continue  # our own record (its deadline is exact), or a release the pod confirmed
        records[address] = assigning.Lease(
            address=address, pod=pod, pod_uid=uid, expires_at=datetime.min, inherited=True
        )
        memory.deadlines[address] = max(
            memory.deadlines.get(address, mono), mono + lease.duration + timing.skew
        )
    if first:
        # Upgrade from a release that kept holders in status.ips: honour them too.
        for entry in inputs.status_ips:
            recorded, holder = entry.get("address"), entry.get("pod")
            if not recorded or not holder or recorded in records:
                continue
            records[recorded] = assigning.Lease(
                address=recorded, pod=holder, pod_uid="", expires_at=datetime.min,
                inherited=True,
            )
            memory.deadlines[recorded] = mono + timing.lease_seconds + timing.skew
        memory.seed_allowances = True
    memory.leases = records


def _newer(candidate: Mapping[str, Any], known: Mapping[str, Any]) -> bool:
    """Whether an indexed Lease is newer than the one we hold (our own write may be ahead of
    the watch). resourceVersions are opaque, but etcd's are integers; when they are not, the
    index wins (a stale write then fails on its precondition and is re-read)."""
    a = str((candidate.get("metadata") or {}).get("resourceVersion") or "")
    b = str((known.get("metadata") or {}).get("resourceVersion") or "")
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


async def _write_lease(
    ctx: ctx_module.Context,
    memory: PoolMemory,
    inputs: LeaseInputs,
    address: str,
    *,
    holder: tuple[str, str] | None,
    new_epoch: bool,
    now: datetime,
    timing: Timing,
) -> bool:
    """Create or update the IP's Lease with a resourceVersion precondition; True if it
    landed. A conflict re-reads the Lease (the next step decides again)."""
    known = memory.lease_objects.get(address)
    current = ip_leases.read_lease(known) if known is not None else None
    epoch = current.epoch if current is not None else memory.epochs.get(address, 0)
    if new_epoch:
        epoch += 1
    acquired = None
    if current is not None and current.holder == holder and not new_epoch and known is not None:
        acquired_text = (known.get("spec") or {}).get("acquireTime")
        acquired = _parse_micro(acquired_text)
    body = ip_leases.build_lease(
        address=address,
        namespace=inputs.namespace,
        pool=inputs.name,
        holder=holder,
        duration=timing.lease_seconds,
        epoch=epoch,
        now=now,
        acquired=acquired,
        resource_version=current.resource_version if current is not None else None,
    )
    name = body["metadata"]["name"]
    timeout = ctx.settings.pod_admin_timeout
    try:
        if current is None:
            written = await asyncio.wait_for(
                ctx.client.create(resources.LEASES, namespace=inputs.namespace, body=body),
                timeout=timeout,
            )
        else:
            patch = {"metadata": body["metadata"], "spec": {
                "holderIdentity": None, "renewTime": None, "acquireTime": None, **body["spec"]
            }}
            written = await asyncio.wait_for(
                ctx.client.patch(
                    resources.LEASES, name=name, namespace=inputs.namespace, patch=patch
                ),
                timeout=timeout,
            )
    except kube_client.Conflict:
        try:
            fresh = await asyncio.wait_for(
                ctx.client.get(resources.LEASES, name=name, namespace=inputs.namespace),
                timeout=timeout,
            )
        except (kube_client.ApiError, TimeoutError, OSError):
            return False
        if fresh is not None:
            memory.lease_objects[address] = fresh
        return False
    except (kube_client.ApiError, TimeoutError, OSError) as error:
        log.warning(
            "lease write failed",
            extra={"lease": name, "namespace": inputs.namespace, "error": str(error)},
        )
        return False
    memory.lease_objects[address] = written
    memory.epochs[address] = epoch
    return True


def _parse_micro(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


async def record_grants(
    ctx: ctx_module.Context,
    memory: PoolMemory,
    inputs: LeaseInputs,
    plan: assigning.AssignmentPlan,
    now: datetime,
    timing: Timing,
) -> assigning.AssignmentPlan:
    """Write each new holder to its Lease; a grant whose write did not land is withdrawn from
    the plan (the IP waits for the next step: no grant without its record)."""
    refused: set[tuple[str, str]] = set()
    for order in plan.pods:
        if not order.granted:
            continue
        results = await asyncio.gather(*(
            _write_lease(
                ctx, memory, inputs, address, holder=(order.pod, order.pod_uid),
                new_epoch=True, now=now, timing=timing,
            )
            for address in order.granted
        ))
        refused |= {(order.pod, a) for a, ok in zip(order.granted, results, strict=True) if not ok}
    return assigning.withdraw_grants(plan, refused)


def renew_lease_records(
    ctx: ctx_module.Context,
    memory: PoolMemory,
    inputs: LeaseInputs,
    order: assigning.PodAssignment,
    held: Sequence[str],
    now: datetime,
    timing: Timing,
) -> None:
    """After a pod answered: its held IPs' Leases get a new renewTime, the IPs it no longer
    holds are released (so the next leader need not wait them out). In the background:
    nothing waits for the API here."""
    held_set = set(held)
    calls: list[tuple[str, tuple[str, str] | None]] = []
    for address in order.ips:
        if address in held_set and address not in order.granted:
            calls.append((address, (order.pod, order.pod_uid)))
    for address, lease in (memory.leases or {}).items():
        if lease.pod == order.pod and address not in held_set and address not in order.ips:
            obj = memory.lease_objects.get(address)
            current = ip_leases.read_lease(obj) if obj is not None else None
            if current is not None and current.holder == (order.pod, order.pod_uid):
                calls.append((address, None))
    for address, holder in calls:
        key = f"lease/{address}"
        running = memory.inflight.get(key)
        if running is not None and not running.done():
            continue
        task = asyncio.create_task(
            _write_lease(ctx, memory, inputs, address, holder=holder, new_epoch=False,
                         now=now, timing=timing),
            name=f"mailfleet-{key}",
        )
        memory.inflight[key] = task
        task.add_done_callback(functools.partial(_forget_task, memory, key))


def _forget_task(memory: PoolMemory, key: str, task: asyncio.Task[Any]) -> None:
    if memory.inflight.get(key) is task:
        del memory.inflight[key]
    if not task.cancelled():
        task.exception()  # retrieved; a failed write is retried on the next renewal
