"""Deciding which pod holds which egress IP, and when an IP may move (pure, no I/O).

An egress IP is held through a *lease* the operator grants to one pod at a time. The sender
stops using an IP the moment its lease runs out (self-fencing), so the operator only has to
be careful about one thing: never grant an IP while another pod may still hold a valid lease
on it. An IP therefore moves only once the old holder confirmed the release, or its lease
expired by the operator's (conservative) clock. A vanished pod object proves nothing: a
forced delete on a partitioned node leaves the process running, still sending.

`plan_assignment` is level-based: it reads the whole picture (IPs, pods, current leases,
DNSBL listings, fenced IPs, the clock) and returns the desired picture plus what to tell
each pod. The reconciler applies it, records the leases and calls this again next cycle.
Assignments are sticky: a healthy holder keeps its IPs; a pod that comes back after a
failover is a spare, so nothing flaps back.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class IPState(enum.StrEnum):
    """Per-IP states shown in `status.ips[].state` (DESIGN.md §2)."""

    ACTIVE = "Active"  # held by a pod that may send on it
    STANDBY = "Standby"  # clean and free, waiting for a first ready pod
    DRAINING = "Draining"  # leaving its holder; not granted elsewhere until released
    BLOCKLISTED = "Blocklisted"  # listed on a DNSBL: no traffic until delisted
    UNASSIGNED = "Unassigned"  # fenced by hand, or no healthy pod can take it


class PodHealth(enum.StrEnum):
    HEALTHY = "Healthy"
    SUSPECT = "Suspect"  # unready for less than unhealthyAfter: keeps its IPs for now
    FAILED = "Failed"  # unready too long, on a NotReady node, or terminating
    LEAVING = "Leaving"  # healthy but being removed by a scale-down


@dataclass(frozen=True)
class PodView:
    """What the operator knows about one pod of the pool."""

    name: str
    uid: str
    ordinal: int
    ready: bool
    # When the Ready condition last became False (None while ready; for a pod that never was
    # ready, its creation time).
    unready_since: datetime | None = None
    node_ready: bool = True
    terminating: bool = False
    leaving: bool = False


@dataclass(frozen=True)
class Lease:
    """The operator's record of one IP lease.

    `expires_at` is the operator's conservative bound: no earlier than the sender's own
    expiry (the reconciler adds the request time and a skew margin)."""

    address: str
    pod: str
    pod_uid: str
    expires_at: datetime
    released: bool = False  # the pod acknowledged an assignment without this IP
    # Found in the API, not granted by this process (a restart, a new leader): when the pod's
    # own lease ends is unknown, so a healthy holder is renewed at once.
    inherited: bool = False


@dataclass(frozen=True)
class AssignmentSettings:
    lease_duration: timedelta = timedelta(seconds=15)
    renew_interval: timedelta = timedelta(seconds=5)
    unhealthy_after: timedelta = timedelta(seconds=5)
    drain_on_blocklist: bool = True
    rebalance: bool = True
    # A CNI source-NATs a whole pod: a pod holding two IPs would send from either. Then a
    # pod holds at most one IP, and an IP waits rather than double up.
    one_ip_per_pod: bool = False


@dataclass(frozen=True)
class AssignmentInput:
    ips: Sequence[str]
    pods: Sequence[PodView]
    leases: Mapping[str, Lease]
    now: datetime
    active_target: int  # how many pods should hold IPs (spec replicas, not standbys)
    listed: Mapping[str, Sequence[str]] = field(default_factory=dict)  # ip -> DNSBL zones
    fenced: frozenset[str] = frozenset()
    # address -> "namespace/name" of an older pool that names the same IP: never ours.
    elsewhere: Mapping[str, str] = field(default_factory=dict)
    # Pods that did not answer their last renewal (frozen, partitioned): not renewed again.
    unresponsive: frozenset[str] = frozenset()
    # Pods that reported accepted mail in their queues at the last stats read.
    queued: frozenset[str] = frozenset()
    settings: AssignmentSettings = AssignmentSettings()


@dataclass(frozen=True)
class IPDecision:
    address: str
    state: IPState
    pod: str | None  # the holder (or the pod still releasing it), None when unheld
    reason: str
    listed_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodAssignment:
    """The full set of IPs a pod should hold after this cycle.

    `send` says whether to PUT it now: because the set changed, or a lease is due for
    renewal, or a revoke has not been confirmed yet."""

    pod: str
    pod_uid: str
    ips: tuple[str, ...]
    send: bool
    granted: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()


@dataclass(frozen=True)
class AssignmentPlan:
    ips: tuple[IPDecision, ...]
    pods: tuple[PodAssignment, ...]
    drain: tuple[str, ...]  # pods to ask to drain with hand-off (best effort)
    health: Mapping[str, PodHealth]
    failing_over: bool
    degraded_reasons: tuple[str, ...]

    def holder(self, address: str) -> str | None:
        for decision in self.ips:
            if decision.address == address:
                return decision.pod
        return None


def classify_pod(
    pod: PodView, *, now: datetime, unhealthy_after: timedelta, unresponsive: bool = False
) -> PodHealth:
    """Why a pod may or may not hold IPs. Node NotReady fails at once: the kubelet is gone;
    so does a pod that did not answer a renewal: extending a lease it may never see would
    only delay the failover."""
    if pod.terminating or not pod.node_ready or unresponsive:
        return PodHealth.FAILED
    if not pod.ready:
        since = pod.unready_since or now
        return PodHealth.FAILED if now - since >= unhealthy_after else PodHealth.SUSPECT
    if pod.leaving:
        return PodHealth.LEAVING
    return PodHealth.HEALTHY


def lease_is_live(lease: Lease, *, pods_by_name: Mapping[str, PodView], now: datetime) -> bool:
    """Whether some pod may still be sending on the lease's IP (so it must not move). Only a
    confirmed release or expiry ends it: not the pod object's absence."""
    del pods_by_name
    if lease.released:
        return False
    return now < lease.expires_at


