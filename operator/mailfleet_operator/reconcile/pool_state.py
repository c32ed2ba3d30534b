"""What one SendingPool's controllers share: per-pool memory, the gathered world, pod views,
and running admin calls to pods without letting a dead pod hold a cycle up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from mailfleet_sender import wire

from mailfleet_operator import metrics
from mailfleet_operator.api import domainauth as da
from mailfleet_operator.logic import assigning, autoscaling, reputation, usage_book
from mailfleet_operator.reconcile import pod_admin

EventType = Literal["Normal", "Warning"]


@dataclasses.dataclass
class PoolMemory(usage_book.UsageBook):
    """What the operator remembers about one pool between cycles (process memory).

    The main cycle (children, policy, status) and the lease loop each hold their own lock, so
    renewals never wait for a slow read of the main cycle; they share plain fields."""

    generations: dict[str, int] = dataclasses.field(default_factory=dict)  # pod -> last sent
    applied: dict[str, str] = dataclasses.field(default_factory=dict)  # child -> hash
    token: str | None = None
    submission: dict[str, str] | None = None  # the generated submission Secret's values
    stats: dict[str, wire.Stats] = dataclasses.field(default_factory=dict)
    kpis: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # pod -> /v1/stats
    # Secret name -> the keys it holds (None: missing), for spec.events and spec.tracking.
    event_secrets: dict[str, frozenset[str] | None] = dataclasses.field(default_factory=dict)
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
    # DomainAuth key Secret -> its private.pem as the API gives it (base64); what the pool's
    # DKIM Secret was last written with. Never logged.
    dkim_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    dkim_applied: dict[str, str] | None = None
    # Secret name -> the `data` last seen in the pool's generated Secrets (links, peers):
    # what a deleted one is created again with. Never logged.
    generated: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    # Admin calls to failed pods still running in the background ("kind/pod" -> task).
    inflight: dict[str, asyncio.Task[Any]] = dataclasses.field(default_factory=dict)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    # --- the lease loop (pool_leases) ---
    lease_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    lease_inputs: Any = None  # pool_leases.LeaseInputs, set by the main cycle
    plan: assigning.AssignmentPlan | None = None  # the lease loop's last plan
    # address -> the monotonic time (operator clock) until which its holder may send.
    deadlines: dict[str, float] = dataclasses.field(default_factory=dict)
    # address -> the Lease object as last read or written (the source of resourceVersions).
    lease_objects: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # address -> the fencing epoch last written to its Lease (leaseTransitions).
    epochs: dict[str, int] = dataclasses.field(default_factory=dict)
    # Fire-and-forget tasks (events of the lease loop), kept referenced until done.
    background: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    # The last spec the operator accepted and its generation: what runs while a newer one is
    # refused (`sendingpool._refusal`).
    good: tuple[Any, int | None] | None = None
    # Children the pool may not write (someone else's object has the name), as reported.
    clashes: set[str] = dataclasses.field(default_factory=set)
    # child -> (digest, field) the API server's answer to our apply had otherwise (normalized).
    normalized: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # "pod/path" of each corrupt database a pod set aside that an Event already reported.
    quarantines: set[str] = dataclasses.field(default_factory=set)
    # pod -> renewals in a row it did not answer (it may be frozen: stop extending its leases).
    unanswered: dict[str, int] = dataclasses.field(default_factory=dict)


MEMORY: dict[tuple[int, str], PoolMemory] = {}
"""(operator instance, pool uid) -> memory. The instance is its API client: two operators
in one process (tests) never share a pool's memory."""


def memory_for(uid: str, owner: object) -> PoolMemory:
    return MEMORY.setdefault((id(owner), uid), PoolMemory())


def forget(uid: str | None = None, owner: object | None = None) -> None:
    """Drop a pool's memory (all instances'), or everything of one operator instance."""
    for key in list(MEMORY):
        if (uid is None or key[1] == uid) and (owner is None or key[0] == id(owner)):
            del MEMORY[key]
    publish_ip_states()


def publish_ip_states() -> None:
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
    # The pool's coordination Leases (one per IP); None: list them from the API.
    leases: Sequence[Mapping[str, Any]] | None = None
    # Every SendingPool the operator serves, for "an IP is in at most one pool"; None: only
    # this one.
    pools: Sequence[Mapping[str, Any]] | None = None
    # The pool's namespaced children as watched, by (kind, name); None: read them from the
    # API (a child the watch does not show is read too).
    children: Mapping[tuple[str, str], Mapping[str, Any]] | None = None


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def node_ready(node: Mapping[str, Any] | None) -> bool:
    if node is None:
        return False
    cond = condition(node, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_view(
    pod: Mapping[str, Any], *, nodes: Mapping[str, Mapping[str, Any]], leaving: bool
) -> assigning.PodView:
    meta = pod["metadata"]
    ready_cond = condition(pod, "Ready")
    ready = ready_cond is not None and ready_cond.get("status") == "True"
    since = None
    if not ready:
        since = parse_time((ready_cond or {}).get("lastTransitionTime")) or parse_time(
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


@dataclasses.dataclass
class Cycle:
    """Per-cycle scratch: events to post and whether anything was written."""

    events: list[tuple[EventType, str, str]] = dataclasses.field(default_factory=list)
    writes: int = 0

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


async def run_calls(
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
        task.add_done_callback(functools.partial(call_done, memory, key))
        (patient if waits else impatient).append(task)
    waiting = [asyncio.wait(patient)] if patient else []
    if impatient:
        waiting.append(asyncio.wait(impatient, timeout=grace))
    await asyncio.gather(*waiting)
    for task in patient:
        task.result()  # a patient call's error is the cycle's error


def call_done(memory: PoolMemory, key: str, task: asyncio.Task[None]) -> None:
    if memory.inflight.get(key) is task:
        del memory.inflight[key]
    if not task.cancelled() and task.exception() is not None:
        pass  # retrieved: a background call's failure only means "try again next cycle"
