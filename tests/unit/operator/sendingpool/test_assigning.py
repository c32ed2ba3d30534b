"""IP assignment and failover decisions: one table case per failure mode, plus a simulated
world (senders with their own lease clocks, partitions, pod deletions) checked by hypothesis
for the invariant users rely on: never two pods sending from one IP."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailfleet_operator.logic import assigning
from mailfleet_operator.logic.assigning import (
    AssignmentInput,
    AssignmentSettings,
    IPState,
    Lease,
    PodView,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
S = AssignmentSettings(
    lease_duration=timedelta(seconds=15),
    renew_interval=timedelta(seconds=5),
    unhealthy_after=timedelta(seconds=10),
)
IPS = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")


def pod(ordinal: int, **changes: object) -> PodView:
    base = PodView(name=f"p-{ordinal}", uid=f"uid-{ordinal}", ordinal=ordinal, ready=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def lease(address: str, ordinal: int, *, ttl: float = 14, **changes: object) -> Lease:
    base = Lease(
        address=address,
        pod=f"p-{ordinal}",
        pod_uid=f"uid-{ordinal}",
        expires_at=T0 + timedelta(seconds=ttl),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def plan(
    *,
    pods: list[PodView],
    leases: list[Lease] = (),  # type: ignore[assignment]
    ips: tuple[str, ...] = IPS,
    active: int = 2,
    **extra: object,
) -> assigning.AssignmentPlan:
    return assigning.plan_assignment(
        AssignmentInput(
            ips=ips,
            pods=pods,
            leases={item.address: item for item in leases},
            now=T0,
            active_target=active,
            settings=S,
            **extra,  # type: ignore[arg-type]
        )
    )


def states(result: assigning.AssignmentPlan) -> dict[str, tuple[str, str | None]]:
    return {d.address: (d.state.value, d.pod) for d in result.ips}


def sent(result: assigning.AssignmentPlan) -> dict[str, tuple[str, ...]]:
    return {p.pod: p.ips for p in result.pods if p.send}


def expect(*cells: str) -> dict[str, tuple[str, str | None]]:
    """Wanted state and holder per IP, in the order of IPS: "Active p-0", "Standby"."""
    wanted: dict[str, tuple[str, str | None]] = {}
    for address, cell in zip(IPS, cells, strict=False):
        state, _, holder = cell.partition(" ")
        wanted[address] = (state, holder or None)
    return wanted


HELD = [lease(IPS[0], 0), lease(IPS[1], 1), lease(IPS[2], 0), lease(IPS[3], 1)]
SPREAD = expect("Active p-0", "Active p-1", "Active p-0", "Active p-1")
"""The IPs as HELD holds them."""
P0_DRAINING = expect("Draining p-0", "Active p-1", "Draining p-0", "Active p-1")
"""p-0's IPs revoked, waiting for its release or the lease end."""
P0_MOVED_TO_STANDBY = expect("Active p-2", "Active p-1", "Active p-2", "Active p-1")
P0_GONE = P0_DRAINING
"""The holder p-0 (or the process the lease names) is gone: its IPs wait for the lease end."""
THREE_PODS = [pod(0), pod(1), pod(2)]
P0_EXPIRED = [lease(IPS[0], 0, ttl=0), HELD[1], lease(IPS[2], 0, ttl=0), HELD[3]]