def plan_assignment(spec: AssignmentInput) -> AssignmentPlan:
    """Decide holders, per-IP states and what each pod must be told this cycle."""
    settings = spec.settings
    now = spec.now
    pods_by_name = {pod.name: pod for pod in spec.pods}
    health = {
        pod.name: classify_pod(
            pod,
            now=now,
            unhealthy_after=settings.unhealthy_after,
            unresponsive=pod.name in spec.unresponsive,
        )
        for pod in spec.pods
    }
    wanted_ips = list(dict.fromkeys(spec.ips))
    live = {
        address: lease
        for address, lease in spec.leases.items()
        if lease_is_live(lease, pods_by_name=pods_by_name, now=now)
    }
    # IPs each pod keeps (or is still releasing) after this cycle, and pending grants.
    keeps: dict[str, list[str]] = {pod.name: [] for pod in spec.pods}
    # Also the holders whose pod object is gone: nobody to tell, the lease runs out.
    releasing: dict[str, list[str]] = collections.defaultdict(list)
    releasing.update({pod.name: [] for pod in spec.pods})
    decisions: dict[str, IPDecision] = {}
    to_place: list[str] = []
    failing_over = False
    degraded: list[str] = []
    drain: set[str] = set()
    blocklist_drain: set[str] = set()  # drained only if the listing leaves them no IP

    # Leases on IPs that are no longer in the spec must be revoked too.
    for address, stale in live.items():
        if address not in wanted_ips:
            releasing[stale.pod].append(address)

    for address in wanted_ips:
        lease = live.get(address)
        zones = tuple(spec.listed.get(address, ()))
        holder_health = _holder_health(lease, pods_by_name, health) if lease else None
        if zones:
            if lease:
                releasing[lease.pod].append(address)
                if settings.drain_on_blocklist:
                    blocklist_drain.add(lease.pod)
            decisions[address] = IPDecision(
                address,
                IPState.BLOCKLISTED,
                lease.pod if lease else None,
                "ListedOnDNSBL",
                zones,
            )
            degraded.append(f"{address} is listed on {', '.join(zones)}")
            continue
        if address in spec.elsewhere:
            if lease:
                releasing[lease.pod].append(address)
            decisions[address] = IPDecision(
                address, IPState.UNASSIGNED, lease.pod if lease else None, "InAnotherPool"
            )
            degraded.append(f"{address} belongs to pool {spec.elsewhere[address]}")
            continue
        if address in spec.fenced:
            if lease:
                releasing[lease.pod].append(address)
            decisions[address] = IPDecision(
                address, IPState.UNASSIGNED, lease.pod if lease else None, "Fenced"
            )
            degraded.append(f"{address} is fenced")
            continue
        if lease and holder_health in (PodHealth.HEALTHY, PodHealth.SUSPECT):
            keeps[lease.pod].append(address)
            decisions[address] = IPDecision(
                address,
                IPState.ACTIVE,
                lease.pod,
                "Held" if holder_health is PodHealth.HEALTHY else "HolderUnready",
            )
            continue
        if lease:
            # Holder failed or is leaving: revoke and wait for release or expiry.
            releasing[lease.pod].append(address)
            if holder_health is None:
                failing_over = True
                reason = "HolderGone"  # a forced delete: the process may still run
            elif holder_health is PodHealth.FAILED:
                failing_over = True
                drain.add(lease.pod)
                reason = "HolderFailed"
            else:
                reason = "HolderLeaving"
            decisions[address] = IPDecision(address, IPState.DRAINING, lease.pod, reason)
            continue
        to_place.append(address)

    # Drain pods that are being removed by a scale-down.
    for pod in spec.pods:
        if health[pod.name] is PodHealth.LEAVING:
            drain.add(pod.name)

    granted: dict[str, list[str]] = {pod.name: [] for pod in spec.pods}
    candidates = sorted(
        (pod for pod in spec.pods if health[pod.name] is PodHealth.HEALTHY),
        key=lambda pod: pod.ordinal,
    )

    def load(name: str) -> int:
        return len(keeps[name]) + len(granted[name]) + len(releasing[name])

    def holders() -> int:
        return sum(1 for pod in spec.pods if keeps[pod.name] or granted[pod.name])

    def previous_holder(lease: Lease | None) -> PodView | None:
        """Stickiness: an expired lease goes back to its healthy holder, nothing moves."""
        if lease is None or lease.released:
            return None
        pod = pods_by_name.get(lease.pod)
        if pod is None or pod.uid != lease.pod_uid or health[pod.name] is not PodHealth.HEALTHY:
            return None
        return pod

    def choose_target() -> PodView | None:
        """A spare while fewer than `active_target` pods hold IPs, else the least loaded."""
        if not candidates:
            return None
        if settings.one_ip_per_pod:
            free = [p for p in candidates if load(p.name) == 0]
            return free[0] if free else None
        spares = [p for p in candidates if load(p.name) == 0]
        if spares and holders() < max(spec.active_target, 1):
            return spares[0]
        active = [p for p in candidates if keeps[p.name] or granted[p.name]]
        pool = active or spares
        return min(pool, key=lambda p: (load(p.name), p.ordinal)) if pool else None

    # Before any lease was ever recorded the pool is starting: its IPs wait (Standby);
    # afterwards an IP without a healthy pod means lost capacity (Unassigned, Degraded).
    waiting_for_first_pod = not spec.leases
    for address in to_place:
        if spec.active_target == 0:
            decisions[address] = IPDecision(address, IPState.STANDBY, None, "NoActiveReplicas")
            continue
        target = previous_holder(spec.leases.get(address))
        if target is not None and settings.one_ip_per_pod and load(target.name):
            target = None
        target = target or choose_target()
        if target is None:
            if waiting_for_first_pod:
                decisions[address] = IPDecision(address, IPState.STANDBY, None, "NoPodReadyYet")
            else:
                decisions[address] = IPDecision(address, IPState.UNASSIGNED, None, "NoHealthyPod")
                degraded.append(f"{address} has no healthy pod to take it")
            continue
        granted[target.name].append(address)
        decisions[address] = IPDecision(address, IPState.ACTIVE, target.name, "Granted")

    if (
        settings.rebalance
        and not settings.one_ip_per_pod
        and not failing_over
        and not to_place
        and not _waiting(decisions)
    ):
        _rebalance_one(spec, candidates, keeps, releasing, decisions)

    pod_plans: list[PodAssignment] = []
    renew_when_below = settings.lease_duration - settings.renew_interval
    for pod in sorted(spec.pods, key=lambda p: p.ordinal):
        held = tuple(keeps[pod.name]) + tuple(granted[pod.name])
        revoked = tuple(releasing[pod.name])
        renew_due = any(
            live[address].inherited or live[address].expires_at - now <= renew_when_below
            for address in keeps[pod.name]
        )
        send = bool(granted[pod.name] or revoked or renew_due)
        if send or held:
            pod_plans.append(
                PodAssignment(
                    pod=pod.name,
                    pod_uid=pod.uid,
                    ips=held,
                    send=send,
                    granted=tuple(granted[pod.name]),
                    revoked=revoked,
                )
            )
    drain |= {name for name in blocklist_drain if not keeps[name] and not granted[name]}
    # Accepted mail on a healthy pod that no lease names (its IP moved on while it was down,
    # or its spool came back on a new pod) can leave only through the holders: hand it off.
    # A pod a lease still names (a listed IP it waits for) keeps its mail.
    recorded = {held.pod for held in spec.leases.values()}
    drain |= {
        name
        for name in spec.queued
        if health.get(name) is PodHealth.HEALTHY
        and name not in recorded
        and not (keeps.get(name) or granted.get(name) or releasing.get(name))
    }
    # A drained pod never gets new IPs in the same cycle.
    drain -= {p.pod for p in pod_plans if p.granted}
    return AssignmentPlan(
        ips=tuple(decisions[address] for address in wanted_ips),
        pods=tuple(pod_plans),
        drain=tuple(sorted(drain)),
        health=health,
        failing_over=failing_over,
        degraded_reasons=tuple(degraded),
    )


