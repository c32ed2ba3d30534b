"""What an assignment plan tells users and pods, beyond who holds what: the reason and the
DNSBL zones shown per IP in `status.ips[]`, the Degraded messages, the IPs each pod is told to
revoke, and the records kept or dropped between cycles. Each case pins a decision a user reads
or a pod acts on (test_assigning.py covers the holders themselves)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from mailfleet_operator.logic import assigning
from mailfleet_operator.logic.assigning import (
    AssignmentInput,
    AssignmentSettings,
    IPDecision,
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
A, B, C, D, E = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5")


def pod(ordinal: int, **changes: object) -> PodView:
    base = PodView(name=f"p-{ordinal}", uid=f"uid-{ordinal}", ordinal=ordinal, ready=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def lease(address: str, ordinal: int, *, ttl: float = 14, **changes: object) -> Lease:
    base = Lease(address=address, pod=f"p-{ordinal}", pod_uid=f"uid-{ordinal}",
                 expires_at=T0 + timedelta(seconds=ttl))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def plan(
    *, pods: list[PodView], leases: list[Lease] = (), ips: tuple[str, ...] = (A, B, C, D),  # type: ignore[assignment]
    active: int = 2, settings: AssignmentSettings = S, **extra: object,
) -> assigning.AssignmentPlan:
    return assigning.plan_assignment(AssignmentInput(
        ips=ips, pods=pods, leases={item.address: item for item in leases}, now=T0,
        active_target=active, settings=settings, **extra,  # type: ignore[arg-type]
    ))


def decision(result: assigning.AssignmentPlan, address: str) -> IPDecision:
    return next(d for d in result.ips if d.address == address)


def revoked(result: assigning.AssignmentPlan) -> dict[str, tuple[str, ...]]:
    return {p.pod: p.revoked for p in result.pods if p.revoked}


THREE = [pod(0), pod(1), pod(2)]
HELD = [lease(A, 0), lease(B, 1), lease(C, 0), lease(D, 1)]
LONG_UNREADY = T0 - timedelta(seconds=30)


def test_a_listed_ip_names_its_zones_and_is_revoked_from_its_holder() -> None:
    result = plan(pods=THREE, leases=HELD, listed={A: ["bl.one", "bl.two"]})
    assert decision(result, A) == IPDecision(A, IPState.BLOCKLISTED, "p-0", "ListedOnDNSBL",
                                             ("bl.one", "bl.two"))
    assert result.degraded_reasons == ("192.0.2.1 is listed on bl.one, bl.two",)
    assert revoked(result) == {"p-0": (A,)}


def test_an_ip_another_pool_owns_is_revoked_and_the_other_ips_are_still_decided() -> None:
    result = plan(pods=THREE, leases=HELD, elsewhere={B: "mail/older"})
    assert decision(result, B) == IPDecision(B, IPState.UNASSIGNED, "p-1", "InAnotherPool")
    assert [d.reason for d in result.ips] == ["Held", "InAnotherPool", "Held", "Held"]
    assert result.degraded_reasons == ("192.0.2.2 belongs to pool mail/older",)
    assert revoked(result) == {"p-1": (B,)}
    unheld = plan(pods=THREE, leases=HELD[:1], ips=(A, B), elsewhere={B: "mail/older"})
    assert decision(unheld, B) == IPDecision(B, IPState.UNASSIGNED, None, "InAnotherPool")


def test_a_fenced_ip_says_so_and_is_revoked() -> None:
    result = plan(pods=THREE, leases=HELD, fenced=frozenset({D}))
    assert decision(result, D) == IPDecision(D, IPState.UNASSIGNED, "p-1", "Fenced")
    assert result.degraded_reasons == ("192.0.2.4 is fenced",)
    assert revoked(result) == {"p-1": (D,)}


def test_an_unready_holder_keeps_its_ip_and_the_status_says_why() -> None:
    suspect = pod(0, ready=False, unready_since=T0 - timedelta(seconds=3))
    result = plan(pods=[suspect, pod(1), pod(2)], leases=HELD)
    assert [d.reason for d in result.ips] == ["HolderUnready", "Held", "HolderUnready", "Held"]


@pytest.mark.parametrize(
    ("pods", "reason", "drained"),
    [
        pytest.param([pod(1), pod(2)], "HolderGone", (), id="the holder's pod object is gone"),
        pytest.param([pod(0, ready=False, unready_since=LONG_UNREADY), pod(1), pod(2)],
                     "HolderFailed", ("p-0",), id="the holder failed"),
        pytest.param([pod(0, leaving=True), pod(1), pod(2)], "HolderLeaving", ("p-0",),
                     id="the holder is removed by a scale-down"),
    ],
)
def test_a_revoked_ip_says_why_it_is_draining(
    pods: list[PodView], reason: str, drained: tuple[str, ...]
) -> None:
    result = plan(pods=pods, leases=HELD)
    assert decision(result, A) == IPDecision(A, IPState.DRAINING, "p-0", reason)
    assert decision(result, C) == IPDecision(C, IPState.DRAINING, "p-0", reason)
    assert result.drain == drained
    if any(p.name == "p-0" for p in pods):
        assert revoked(result) == {"p-0": (A, C)}


def test_unplaced_ips_say_why_they_wait() -> None:
    assert {d.reason for d in plan(pods=THREE, active=0).ips} == {"NoActiveReplicas"}
    starting = plan(pods=[pod(0, ready=False, unready_since=T0)])
    assert {(d.state, d.reason) for d in starting.ips} == {(IPState.STANDBY, "NoPodReadyYet")}
    assert starting.degraded_reasons == ()
    stuck = plan(pods=[pod(0, ready=False, unready_since=LONG_UNREADY)],
                 leases=[lease(A, 0, released=True)], ips=(A,))
    assert decision(stuck, A) == IPDecision(A, IPState.UNASSIGNED, None, "NoHealthyPod")
    assert stuck.degraded_reasons == ("192.0.2.1 has no healthy pod to take it",)
    fresh = plan(pods=THREE, ips=(A,))
    assert decision(fresh, A) == IPDecision(A, IPState.ACTIVE, "p-0", "Granted")


def test_a_pod_releasing_ips_counts_as_loaded_when_a_new_ip_is_placed() -> None:
    # p-0 holds A and still releases X and Y (gone from the spec); p-1 holds C and D.
    leases = [lease(A, 0), lease("192.0.2.98", 0), lease("192.0.2.99", 0), lease(C, 1),
              lease(D, 1)]
    result = plan(pods=[pod(0), pod(1)], leases=leases, ips=(A, C, D, E))
    assert decision(result, E).pod == "p-1"
    assert revoked(result) == {"p-0": ("192.0.2.98", "192.0.2.99")}


def test_an_ip_waits_rather_than_go_to_a_pod_that_is_only_releasing() -> None:
    result = plan(pods=[pod(0)], leases=[lease("192.0.2.99", 0)], ips=(A,), active=1)
    assert decision(result, A) == IPDecision(A, IPState.UNASSIGNED, None, "NoHealthyPod")


def test_with_one_active_pod_a_new_pool_puts_every_ip_on_it() -> None:
    result = plan(pods=[pod(0), pod(1)], ips=(A, B), active=1)
    assert [d.pod for d in result.ips] == ["p-0", "p-0"]


ONE_IP = dataclasses.replace(S, one_ip_per_pod=True)


def test_one_ip_per_pod_never_returns_an_expired_ip_to_a_pod_that_holds_another() -> None:
    # p-0 holds B; its expired lease on A would bring A back to it, but it may hold only one.
    result = plan(pods=THREE, leases=[lease(A, 0, ttl=0), lease(B, 0)], ips=(A, B),
                  settings=ONE_IP)
    assert [(d.address, d.pod) for d in result.ips] == [(A, "p-1"), (B, "p-0")]
    # With no pod free the IP waits instead of doubling up.
    result = plan(pods=[pod(0)], leases=[lease(B, 0)], ips=(A, B), settings=ONE_IP)
    assert decision(result, A) == IPDecision(A, IPState.UNASSIGNED, None, "NoHealthyPod")


def test_a_lease_exactly_at_its_renewal_point_is_renewed() -> None:
    result = plan(pods=THREE, leases=[lease(A, 0, ttl=10)], ips=(A,), active=1)
    assert [(p.pod, p.send) for p in result.pods] == [("p-0", True)]
    result = plan(pods=THREE, leases=[lease(A, 0, ttl=10.001)], ips=(A,), active=1)
    assert [(p.pod, p.send) for p in result.pods] == [("p-0", False)]


def test_no_pod_able_to_hold_ips_is_no_reason_to_fail_the_plan() -> None:
    result = plan(pods=[pod(0, ready=False, unready_since=T0)], ips=(A,), fenced=frozenset({A}))
    assert decision(result, A).reason == "Fenced"


@pytest.mark.parametrize(
    ("held", "active", "moved"),
    [
        pytest.param({"p-0": 3, "p-1": 1}, 2, True, id="a 3-1 split over two pods moves one IP"),
        pytest.param({"p-0": 2, "p-1": 1}, 2, False, id="a 2-1 split is as even as it gets"),
        pytest.param({"p-0": 2, "p-1": 1}, 3, False,
                     id="a 2-1 split is not shuffled while no idle pod could take an IP"),
        pytest.param({"p-0": 3, "p-1": 1}, 1, True,
                     id="even one active replica evens out two holders"),
        pytest.param({"p-0": 4, "p-1": 0}, 2, True, id="an idle active pod gets an IP"),
    ],
)
def test_rebalancing_moves_one_ip_only_when_it_evens_the_load(
    held: dict[str, int], active: int, moved: bool
) -> None:
    ips = (A, B, C, D)
    leases, it = [], iter(ips)
    for name, count in held.items():
        leases += [lease(next(it), int(name[-1])) for _ in range(count)]
    held_ips = tuple(item.address for item in leases)  # every IP held: nothing to place
    result = plan(pods=[pod(0), pod(1)], leases=leases, ips=held_ips, active=active)
    draining = [d for d in result.ips if d.state is IPState.DRAINING]
    if moved:
        assert draining == [IPDecision(leases[held["p-0"] - 1].address, IPState.DRAINING, "p-0",
                                       "Rebalancing")]
        assert revoked(result) == {"p-0": (draining[0].address,)}
    else:
        assert draining == [] and revoked(result) == {}


def test_a_health_check_without_unresponsive_pods_finds_a_ready_pod_healthy() -> None:
    health = assigning.classify_pod(pod(0), now=T0, unhealthy_after=timedelta(seconds=5))
    assert health is assigning.PodHealth.HEALTHY


def test_the_plan_names_the_holder_of_each_ip() -> None:
    result = plan(pods=THREE, leases=HELD)
    assert result.holder(B) == "p-1"
    assert result.holder("192.0.2.77") is None


def test_a_refused_grant_is_withdrawn_and_nothing_else_changes() -> None:
    result = plan(pods=THREE, ips=(A, B, C, D))
    assert assigning.withdraw_grants(result, ()) is result
    withdrawn = assigning.withdraw_grants(result, {("p-0", C), ("p-1", A)})
    orders = {p.pod: (p.ips, p.granted) for p in withdrawn.pods}
    assert orders == {"p-0": ((A,), (A,)), "p-1": ((B, D), (B, D))}
    assert withdrawn.ips == result.ips and withdrawn.drain == result.drain


def test_records_name_the_ip_and_the_pod_process_they_were_written_for() -> None:
    grant = next(p for p in plan(pods=THREE, ips=(A,)).pods if p.pod == "p-0")
    intent = assigning.record_intent({}, grant, now=T0, settings=S,
                                     request_timeout=timedelta(seconds=2),
                                     skew=timedelta(seconds=1))
    assert intent == {A: Lease(A, "p-0", "uid-0", T0 + timedelta(seconds=18))}
    answered = assigning.record_answer(intent, grant, held=[A], answered_at=T0, settings=S,
                                       skew=timedelta(seconds=1))
    assert answered == {A: Lease(A, "p-0", "uid-0", T0 + timedelta(seconds=16))}


def test_dead_records_are_dropped_unless_their_ip_is_still_wanted() -> None:
    leases = {
        A: lease(A, 0),  # live, no longer wanted: kept until it ends
        B: lease(B, 0, ttl=-1),  # expired, wanted: kept for stickiness
        C: lease(C, 0, ttl=-1),  # expired, not wanted: dropped
        D: lease(D, 1, released=True),  # released, not wanted: dropped
    }
    kept = assigning.forget_dead_leases(leases, pods=THREE, now=T0, keep=[B])
    assert kept == {A: leases[A], B: leases[B]}


def test_a_drained_pod_still_named_by_a_fenced_ip_stays_drained() -> None:
    pods = [pod(0), pod(1)]
    result = plan(pods=pods, leases=[lease(A, 0), lease(B, 1)], ips=(A, B),
                  fenced=frozenset({A}), active=1)
    assert "p-0" not in result.drain
    assert assigning.pods_to_undrain(result, pods, {"p-0": True}) == ()