CASES = [
    pytest.param(
        dict(pods=THREE_PODS, leases=[]),
        SPREAD,
        {"p-0": (IPS[0], IPS[2]), "p-1": (IPS[1], IPS[3])},
        False,
        id="a new pool spreads its IPs over the active pods and leaves the standby empty",
    ),
    pytest.param(
        dict(pods=[pod(0, ready=False, unready_since=T0), pod(1, ready=False, unready_since=T0)]),
        {ip: ("Standby", None) for ip in IPS},
        {},
        False,
        id="before any pod is ready the IPs wait in Standby without degrading the pool",
    ),
    pytest.param(
        dict(pods=THREE_PODS, leases=HELD),
        SPREAD,
        {},
        False,
        id="fresh leases of healthy holders are kept and not renewed yet",
    ),
    pytest.param(
        dict(
            pods=THREE_PODS,
            leases=[dataclasses.replace(x, expires_at=T0 + timedelta(seconds=9)) for x in HELD],
        ),
        SPREAD,
        {"p-0": (IPS[0], IPS[2]), "p-1": (IPS[1], IPS[3])},
        False,
        id="leases past their renewal point are renewed on the same pods",
    ),
    pytest.param(
        dict(
            pods=[pod(0, ready=False, unready_since=T0 - timedelta(seconds=3)), pod(1), pod(2)],
            leases=HELD,
        ),
        SPREAD,
        {},
        False,
        id="a holder unready for less than unhealthyAfter keeps its IPs",
    ),
    pytest.param(
        dict(
            pods=[pod(0, ready=False, unready_since=T0 - timedelta(seconds=10)), pod(1), pod(2)],
            leases=HELD,
        ),
        P0_DRAINING,
        {"p-0": ()},
        True,
        id="a holder unready for unhealthyAfter is revoked but its IPs wait for the release",
    ),
    pytest.param(
        dict(
            pods=[pod(0, ready=False, unready_since=T0 - timedelta(seconds=30)), pod(1), pod(2)],
            leases=[
                lease(IPS[0], 0, released=True),
                HELD[1],
                lease(IPS[2], 0, released=True),
                HELD[3],
            ],
        ),
        P0_MOVED_TO_STANDBY,
        {"p-2": (IPS[0], IPS[2])},
        False,
        id="once the failed pod confirmed the release its IPs go to the standby",
    ),
    pytest.param(
        dict(
            pods=[pod(0, ready=False, unready_since=T0 - timedelta(seconds=30)), pod(1), pod(2)],
            leases=[lease(IPS[0], 0, ttl=0), HELD[1], lease(IPS[2], 0, ttl=-1), HELD[3]],
        ),
        P0_MOVED_TO_STANDBY,
        {"p-2": (IPS[0], IPS[2])},
        False,
        id="an unreachable failed pod loses its IPs when its lease expired",
    ),
    pytest.param(
        dict(pods=[pod(0, node_ready=False), pod(1), pod(2)], leases=HELD),
        P0_DRAINING,
        {"p-0": ()},
        True,
        id="a holder on a NotReady node fails at once but a partitioned pod keeps its lease",
    ),
    pytest.param(
        dict(pods=[pod(1), pod(2)], leases=HELD),
        P0_GONE,
        {},
        True,
        id="a holder whose pod object is gone (forced delete) keeps its IPs until expiry",
    ),
    pytest.param(
        dict(
            pods=[pod(1), pod(2)],
            leases=[lease(IPS[0], 0, ttl=0), HELD[1], lease(IPS[2], 0, ttl=-1), HELD[3]],
        ),
        P0_MOVED_TO_STANDBY,
        {"p-2": (IPS[0], IPS[2])},
        False,
        id="a vanished holder's IPs move once its lease expired",
    ),
    pytest.param(
        dict(pods=[pod(0, uid="uid-0-new"), pod(1), pod(2)], leases=HELD),
        P0_GONE,
        {"p-0": ()},
        True,
        id="a pod recreated under the same name does not inherit the old process's leases",
    ),
    pytest.param(
        dict(pods=THREE_PODS, leases=HELD, unresponsive=frozenset({"p-0"})),
        P0_DRAINING,
        {"p-0": ()},
        True,
        id="a holder that did not answer its renewal is not renewed again",
    ),
    pytest.param(
        dict(pods=[pod(0, terminating=True), pod(1), pod(2)], leases=HELD),
        P0_DRAINING,
        {"p-0": ()},
        True,
        id="a terminating holder is revoked and its IPs wait for the release",
    ),
    pytest.param(
        dict(pods=[pod(1), pod(2)], leases=P0_EXPIRED, ips=IPS),
        P0_MOVED_TO_STANDBY,
        {"p-2": (IPS[0], IPS[2])},
        False,
        id="failover prefers the standby over loading the other active pod",
    ),
    pytest.param(
        dict(pods=[pod(1)], leases=P0_EXPIRED),
        expect("Active p-1", "Active p-1", "Active p-1", "Active p-1"),
        {"p-1": (IPS[1], IPS[3], IPS[0], IPS[2])},
        False,
        id="without a standby the least loaded healthy pod takes the IPs",
    ),
    pytest.param(
        dict(
            pods=[pod(0, ready=False, unready_since=T0 - timedelta(seconds=60))],
            leases=[lease(IPS[0], 0, released=True)],
            ips=IPS[:1],
            active=1,
        ),
        {IPS[0]: ("Unassigned", None)},
        {},
        False,
        id="with no healthy pod at all a released IP is Unassigned",
    ),
    pytest.param(
        dict(pods=THREE_PODS, leases=HELD, listed={IPS[0]: ["bl.example"]}),
        expect("Blocklisted p-0", "Active p-1", "Active p-0", "Active p-1"),
        {"p-0": (IPS[2],)},
        False,
        id="a DNSBL-listed IP is revoked and not handed to anyone",
    ),
    pytest.param(
        dict(
            pods=THREE_PODS,
            leases=[lease(IPS[0], 0, released=True), *HELD[1:]],
            listed={IPS[0]: ["bl.example"]},
        ),
        expect("Blocklisted", "Active p-1", "Active p-0", "Active p-1"),
        {},
        False,
        id="a released blocklisted IP stays unheld until delisted",
    ),
    pytest.param(
        dict(pods=THREE_PODS, leases=HELD, fenced=frozenset({IPS[1]})),
        expect("Active p-0", "Unassigned p-1", "Active p-0", "Active p-1"),
        {"p-1": (IPS[3],)},
        False,
        id="a fenced IP is revoked from its holder by hand",
    ),
    pytest.param(
        dict(
            pods=[pod(0), pod(1), pod(2, leaving=True)],
            leases=[HELD[0], HELD[1], lease(IPS[2], 2), lease(IPS[3], 2)],
            active=2,
        ),
        expect("Active p-0", "Active p-1", "Draining p-2", "Draining p-2"),
        {"p-2": ()},
        False,
        id="a pod removed by a scale-down releases its IPs gracefully, not as a failure",
    ),
    pytest.param(
        dict(pods=[pod(0), pod(1), pod(2)], leases=HELD, active=3),
        expect("Active p-0", "Active p-1", "Draining p-0", "Active p-1"),
        {"p-0": (IPS[0],)},
        False,
        id="after a scale-up one IP at a time is moved to the new active pod",
    ),
    pytest.param(
        dict(pods=THREE_PODS, leases=[lease(IPS[0], 1, ttl=-1)], ips=IPS[:1], active=1),
        {IPS[0]: ("Active", "p-1")},
        {"p-1": (IPS[0],)},
        False,
        id="an expired lease of a healthy pod goes back to the same pod",
    ),
    pytest.param(
        dict(pods=THREE_PODS, leases=[lease("192.0.2.99", 0)], ips=IPS[:1], active=1),
        {IPS[0]: ("Active", "p-1")},
        {"p-0": (), "p-1": (IPS[0],)},
        False,
        id="an IP removed from the spec is revoked from its holder",
    ),
    pytest.param(
        dict(pods=THREE_PODS, leases=[], active=0),
        {ip: ("Standby", None) for ip in IPS},
        {},
        False,
        id="a pool scaled to zero active pods keeps its IPs in Standby",
    ),
]