def withdraw_grants(
    plan: AssignmentPlan, refused: Collection[tuple[str, str]]
) -> AssignmentPlan:
    """The plan without the grants `refused` ((pod, address)): a grant whose record or CNI
    label did not land waits for the next step rather than leave."""
    if not refused:
        return plan
    orders = []
    for order in plan.pods:
        dropped = {a for a in order.granted if (order.pod, a) in refused}
        if dropped:
            order = dataclasses.replace(
                order,
                ips=tuple(a for a in order.ips if a not in dropped),
                granted=tuple(a for a in order.granted if a not in dropped),
            )
        orders.append(order)
    return dataclasses.replace(plan, pods=tuple(orders))


def _holder_health(
    lease: Lease, pods_by_name: Mapping[str, PodView], health: Mapping[str, PodHealth]
) -> PodHealth | None:
    """The health of the lease's holder; None when its pod object is gone or was recreated
    under the same name (a new uid: a new process that never got the lease). An empty uid
    (a holder recorded by name only) matches by name."""
    pod = pods_by_name.get(lease.pod)
    if pod is None or (lease.pod_uid and pod.uid != lease.pod_uid):
        return None
    return health[pod.name]


def _waiting(decisions: Mapping[str, IPDecision]) -> bool:
    """Whether some IP is waiting for a holder (then it is no time to shuffle others)."""
    return any(d.state in (IPState.DRAINING, IPState.STANDBY) for d in decisions.values())


