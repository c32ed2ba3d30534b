"""One DKIM rotation told step by step, as a user reads it in the DKIMKey's events and status:
each step's reason and message (which selector, what waits for what, how long), the state the
generations are in afterwards, and when the operator looks again. The table cases in
test_dkim_rotating.py pin the single decisions; this pins what is said about them."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from mailfleet_operator.logic import rotating

S = rotating.KeyState
D = rotating.DnsCheck
T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
MIN = datetime.timedelta(minutes=1)
POLICY = rotating.Policy(
    algorithms=("rsa-2048",),
    selector_prefix="mf",
    rotate_every=90 * DAY,
    overlap=7 * DAY,
    history_limit=1,
    stall_after=datetime.timedelta(hours=1),
    default_ttl=5 * MIN,
)


def gen(number: int, state: rotating.KeyState, *, at: datetime.datetime = T0,
        since: datetime.datetime | None = None, **changes: object) -> rotating.Generation:
    base = rotating.Generation(number=number, algorithms=("rsa-2048",),
                               selectors=(f"mf-{number}",), state=state, created_at=at,
                               state_since=since or at)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def plan(gens: list[rotating.Generation], now: datetime.datetime, **extra: object) -> rotating.Plan:
    arguments: dict[str, object] = {"rotate_annotation": "", "dns": {}, "policy": POLICY}
    arguments.update(extra)
    return rotating.plan_rotation(generations=gens, now=now, **arguments)  # type: ignore[arg-type]


def said(result: rotating.Plan) -> tuple[str, str] | None:
    t = result.transition
    return None if t is None else (t.reason, t.message)


def test_a_rotation_from_request_to_retirement_says_what_happens_and_when() -> None:
    now = T0 + 10 * DAY
    gens = [gen(1, S.ACTIVE)]
    step = plan(gens, now, rotate_annotation="2025-01-11")
    assert said(step) == ("RotationRequested", "annotation mailfleet.io/rotate='2025-01-11': "
                          "rotating; new key generation 2, selector mf-2")
    assert step.transition is not None
    assert step.transition.create == rotating.NewGeneration(2, ("rsa-2048",), ("mf-2",),
                                                            "2025-01-11")
    gens = rotating.apply_transition(gens, step.transition, now=now)
    assert gens[-1] == gen(2, S.PENDING, at=now, trigger="2025-01-11")
    # The same annotation does not ask again once a generation was made for it.
    done = [gen(1, S.RETIRED), dataclasses.replace(gens[1], state=S.ACTIVE)]
    assert plan(done, now, rotate_annotation="2025-01-11").transition is None

    step = plan(gens, now, rotate_annotation="2025-01-11")
    assert said(step) == ("KeyPublished", "record for selector mf-2 published")
    assert step.transition is not None
    gens = rotating.apply_transition(gens, step.transition, now=now)
    assert gens[-1].state is S.PUBLISHED and gens[-1].state_since == now
    assert gens[-1].trigger == "2025-01-11"
    # Published and not yet seen: look again when it would count as stalled.
    waiting = plan(gens, now + 10 * MIN, dns={"mf-2": D.ABSENT})
    assert waiting.transition is None and waiting.next_check == now + 60 * MIN
    assert waiting.stalled is None
    stalled = plan(gens, now + 60 * MIN, dns={"mf-2": D.ABSENT})
    assert stalled.stalled == gens[-1]

    seen_at = now + 20 * MIN
    seen = plan(gens, seen_at, dns={"mf-2": D.MATCH})
    assert seen.seen == (2,) and seen.unseen == ()
    gens[-1] = dataclasses.replace(gens[-1], seen_at=seen_at)
    early = plan(gens, seen_at + 2 * MIN, dns={"mf-2": D.MATCH})
    assert early.transition is None and early.next_check == seen_at + 5 * MIN
    lost = plan(gens, seen_at + 2 * MIN, dns={"mf-2": D.MISMATCH})
    assert lost.unseen == (2,) and lost.seen == ()
    step = plan(gens, seen_at + 5 * MIN, dns={"mf-2": D.MATCH})
    assert said(step) == ("KeyVerified", "every authoritative nameserver has returned the key "
                          "of selector mf-2 for one TTL (5m)")
    assert step.transition is not None
    gens = rotating.apply_transition(gens, step.transition, now=seen_at + 5 * MIN)

    switch_at = seen_at + 6 * MIN
    step = plan(gens, switch_at, dns={"mf-2": D.MATCH})
    assert said(step) == ("KeyActivated", "selector mf-2 is now Active; mf-1 stays published "
                          "and retires once every SendingPool signs with mf-2")
    assert step.transition is not None and step.transition.kind is rotating.TransitionKind.SWITCH
    gens = rotating.apply_transition(gens, step.transition, now=switch_at)
    assert [(g.number, g.state) for g in gens] == [(1, S.ACTIVE), (2, S.ACTIVE)]

    pools = [
        rotating.PoolSigning("bulk", frozenset({"mf-1", "mf-2"})),
        rotating.PoolSigning("alerts", frozenset()),
        rotating.PoolSigning("news", frozenset({"mf-2"})),
    ]
    held = plan(gens, switch_at, pools=pools)
    assert held.transition is None
    assert held.waiting_for == ("SendingPool alerts reports no selector for the domain",
                                "SendingPool bulk still signs with mf-1")
    retire_at = switch_at + 3 * DAY
    step = plan(gens, retire_at, pools=[rotating.PoolSigning("bulk", frozenset({"mf-2"}))])
    assert said(step) == ("KeyRetiring", "every SendingPool signs with mf-2: mf-1 stays "
                          "published for 7d, then retires")
    assert step.transition is not None
    assert step.transition.changes == ((1, S.RETIRING),)
    gens = rotating.apply_transition(gens, step.transition, now=retire_at)
    assert gens[0].state_since == retire_at  # the overlap counts from the switch, not creation

    assert plan(gens, retire_at + 7 * DAY - MIN).transition is None
    assert plan(gens, retire_at + DAY).next_check == retire_at + 7 * DAY
    step = plan(gens, retire_at + 7 * DAY)
    assert said(step) == ("KeyRetired", "selector mf-1 retired after an overlap of 7d with no "
                          "pool signing with it; its record is withdrawn")


def test_rotation_is_due_by_age_and_by_a_changed_algorithm() -> None:
    gens = [gen(1, S.ACTIVE)]
    assert plan(gens, T0 + 89 * DAY).next_check == T0 + 90 * DAY
    step = plan(gens, T0 + 90 * DAY)
    assert said(step) == ("RotationDue", "Active key is older than 90d: rotating; new key "
                          "generation 2, selector mf-2")
    dual = dataclasses.replace(POLICY, algorithms=("rsa-2048", "ed25519"))
    step = plan(gens, T0 + DAY, policy=dual)
    assert said(step) == ("AlgorithmChanged", "spec asks for rsa-2048+ed25519, Active key is "
                          "rsa-2048: rotating; new key generation 2, selector mf-2, mf-2-ed")
    assert said(plan([], T0)) == ("KeyGenerated", "no Active key: generating one; new key "
                                  "generation 1, selector mf-1")
    # A number another Secret of the same name already took is skipped.
    step = plan([], T0, taken=4)
    assert step.transition is not None and step.transition.create is not None
    assert step.transition.create.number == 5
    step = plan(gens, T0 + 90 * DAY, taken=1)
    assert step.transition is not None and step.transition.create is not None
    assert step.transition.create.number == 2


def test_an_interrupted_dual_generation_is_completed_under_the_same_names() -> None:
    dual = dataclasses.replace(POLICY, algorithms=("rsa-2048", "ed25519"))
    half = gen(2, S.PENDING, algorithms=("rsa-2048", "ed25519"), selectors=("mf-2",),
               trigger="t")
    step = plan([gen(1, S.ACTIVE), half], T0, policy=dual)
    assert step.transition == rotating.Transition(
        kind=rotating.TransitionKind.CREATE, reason="KeyGenerated",
        message="completing key generation 2",
        create=rotating.NewGeneration(2, ("rsa-2048", "ed25519"), ("mf-2", "mf-2-ed"), "t"),
    )
    done = rotating.apply_transition([gen(1, S.ACTIVE), half], step.transition, now=T0 + DAY)
    assert done == [gen(1, S.ACTIVE), dataclasses.replace(half, selectors=("mf-2", "mf-2-ed"))]


def test_retired_generations_beyond_the_history_limit_are_pruned_oldest_first() -> None:
    gens = [gen(1, S.RETIRED), gen(2, S.RETIRED), gen(3, S.RETIRED), gen(4, S.ACTIVE)]
    assert plan(gens, T0).prune == (1, 2)
    none_kept = dataclasses.replace(POLICY, history_limit=0)
    assert plan(gens, T0, policy=none_kept).prune == (1, 2, 3)
    negative = dataclasses.replace(POLICY, history_limit=-1)
    assert plan(gens, T0, policy=negative).prune == (1, 2, 3)


def test_a_long_ttl_stretches_the_verification_wait_and_the_overlap() -> None:
    ttls = {"mf-2": 2 * DAY + datetime.timedelta(seconds=1), "mf-1": 8 * DAY}
    published = gen(2, S.PUBLISHED, seen_at=T0)
    step = plan([gen(1, S.ACTIVE), published], T0 + 2 * DAY, dns={"mf-2": D.MATCH}, ttls=ttls)
    assert step.transition is None
    step = plan([gen(1, S.ACTIVE), published], T0 + 3 * DAY, dns={"mf-2": D.MATCH}, ttls=ttls)
    assert said(step) == ("KeyVerified", "every authoritative nameserver has returned the key "
                          "of selector mf-2 for one TTL (172801s)")
    retiring = [gen(1, S.RETIRING, since=T0), gen(2, S.ACTIVE)]
    assert plan(retiring, T0 + 7 * DAY, ttls=ttls).transition is None
    assert plan(retiring, T0, ttls=ttls).next_check == T0 + 8 * DAY
    assert said(plan(retiring, T0 + 8 * DAY, ttls=ttls)) == (
        "KeyRetired", "selector mf-1 retired after an overlap of 8d with no pool signing with "
        "it; its record is withdrawn")


@pytest.mark.parametrize(
    ("overlap", "shown"),
    [
        (datetime.timedelta(hours=36), "36h"),
        (datetime.timedelta(hours=24), "1d"),
        (datetime.timedelta(minutes=90), "90m"),
        (datetime.timedelta(seconds=61), "61s"),
        (datetime.timedelta(seconds=59), "59s"),
    ],
)
def test_durations_in_messages_use_the_largest_whole_unit(
    overlap: datetime.timedelta, shown: str
) -> None:
    policy = dataclasses.replace(POLICY, overlap=overlap, default_ttl=datetime.timedelta(0))
    step = plan([gen(1, S.ACTIVE), gen(2, S.ACTIVE)], T0, policy=policy)
    assert step.transition is not None
    assert step.transition.message.endswith(f"mf-1 stays published for {shown}, then retires")


def kind(result: rotating.Plan) -> rotating.TransitionKind | None:
    return None if result.transition is None else result.transition.kind


def test_each_step_is_of_its_kind_and_dual_keys_are_named_by_both_selectors() -> None:
    K = rotating.TransitionKind
    dual = dict(algorithms=("rsa-2048", "ed25519"), selectors=("mf-1", "mf-1-ed"))
    assert kind(plan([], T0)) is K.CREATE
    assert kind(plan([gen(1, S.PENDING)], T0)) is K.ADVANCE
    first = plan([gen(1, S.VERIFIED, **dual)], T0, dns={"mf-1": D.MATCH, "mf-1-ed": D.MATCH})
    assert kind(first) is K.SWITCH
    assert said(first) == ("KeyActivated", "selector mf-1+mf-1-ed is now Active")
    seen = plan([gen(1, S.PUBLISHED, seen_at=T0)], T0 + DAY, dns={"mf-1": D.MATCH})
    assert kind(seen) is K.ADVANCE
    assert kind(plan([gen(1, S.RETIRING), gen(2, S.ACTIVE)], T0 + 8 * DAY)) is K.ADVANCE
    back = plan([gen(1, S.ACTIVE, **dual)], T0 + DAY)
    assert said(back) == ("AlgorithmChanged", "spec asks for rsa-2048, Active key is "
                          "rsa-2048+ed25519: rotating; new key generation 2, selector mf-2")


def test_several_replaced_keys_retire_together_once_every_pool_switched() -> None:
    gens = [gen(1, S.ACTIVE), gen(2, S.ACTIVE), gen(3, S.ACTIVE)]
    pools = [rotating.PoolSigning("bulk", frozenset({"mf-1", "mf-2", "mf-3"}))]
    assert plan(gens, T0, pools=pools).waiting_for == (
        "SendingPool bulk still signs with mf-1, mf-2",)
    step = plan(gens, T0)
    assert kind(step) is rotating.TransitionKind.RETIRE
    assert said(step) == ("KeyRetiring", "every SendingPool signs with mf-3: mf-1, mf-2 stays "
                          "published for 7d, then retires")
    assert step.transition is not None
    assert step.transition.changes == ((1, S.RETIRING), (2, S.RETIRING))
    switching = [gen(1, S.ACTIVE), gen(2, S.VERIFIED)]
    step = plan(switching, T0, dns={"mf-2": D.MATCH})
    assert said(step) == ("KeyActivated", "selector mf-2 is now Active; mf-1 stays published "
                          "and retires once every SendingPool signs with mf-2")


def test_with_one_active_key_no_pool_is_waited_for() -> None:
    pools = [rotating.PoolSigning("bulk", frozenset({"mf-0"}))]
    assert plan([gen(1, S.ACTIVE)], T0, pools=pools).waiting_for == ()


def test_only_a_published_key_is_recorded_as_seen() -> None:
    pending = plan([gen(1, S.ACTIVE), gen(2, S.PENDING)], T0, dns={"mf-2": D.MATCH})
    assert pending.seen == ()
    published = plan([gen(1, S.ACTIVE), gen(2, S.PUBLISHED)], T0, dns={"mf-2": D.MATCH})
    assert published.seen == (2,)
