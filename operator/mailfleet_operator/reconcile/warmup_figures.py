"""What the IPWarmup controller knows of its IPs' sends: the pool's pods' `/v1/stats`, kept in
this process per warm-up as the highest counts seen per IP, sender day and pod.

Counters reset when a sender's day rolls over and a pod may vanish, so the figures a day is
judged on are the high-water marks remembered here, not the last reading. After a restart
the memory is seeded once from what status persisted (`ips[].usage`), so a restart forgets
nothing the operator had seen.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mailfleet_sender import wire

from mailfleet_operator.api import ipwarmup as ipw
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import children, warmup_checks, warmup_progress
from mailfleet_operator.reconcile import context as ctx_module
from mailfleet_operator.reconcile import pod_admin
from mailfleet_operator.reconcile import pool_state as pool_reconcile


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


def memory_for(uid: str) -> WarmupMemory:
    return MEMORY.setdefault(uid, WarmupMemory())


def remember(
    memory: WarmupMemory,
    readings: Sequence[warmup_progress.PodReading],
    *,
    persisted: Sequence[ipw.IPProgress],
    keep_from_day: int,
) -> None:
    """Fold fresh readings into the high-water marks, and on the first cycle of this process
    the ones status persisted too (highest wins, so their order does not matter)."""
    if not memory.seeded:
        readings = warmup_progress.readings_from_usage(persisted) + list(readings)
        memory.seeded = True
    memory.counts = warmup_progress.merge_readings(
        memory.counts, readings, keep_from_day=keep_from_day
    )


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


async def read_stats(
    ctx: ctx_module.Context,
    admin: pod_admin.PodAdmin,
    body: Mapping[str, Any],
    pool: warmup_checks.Pool,
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
    port = pool.spec.submission.admin_port
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
        answers[name] = warmup_progress.answer_of(stats)
        readings.extend(warmup_progress.readings_from_stats(name, stats, wanted=wanted))
    return readings, [str(p["metadata"]["name"]) for p in pods], answers