@pytest.mark.parametrize(("given", "want_states", "want_sent", "failing_over"), CASES)
def test_assignment_decisions(
    given: dict[str, object],
    want_states: dict[str, tuple[str, str | None]],
    want_sent: dict[str, tuple[str, ...]],
    failing_over: bool,
) -> None:
    result = plan(**given)  # type: ignore[arg-type]
    assert states(result) == want_states
    assert sent(result) == want_sent
    assert result.failing_over is failing_over


def test_a_failed_holder_is_drained_and_degrades_nothing_until_its_ips_are_stuck() -> None:
    failed = pod(0, ready=False, unready_since=T0 - timedelta(seconds=30))
    result = plan(pods=[failed, pod(1), pod(2)], leases=HELD)
    assert result.drain == ("p-0",)
    assert result.health["p-0"] is assigning.PodHealth.FAILED


def test_a_blocklisted_ip_drains_its_pod_only_when_the_pod_is_left_without_ips() -> None:
    one_ip_each = [lease(IPS[0], 0), lease(IPS[1], 1)]
    result = plan(pods=THREE_PODS, leases=one_ip_each, ips=IPS[:2], listed={IPS[0]: ["z"]})
    assert result.drain == ("p-0",)
    assert result.degraded_reasons == ("192.0.2.1 is listed on z",)
    result = plan(pods=THREE_PODS, leases=HELD, listed={IPS[0]: ["z"]})
    assert result.drain == ()


def test_queued_mail_on_a_pod_no_lease_names_is_handed_off() -> None:
    # p-0 was killed and restarted while its IP moved to p-2: its spool still holds mail.
    moved = [lease(IPS[0], 2), lease(IPS[1], 1)]
    result = plan(pods=THREE_PODS, leases=moved, ips=IPS[:2], queued=frozenset({"p-0"}))
    assert result.drain == ("p-0",)
    # Holders keep their queues; a pod without mail is left alone as a spare.
    result = plan(pods=THREE_PODS, leases=moved, ips=IPS[:2],
                  queued=frozenset({"p-1", "p-2"}))
    assert result.drain == ()