def _rebalance_one(
    spec: AssignmentInput,
    candidates: Sequence[PodView],
    keeps: dict[str, list[str]],
    releasing: dict[str, list[str]],
    decisions: dict[str, IPDecision],
) -> None:
    """Start at most one planned move per cycle, so a scale-up spreads IPs without churn.

    The move is a graceful release: the IP is Draining on its old pod and granted to the
    new one in a later cycle, once the release is confirmed."""
    if not candidates or spec.active_target <= 0:
        return
    healthy = {pod.name for pod in candidates}
    if any(ips and name not in healthy for name, ips in keeps.items()):
        return  # a holder is suspect: moving IPs now would be churn on top of trouble
    loads = {pod.name: len(keeps[pod.name]) + len(releasing[pod.name]) for pod in candidates}
    holders = [name for name, count in loads.items() if count]
    busiest = max(candidates, key=lambda p: (loads[p.name], -p.ordinal))
    if not keeps[busiest.name]:
        return
    spare_slots = len(holders) < spec.active_target
    idle = [p for p in candidates if loads[p.name] == 0]
    lightest = min(candidates, key=lambda p: (loads[p.name], p.ordinal))
    worth_it = (spare_slots and idle and loads[busiest.name] >= 2) or (
        loads[busiest.name] - loads[lightest.name] >= 2 and loads[lightest.name] > 0
    )
    if not worth_it or any(releasing[name] for name in keeps):
        return
    address = keeps[busiest.name].pop()
    releasing[busiest.name].append(address)
    decisions[address] = dataclasses.replace(
        decisions[address], state=IPState.DRAINING, reason="Rebalancing"
    )


