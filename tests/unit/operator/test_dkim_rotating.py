"""The rotation state machine: one transition per step, never a switch without DNS proof."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from mailfleet_operator.logic import rotating

S = rotating.KeyState
D = rotating.DnsCheck
T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
TTL = datetime.timedelta(minutes=5)
POLICY = rotating.Policy(
    algorithms=("rsa-2048",),
    selector_prefix="mf",
    rotate_every=90 * DAY,
    overlap=7 * DAY,
    history_limit=2,
    stall_after=datetime.timedelta(hours=1),
    default_ttl=TTL,
)


def gen(
    number: int,
    state: rotating.KeyState,
    *,
    created: datetime.datetime = T0,
    since: datetime.datetime | None = None,
    trigger: str = "",
    problem: str | None = None,
    algorithms: tuple[str, ...] = ("rsa-2048",),
    selectors: tuple[str, ...] | None = None,
    seen: datetime.datetime | None = None,
) -> rotating.Generation:
    return rotating.Generation(
        number=number,
        algorithms=algorithms,  # type: ignore[arg-type]
        selectors=selectors if selectors is not None else (f"mf-{number}",),
        state=state,
        created_at=created,
        state_since=since or created,
        trigger=trigger,
        problem=problem,
        seen_at=seen,
    )


Case = tuple[
    list[rotating.Generation], dict[str, rotating.DnsCheck], str, datetime.datetime,
    tuple[str, tuple[tuple[int, rotating.KeyState], ...], int | None] | None,
]

CASES: dict[str, Case] = {
    "a domain without keys gets its first key generated": (
        [], {}, "", T0, ("KeyGenerated", (), 1),
    ),
    "a pending key is published on the next step": (
        [gen(1, S.PENDING)], {}, "", T0, ("KeyPublished", ((1, S.PUBLISHED),), None),
    ),
    "a published key that DNS does not show yet stays published": (
        [gen(1, S.PUBLISHED)], {"mf-1": D.ABSENT}, "", T0, None,
    ),
    "a published key whose selector returns another key never advances": (
        [gen(1, S.PUBLISHED)], {"mf-1": D.MISMATCH}, "", T0, None,
    ),
    "a published key every nameserver returns is not verified before one TTL has passed": (
        [gen(1, S.PUBLISHED, seen=T0)], {"mf-1": D.MATCH}, "", T0 + TTL / 2, None,
    ),
    "a published key every nameserver has returned for one TTL becomes verified": (
        [gen(1, S.PUBLISHED, seen=T0)], {"mf-1": D.MATCH}, "", T0 + TTL,
        ("KeyVerified", ((1, S.VERIFIED),), None),
    ),
    "a key seen long ago but missing at a nameserver now is not verified": (
        [gen(1, S.PUBLISHED, seen=T0)], {"mf-1": D.ABSENT}, "", T0 + DAY, None,
    ),
    "the first verified key becomes active with nothing to retire": (
        [gen(1, S.VERIFIED)], {"mf-1": D.MATCH}, "", T0, ("KeyActivated", ((1, S.ACTIVE),), None),
    ),
    "a verified key whose record vanished from DNS is held, not switched to": (
        [gen(1, S.ACTIVE), gen(2, S.VERIFIED)], {"mf-1": D.MATCH, "mf-2": D.ABSENT}, "",
        T0 + DAY, None,
    ),
    "the switch activates the new key and leaves the old one signing as well": (
        [gen(1, S.ACTIVE), gen(2, S.VERIFIED)], {"mf-1": D.MATCH, "mf-2": D.MATCH}, "",
        T0 + DAY, ("KeyActivated", ((2, S.ACTIVE),), None),
    ),
    "an active key younger than rotateEvery is left alone": (
        [gen(1, S.ACTIVE)], {"mf-1": D.MATCH}, "", T0 + 89 * DAY, None,
    ),
    "an active key older than rotateEvery starts a rotation with the next number": (
        [gen(1, S.ACTIVE)], {"mf-1": D.MATCH}, "", T0 + 90 * DAY, ("RotationDue", (), 2),
    ),
    "a new value of the rotate annotation starts a rotation at once": (
        [gen(1, S.ACTIVE, trigger="a")], {}, "b", T0 + DAY, ("RotationRequested", (), 2),
    ),
    "the rotate annotation value a key was created for does not rotate again": (
        [gen(1, S.RETIRED), gen(2, S.ACTIVE, trigger="b")], {}, "b", T0 + DAY, None,
    ),
    "a rotation request during a rotation waits for it to finish": (
        [gen(1, S.ACTIVE), gen(2, S.PUBLISHED, trigger="b")], {"mf-2": D.ABSENT}, "c",
        T0 + DAY, None,
    ),
    "a retiring key stays published during the overlap": (
        [gen(1, S.RETIRING, since=T0), gen(2, S.ACTIVE)], {}, "", T0 + 6 * DAY, None,
    ),
    "a retiring key is retired once the overlap has passed": (
        [gen(1, S.RETIRING, since=T0), gen(2, S.ACTIVE)], {}, "", T0 + 7 * DAY,
        ("KeyRetired", ((1, S.RETIRED),), None),
    ),
    "a key created long before its switch still stays published for the overlap after it": (
        [gen(1, S.RETIRING, created=T0 - 90 * DAY, since=T0),
         gen(2, S.ACTIVE, created=T0 - DAY, since=T0)], {}, "", T0 + 6 * DAY, None,
    ),
    "a key created long before its switch is retired once the overlap after it has passed": (
        [gen(1, S.RETIRING, created=T0 - 90 * DAY, since=T0),
         gen(2, S.ACTIVE, created=T0 - DAY, since=T0)], {}, "", T0 + 7 * DAY,
        ("KeyRetired", ((1, S.RETIRED),), None),
    ),
    "a key whose Secret holds garbage never advances": (
        [gen(1, S.ACTIVE), gen(2, S.PENDING, problem="not a readable PEM")], {}, "", T0, None,
    ),
    "a domain whose active key Secret was deleted gets a new key": (
        [gen(1, S.RETIRED)], {}, "", T0, ("KeyGenerated", (), 2),
    ),
    "changing the algorithm in the spec rotates to the new algorithm": (
        [gen(1, S.ACTIVE, algorithms=("ed25519",))], {}, "", T0 + DAY, ("AlgorithmChanged", (), 2),
    ),
    "a dual generation interrupted after one Secret is completed with the same names": (
        [gen(1, S.PENDING, algorithms=("rsa-2048", "ed25519"), selectors=("mf-1",))], {}, "", T0,
        ("KeyGenerated", (), 1),
    ),
}


@pytest.mark.parametrize(("generations", "dns", "annotation", "now", "expected"),
                         list(CASES.values()), ids=list(CASES))
def test_plan_rotation(
    generations: list[rotating.Generation],
    dns: dict[str, rotating.DnsCheck],
    annotation: str,
    now: datetime.datetime,
    expected: tuple[str, tuple[tuple[int, rotating.KeyState], ...], int | None] | None,
) -> None:
    plan = rotating.plan_rotation(
        generations=generations, policy=POLICY, now=now, rotate_annotation=annotation, dns=dns
    )
    if expected is None:
        assert plan.transition is None
        return
    reason, changes, created = expected
    assert plan.transition is not None
    assert plan.transition.reason == reason
    assert plan.transition.changes == changes
    assert (plan.transition.create.number if plan.transition.create else None) == created


def test_a_full_rotation_walks_every_state_one_step_at_a_time() -> None:
    generations = [gen(1, S.ACTIVE)]
    now = T0 + 90 * DAY
    seen: list[list[tuple[int, str]]] = []
    dns = {"mf-1": D.MATCH, "mf-2": D.MATCH}
    pools = [rotating.PoolSigning("marketing", frozenset({"mf-1"}))]
    for _step in range(12):
        plan = rotating.plan_rotation(
            generations=generations, policy=POLICY, now=now, rotate_annotation="", dns=dns,
            pools=pools,
        )
        generations = [
            dataclasses.replace(g, seen_at=now) if g.number in plan.seen else g
            for g in generations
        ]
        if plan.transition is None:
            now += 7 * DAY
            # the pods pick the new key up once it is Active
            if any(g.number == 2 and g.state == S.ACTIVE for g in generations):
                pools = [rotating.PoolSigning("marketing", frozenset({"mf-2"}))]
            continue
        generations = rotating.apply_transition(generations, plan.transition, now=now)
        seen.append([(g.number, g.state.value) for g in generations])
    assert seen == [
        [(1, "Active"), (2, "Pending")],
        [(1, "Active"), (2, "Published")],
        [(1, "Active"), (2, "Verified")],
        [(1, "Active"), (2, "Active")],
        [(1, "Retiring"), (2, "Active")],
        [(1, "Retired"), (2, "Active")],
    ]


SWITCHED = [gen(1, S.ACTIVE, since=T0), gen(2, S.ACTIVE, created=T0 + DAY, since=T0 + DAY)]


@pytest.mark.parametrize(
    ("pools", "retires"),
    [
        ([], True),
        ([rotating.PoolSigning("a", frozenset({"mf-2"}))], True),
        ([rotating.PoolSigning("a", frozenset({"mf-2"})),
          rotating.PoolSigning("paused", frozenset({"mf-1"}))], False),
        ([rotating.PoolSigning("a", frozenset({"mf-1", "mf-2"}))], False),
        ([rotating.PoolSigning("silent", frozenset())], False),
    ],
    ids=[
        "no pool signs for the domain: the replaced key retires",
        "every pool signs with the new key: the replaced key retires",
        "a pool still signing with the old key holds its retirement, however long it takes",
        "a pool whose pods sign with both keys holds it",
        "a pool that reports no selector for the domain holds it",
    ],
)
def test_a_replaced_key_retires_only_when_every_pool_signs_with_the_new_one(
    pools: list[rotating.PoolSigning], retires: bool
) -> None:
    plan = rotating.plan_rotation(
        generations=SWITCHED, policy=POLICY, now=T0 + 30 * DAY, rotate_annotation="",
        dns={"mf-1": D.MATCH, "mf-2": D.MATCH}, pools=pools,
    )
    if retires:
        assert plan.transition is not None and plan.transition.reason == "KeyRetiring"
        assert plan.transition.changes == ((1, S.RETIRING),)
        assert plan.waiting_for == ()
    else:
        assert plan.transition is None
        assert plan.waiting_for


def test_the_overlap_is_at_least_the_ttl_of_the_record() -> None:
    short = dataclasses.replace(POLICY, overlap=datetime.timedelta(seconds=1))
    retiring = [gen(1, S.RETIRING, since=T0), gen(2, S.ACTIVE)]
    ttls = {"mf-1": datetime.timedelta(minutes=10)}

    def at(moment: datetime.datetime) -> rotating.Plan:
        return rotating.plan_rotation(
            generations=retiring, policy=short, now=moment, rotate_annotation="", dns={},
            ttls=ttls,
        )

    assert at(T0 + datetime.timedelta(minutes=9)).transition is None
    assert at(T0 + datetime.timedelta(minutes=9)).next_check == T0 + datetime.timedelta(
        minutes=10)
    late = at(T0 + datetime.timedelta(minutes=10)).transition
    assert late is not None and late.reason == "KeyRetired"


def test_a_key_is_marked_seen_when_every_nameserver_returns_it_and_unseen_when_one_loses_it(
) -> None:
    fresh = rotating.plan_rotation(
        generations=[gen(1, S.ACTIVE), gen(2, S.PUBLISHED)], policy=POLICY, now=T0,
        rotate_annotation="", dns={"mf-2": D.MATCH},
    )
    assert fresh.seen == (2,) and fresh.transition is None
    assert fresh.next_check is not None
    lost = rotating.plan_rotation(
        generations=[gen(1, S.ACTIVE), gen(2, S.PUBLISHED, seen=T0)], policy=POLICY,
        now=T0 + DAY, rotate_annotation="", dns={"mf-2": D.ABSENT},
    )
    assert lost.unseen == (2,) and lost.transition is None
    flaky = rotating.plan_rotation(
        generations=[gen(1, S.ACTIVE), gen(2, S.PUBLISHED, seen=T0)], policy=POLICY,
        now=T0 + DAY, rotate_annotation="", dns={"mf-2": D.FAILED},
    )
    assert flaky.unseen == () and flaky.transition is None


def test_new_selectors_are_deterministic_and_dual_gets_an_ed_suffix() -> None:
    assert rotating.selectors_for(prefix="mf", number=3, algorithms=("rsa-2048",)) == ("mf-3",)
    assert rotating.selectors_for(
        prefix="mf", number=3, algorithms=("rsa-2048", "ed25519")
    ) == ("mf-3", "mf-3-ed")


def test_a_dual_generation_is_verified_only_when_both_selectors_match() -> None:
    dual = gen(1, S.PUBLISHED, algorithms=("rsa-2048", "ed25519"), selectors=("mf-1", "mf-1-ed"))
    policy = dataclasses.replace(POLICY, algorithms=("rsa-2048", "ed25519"))
    half = rotating.plan_rotation(
        generations=[dual], policy=policy, now=T0, rotate_annotation="",
        dns={"mf-1": D.MATCH, "mf-1-ed": D.ABSENT},
    )
    both = rotating.plan_rotation(
        generations=[dataclasses.replace(dual, seen_at=T0)], policy=policy, now=T0 + TTL,
        rotate_annotation="", dns={"mf-1": D.MATCH, "mf-1-ed": D.MATCH},
    )
    assert half.transition is None and half.seen == ()
    assert both.transition is not None and both.transition.reason == "KeyVerified"


def test_retired_generations_beyond_the_history_limit_are_pruned_oldest_first() -> None:
    generations = [gen(n, S.RETIRED) for n in (1, 2, 3, 4)] + [gen(5, S.ACTIVE)]
    plan = rotating.plan_rotation(
        generations=generations, policy=POLICY, now=T0, rotate_annotation="", dns={}
    )
    assert plan.prune == (1, 2)


def test_a_key_published_longer_than_the_stall_threshold_is_reported_stalled() -> None:
    stuck = gen(2, S.PUBLISHED, since=T0)
    generations = [gen(1, S.ACTIVE), stuck]
    early = rotating.plan_rotation(
        generations=generations, policy=POLICY, now=T0 + datetime.timedelta(minutes=59),
        rotate_annotation="", dns={"mf-2": D.ABSENT},
    )
    late = rotating.plan_rotation(
        generations=generations, policy=POLICY, now=T0 + datetime.timedelta(hours=1),
        rotate_annotation="", dns={"mf-2": D.ABSENT},
    )
    assert early.stalled is None
    assert early.next_check == T0 + datetime.timedelta(hours=1)
    assert late.stalled == stuck
    assert late.transition is None


@pytest.mark.parametrize("age", [DAY, 90 * DAY, 400 * DAY],
                         ids=["rotated after a day", "rotated on schedule", "rotated late"])
def test_a_replaced_key_stays_published_for_the_overlap_after_the_switch(
    age: datetime.timedelta,
) -> None:
    """Walked in one-hour steps from an old key to its retirement: the old record is
    withdrawn no sooner than the overlap after the pools stopped signing with it (Retiring
    lasts the overlap), and so no sooner than the overlap after the switch, however old
    the key was when it was replaced."""
    hour = datetime.timedelta(hours=1)
    generations = [gen(1, S.ACTIVE, created=T0, since=T0 + TTL)]
    now = T0 + age
    dns = {"mf-1": D.MATCH, "mf-2": D.MATCH}
    entered: dict[tuple[int, str], datetime.datetime] = {}
    for _step in range(24 * 30):
        pools = [rotating.PoolSigning("marketing", frozenset(
            {"mf-2"} if entered.get((2, "Active")) else {"mf-1"}))]
        plan = rotating.plan_rotation(
            generations=generations, policy=POLICY, now=now, rotate_annotation="r", dns=dns,
            pools=pools,
        )
        generations = [dataclasses.replace(g, seen_at=now) if g.number in plan.seen else g
                       for g in generations]
        if plan.transition is not None:
            generations = rotating.apply_transition(generations, plan.transition, now=now)
            for g in generations:
                entered.setdefault((g.number, g.state.value), now)
        if (1, "Retired") in entered:
            break
        now += hour
    switch, retiring, retired = (entered[(2, "Active")], entered[(1, "Retiring")],
                                 entered[(1, "Retired")])
    assert retired - retiring >= POLICY.overlap
    assert retired - switch >= POLICY.overlap
    assert retired - retiring < POLICY.overlap + 2 * hour  # and not held for ever


def test_next_check_is_the_end_of_the_overlap_or_the_rotation_due_date() -> None:
    plan = rotating.plan_rotation(
        generations=[gen(1, S.RETIRING, since=T0 + DAY), gen(2, S.ACTIVE, created=T0)],
        policy=POLICY, now=T0 + DAY, rotate_annotation="", dns={},
    )
    assert plan.next_check == T0 + 8 * DAY
    assert plan.rotation_due_at == T0 + 90 * DAY
    old = rotating.plan_rotation(
        generations=[gen(1, S.RETIRING, created=T0 - 90 * DAY, since=T0 + DAY),
                     gen(2, S.ACTIVE, created=T0)],
        policy=POLICY, now=T0 + DAY, rotate_annotation="", dns={},
    )
    assert old.next_check == T0 + 8 * DAY