def test_queued_mail_waits_on_a_pod_whose_released_lease_still_names_it() -> None:
    # Its only IP is listed (no drain on blocklist): the mail waits for the IP to return.
    released = [lease(IPS[0], 0, released=True), lease(IPS[1], 1)]
    result = plan(pods=THREE_PODS, leases=released, ips=IPS[:2], listed={IPS[0]: ["z"]},
                  queued=frozenset({"p-0"}))
    assert "p-0" not in result.drain


def test_queued_mail_on_an_unready_pod_is_not_asked_to_move() -> None:
    # A pod that cannot answer cannot hand off; it is judged by its health first.
    unready = pod(0, ready=False, unready_since=T0)
    result = plan(pods=[unready, pod(1), pod(2)], leases=[lease(IPS[1], 1)], ips=IPS[:2],
                  queued=frozenset({"p-0"}))
    assert "p-0" not in result.drain


def test_the_write_ahead_record_bounds_a_grant_that_may_land_late() -> None:
    result = plan(pods=THREE_PODS)
    grant = next(p for p in result.pods if p.pod == "p-0")
    leases = assigning.record_intent(
        {},
        grant,
        now=T0,
        settings=S,
        request_timeout=timedelta(seconds=2),
        skew=timedelta(seconds=1),
    )
    assert {a: (x.pod, x.expires_at - T0) for a, x in leases.items()} == {
        IPS[0]: ("p-0", timedelta(seconds=18)),
        IPS[2]: ("p-0", timedelta(seconds=18)),
    }
    answered = assigning.record_answer(
        leases,
        grant,
        held=[IPS[0]],
        answered_at=T0 + timedelta(seconds=1),
        settings=S,
        skew=timedelta(seconds=1),
    )
    assert answered[IPS[0]].expires_at == T0 + timedelta(seconds=17)
    assert answered[IPS[2]].released  # the pod did not take it: free to grant again


# --- the simulated world --------------------------------------------------------------------

SKEW = timedelta(seconds=1)
TIMEOUT = timedelta(seconds=2)


@dataclasses.dataclass
class SimPod:
    ordinal: int
    generation: int = 0
    ready: bool = True
    unready_since: datetime | None = None
    node_ready: bool = True
    partitioned: bool = False
    holds: dict[str, datetime] = dataclasses.field(default_factory=dict)  # ip -> sender expiry

    def view(self) -> PodView:
        return PodView(
            name=f"p-{self.ordinal}",
            uid=f"uid-{self.ordinal}-{self.generation}",
            ordinal=self.ordinal,
            ready=self.ready,
            unready_since=self.unready_since,
            node_ready=self.node_ready,
        )


class World:
    def __init__(self, ips: tuple[str, ...], pods: int) -> None:
        self.ips = ips
        self.now = T0
        self.pods = [SimPod(i) for i in range(pods)]
        self.leases: dict[str, Lease] = {}
        self.listed: dict[str, list[str]] = {}
        self.fenced: set[str] = set()
        self.last_plan: assigning.AssignmentPlan | None = None

    def check_invariant(self) -> None:
        for address in self.ips:
            holders = [p.ordinal for p in self.pods if p.holds.get(address, T0) > self.now]
            assert len(holders) <= 1, f"{address} held by pods {holders} at {self.now}"

    def step(self, action: tuple[str, int]) -> None:
        kind, index = action
        target = self.pods[index % len(self.pods)]
        if kind == "tick":
            self.now += timedelta(seconds=1 + index % 7)
        elif kind == "ready":
            target.ready = not target.ready
            target.unready_since = None if target.ready else self.now
        elif kind == "node":
            target.node_ready = not target.node_ready
        elif kind == "partition":
            target.partitioned = not target.partitioned
        elif kind == "delete":  # the StatefulSet recreates it: new uid, empty process
            target.generation += 1
            target.holds = {}
            target.ready, target.unready_since = False, self.now
        elif kind == "list":
            address = self.ips[index % len(self.ips)]
            self.listed[address] = [] if self.listed.get(address) else ["bl.test"]
        elif kind == "fence":
            address = self.ips[index % len(self.ips)]
            self.fenced ^= {address}
        elif kind == "reconcile":
            self.reconcile()
        self.check_invariant()

    def reconcile(self) -> None:
        views = [p.view() for p in self.pods]
        result = assigning.plan_assignment(
            AssignmentInput(
                ips=self.ips,
                pods=views,
                leases=self.leases,
                now=self.now,
                active_target=2,
                listed={k: v for k, v in self.listed.items() if v},
                fenced=frozenset(self.fenced),
                settings=S,
            )
        )
        self.last_plan = result
        by_name = {f"p-{p.ordinal}": p for p in self.pods}
        for order in result.pods:
            if not order.send:
                continue
            self.leases = assigning.record_intent(
                self.leases, order, now=self.now, settings=S, request_timeout=TIMEOUT, skew=SKEW
            )
            self.check_invariant()
            sim = by_name[order.pod]
            if sim.partitioned or not sim.node_ready or sim.view().uid != order.pod_uid:
                continue  # the request never arrives
            sim.holds = {ip: self.now + S.lease_duration for ip in order.ips}
            self.check_invariant()
            self.leases = assigning.record_answer(
                self.leases,
                order,
                held=list(order.ips),
                answered_at=self.now,
                settings=S,
                skew=SKEW,
            )
        self.leases = assigning.forget_dead_leases(
            self.leases, pods=views, now=self.now, keep=self.ips
        )