def next_lease_expiry(
    *, answered_at: datetime, settings: AssignmentSettings, skew: timedelta
) -> datetime:
    """The operator's bound on a lease the pod acknowledged at `answered_at`.

    The sender starts its own clock when it receives the grant, which is before the answer
    arrives; adding `skew` covers clock-rate differences and request processing slack."""
    return answered_at + settings.lease_duration + skew


def record_intent(
    leases: Mapping[str, Lease],
    assignment: PodAssignment,
    *,
    now: datetime,
    settings: AssignmentSettings,
    request_timeout: timedelta,
    skew: timedelta,
) -> dict[str, Lease]:
    """Leases to persist *before* sending a grant (write-ahead).

    If the operator dies after the pod received the grant but before the answer was
    recorded, the next operator still sees this pod as the holder, so it never grants the
    IP to a second pod. The bound covers a request that lands as late as its timeout."""
    updated = dict(leases)
    for address in assignment.granted:
        updated[address] = Lease(
            address=address,
            pod=assignment.pod,
            pod_uid=assignment.pod_uid,
            expires_at=now + request_timeout + settings.lease_duration + skew,
        )
    return updated


def record_answer(
    leases: Mapping[str, Lease],
    assignment: PodAssignment,
    *,
    held: Sequence[str],
    answered_at: datetime,
    settings: AssignmentSettings,
    skew: timedelta,
) -> dict[str, Lease]:
    """Leases after the pod acknowledged an assignment; `held` is what it says it holds now.

    IPs of the assignment it holds are renewed from the answer time; any IP it had and no
    longer holds is released (the pod confirmed it stopped using it)."""
    updated = dict(leases)
    held_set = set(held)
    for address in assignment.ips:
        if address in held_set:
            updated[address] = Lease(
                address=address,
                pod=assignment.pod,
                pod_uid=assignment.pod_uid,
                expires_at=next_lease_expiry(answered_at=answered_at, settings=settings, skew=skew),
            )
    for address, lease in leases.items():
        if (
            lease.pod == assignment.pod
            and lease.pod_uid == assignment.pod_uid
            and address not in held_set
        ):
            updated[address] = dataclasses.replace(lease, released=True)
    return updated


def forget_dead_leases(
    leases: Mapping[str, Lease], *, pods: Sequence[PodView], now: datetime, keep: Sequence[str]
) -> dict[str, Lease]:
    """Drop records no pod can act on any more, keeping the last holder of `keep` IPs.

    A released or expired record of an IP still in the spec is kept: it lets an expired
    lease go back to the same healthy pod, and marks the pool as past its first start."""
    by_name = {pod.name: pod for pod in pods}
    wanted = set(keep)
    return {
        address: lease
        for address, lease in leases.items()
        if address in wanted or lease_is_live(lease, pods_by_name=by_name, now=now)
    }


def pods_to_undrain(
    plan: AssignmentPlan, pods: Sequence[PodView], settled: Mapping[str, bool]
) -> tuple[str, ...]:
    """Drained pods whose drain should be cancelled, so they become useful spares again.

    `settled` maps each pod known to be draining to whether its drain did its job (the
    hand-off finished, or it has run for the drain timeout). A draining sender reports
    itself unready, so readiness cannot say it is healthy again: its node is Ready, it is not
    terminating, and it answered the stats read that reported the drain. Only a scale-down
    (the pod is leaving) or a drain the plan still asks for keeps the drain in force; and a
    pod still named by an IP (releasing it) waits for the release first.
    """
    named = {d.pod for d in plan.ips if d.pod} | {p.pod for p in plan.pods if p.ips}
    return tuple(
        sorted(
            pod.name
            for pod in pods
            if settled.get(pod.name)
            and pod.node_ready
            and not pod.terminating
            and not pod.leaving
            and pod.name not in plan.drain
            and pod.name not in named
        )
    )