ACTIONS = st.tuples(
    st.sampled_from(
        [
            "tick",
            "tick",
            "reconcile",
            "reconcile",
            "reconcile",
            "ready",
            "node",
            "partition",
            "delete",
            "list",
            "fence",
        ]
    ),
    st.integers(min_value=0, max_value=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTIONS, min_size=1, max_size=60))
def test_no_two_pods_ever_send_from_one_ip(actions: list[tuple[str, int]]) -> None:
    world = World(IPS[:3], pods=4)
    for action in actions:
        world.step(action)
    # Then heal everything: every clean IP must end up held by exactly one healthy pod.
    for sim in world.pods:
        sim.ready, sim.unready_since, sim.node_ready, sim.partitioned = True, None, True, False
    world.listed.clear()
    world.fenced.clear()
    for _ in range(12):
        world.step(("reconcile", 0))
        world.step(("tick", 3))  # 4 s: below the renew interval plus slack
    world.step(("reconcile", 0))
    assert world.last_plan is not None
    assert {d.state for d in world.last_plan.ips} == {IPState.ACTIVE}
    for address in world.ips:
        holders = [p.ordinal for p in world.pods if p.holds.get(address, T0) > world.now]
        assert len(holders) == 1


DRAINED = pod(0, ready=False, unready_since=T0 - timedelta(seconds=30))  # draining: unready


@pytest.mark.parametrize(
    ("drained", "leases", "settled", "active", "undrain"),
    [
        pytest.param(DRAINED, [lease(IPS[1], 1)], True, 1, ("p-0",),
                     id="a drained pod whose IPs moved away and whose hand-off finished is "
                     "undrained to become a spare"),
        pytest.param(DRAINED, [lease(IPS[1], 1)], False, 1, (),
                     id="a drained pod still handing its queue off stays drained"),
        pytest.param(DRAINED, [lease(IPS[0], 0), lease(IPS[1], 1)], True, 1, (),
                     id="a drained pod still releasing an IP stays drained until the release"),
        pytest.param(dataclasses.replace(DRAINED, node_ready=False), [lease(IPS[1], 1)], True, 1,
                     (), id="a drained pod on a NotReady node stays drained"),
        pytest.param(dataclasses.replace(DRAINED, terminating=True), [lease(IPS[1], 1)], True, 1,
                     (), id="a terminating pod stays drained"),
        pytest.param(dataclasses.replace(DRAINED, leaving=True), [lease(IPS[1], 1)], True, 1,
                     (), id="a pod removed by a scale-down stays drained"),
    ],
)
def test_a_drain_is_cancelled_only_for_a_healthy_pod_that_is_not_leaving(
    drained: PodView, leases: list[Lease], settled: bool, active: int, undrain: tuple[str, ...]
) -> None:
    pods = [drained, pod(1)]
    result = plan(pods=pods, leases=leases, ips=IPS[:2], active=active)
    assert assigning.pods_to_undrain(result, pods, {"p-0": settled}) == undrain


def test_a_pod_never_known_to_drain_is_left_alone() -> None:
    pods = [pod(0), pod(1)]
    result = plan(pods=pods, leases=[lease(IPS[1], 1)], ips=IPS[:2], active=1)
    assert assigning.pods_to_undrain(result, pods, {}) == ()
