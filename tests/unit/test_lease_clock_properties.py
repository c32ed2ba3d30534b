"""Property tests: egress-IP leases and leader election stay exclusive under skewed clocks,
delayed and lost messages.

Each test is a small simulation on one true timeline. Every party keeps its own clock,
`local = offset + rate * true` (the offsets are arbitrary: nobody compares another party's
readings), and runs the project's own pure logic on its own readings: the operator
`assigning.record_intent` / `record_answer` / `lease_is_live` (as `reconcile.pool_leases`
applies them: every PUT raises the bound to `sent + request timeout + TTL + skew`, an answer
sets it to `answered + TTL + skew`), the sender its `leases.LeaseTable` on an injected
monotonic clock (its wall clock stepping wildly), a new operator replica
`leader_election.observe` / `decide` and the old one `is_leading`.

Clock skew is a rate difference: the configured allowance `skew` covers an operator clock
running up to `skew / TTL` faster than the pod's (over one lease, at most `skew` seconds
more). Hypothesis draws rates anywhere within that bound (and slower), any latency a request
can have before the operator's client gives up (`requestTimeout`: a request is delivered
within it or not at all, the model's one assumption about the network), and any pattern of
lost requests and lost answers. A control case with skew beyond the bound shows the check
can fail. Examples are bounded so tests/unit stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailfleet_operator.logic import assigning, leader_election
from mailfleet_sender import clock, leases, wire

IP = "192.0.2.10"
EPOCH = 7
EPSILON = 1e-6  # float rounding over offsets of 10^6 s; far below any real margin
BASE = datetime(2030, 1, 1)
PROPERTY = settings(max_examples=150, deadline=None)


@dataclasses.dataclass(frozen=True)
class ClockModel:
    """`local = offset + rate * true`."""

    offset: float
    rate: float

    def local(self, true: float) -> float:
        return self.offset + self.rate * true

    def true(self, local: float) -> float:
        return (local - self.offset) / self.rate


@dataclasses.dataclass(frozen=True)
class Fate:
    """What happens to one PUT: delivered or lost, how late (as a share of the time left
    before the operator's timeout), whether the answer makes it back, and how late."""

    delivered: bool
    latency: float
    answered: bool
    answer_latency: float


@dataclasses.dataclass(frozen=True)
class Timing:
    ttl: float
    request_timeout: float
    skew: float
    renew_interval: float
    margin: float


@st.composite
def timings(draw: st.DrawFn) -> Timing:
    ttl = draw(st.floats(2.0, 30.0))
    return Timing(
        ttl=ttl,
        request_timeout=draw(st.floats(0.1, 5.0)),
        skew=draw(st.floats(0.0, 3.0)),
        renew_interval=draw(st.floats(0.3, ttl / 2)),
        margin=draw(st.floats(0.0, min(2.0, ttl / 4))),
    )


offsets = st.floats(-1e6, 1e6)
fates = st.builds(
    Fate,
    delivered=st.booleans(),
    latency=st.floats(0.0, 1.0),
    answered=st.booleans(),
    answer_latency=st.floats(0.0, 1.0),
)


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def grant(generation: int, *, ttl: float, epoch: int = EPOCH) -> wire.Assignment:
    return wire.Assignment(
        generation=generation,
        leases=[wire.Lease(address=IP, helo_name="mx.example.com", ttl_seconds=ttl,
                           epoch=epoch)],
    )


class Pod:
    """A sender pod: its lease table on its own monotonic clock; the wall clock it also has
    is stepped far away to show the table never reads it."""

    def __init__(self, model: ClockModel) -> None:
        self.model = model
        self.now = 0.0
        self.table = leases.LeaseTable(
            clock.Clock(wall=lambda: -3e9 + self.now * 1e3, monotonic=lambda: self.now)
        )
        self.last_deadline: float | None = None

    def receive(self, assignment: wire.Assignment, *, true: float) -> bool:
        """Apply at true time `true`; whether the pod holds the IP afterwards."""
        self.now = self.model.local(true)
        try:
            self.table.apply(assignment, sent_today={})
        except leases.StaleAssignment:
            pass
        source = self.table.get(IP)
        held = source is not None and source.valid(self.now)
        if held and source is not None:
            self.last_deadline = max(self.last_deadline or source.deadline, source.deadline)
        return held

    def last_send(self, margin: float) -> float | None:
        """True time after which the pod sends nothing from the IP: no attempt starts with
        `margin` or less left, and a running one is cut at deadline minus margin."""
        if self.last_deadline is None:
            return None
        return self.model.true(self.last_deadline - margin)


def hand_over(
    timing: Timing,
    operator: ClockModel,
    old: ClockModel,
    new: ClockModel,
    plan: list[Fate],
    new_latency: float,
) -> tuple[float | None, float, float]:
    """Grant the IP to pod A, renew it through `plan` (A's last PUTs may all be lost: a
    partition), then move it to pod B once the operator's record allows. Returns A's last
    sending instant, when B's grant left the operator, when B received it (true times)."""
    pod_a = Pod(old)
    first = assigning.PodAssignment(pod="a", pod_uid="uid-a", ips=(IP,), send=True,
                                    granted=(IP,))
    rt = timedelta(seconds=timing.request_timeout)
    skew = timedelta(seconds=timing.skew)
    duration = assigning.AssignmentSettings(lease_duration=timedelta(seconds=timing.ttl))
    record: assigning.Lease | None = None
    sent = 0.0  # operator clock, relative to its offset
    for generation, fate in enumerate(plan, start=1):
        sent_local = operator.offset + sent
        intent = assigning.record_intent({}, first, now=at(sent_local), settings=duration,
                                         request_timeout=rt, skew=skew)[IP]
        record = intent if record is None or intent.expires_at > record.expires_at else \
            dataclasses.replace(record, released=False)
        sent_true = operator.true(sent_local)
        give_up = operator.true(sent_local + timing.request_timeout)
        next_send = sent + max(timing.renew_interval, timing.request_timeout)
        if fate.delivered:
            received = sent_true + fate.latency * (give_up - sent_true)
            held = pod_a.receive(grant(generation, ttl=timing.ttl), true=received)
            if fate.answered:
                answered_true = received + fate.answer_latency * (give_up - received)
                answered = operator.local(answered_true)
                record = assigning.record_answer(
                    {IP: record}, first, held=[IP] if held else [], answered_at=at(answered),
                    settings=duration, skew=skew,
                )[IP]
                next_send = max(sent + timing.renew_interval, answered - operator.offset)
        sent = next_send
    assert record is not None
    # Pod A is failed from here on: nothing more is sent to it. The IP moves once the record
    # says no pod may be sending on it.
    move = operator.offset + sent
    if assigning.lease_is_live(record, pods_by_name={}, now=at(move)):
        move = max(move, (record.expires_at - BASE).total_seconds())
    assert not assigning.lease_is_live(record, pods_by_name={}, now=at(move))
    granted_true = operator.true(move)
    received_b = granted_true + new_latency * timing.request_timeout / operator.rate
    pod_b = Pod(new)
    assert pod_b.receive(grant(1, ttl=timing.ttl, epoch=EPOCH + 1), true=received_b)
    return pod_a.last_send(timing.margin), granted_true, received_b


@st.composite
def operator_within_bound(draw: st.DrawFn, timing: Timing, pod_rate: float) -> ClockModel:
    """An operator clock between half the pod's rate and `1 + skew / TTL` times it."""
    factor = draw(st.floats(0.5, 1.0 + timing.skew / timing.ttl))
    return ClockModel(offset=draw(offsets), rate=pod_rate * factor)


@st.composite
def hand_over_cases(
    draw: st.DrawFn,
) -> tuple[Timing, ClockModel, ClockModel, ClockModel, list[Fate], float]:
    timing = draw(timings())
    old = ClockModel(offset=draw(offsets), rate=draw(st.floats(0.5, 2.0)))
    new = ClockModel(offset=draw(offsets), rate=draw(st.floats(0.5, 2.0)))
    operator = draw(operator_within_bound(timing, old.rate))
    plan = draw(st.lists(fates, min_size=1, max_size=25))
    return timing, operator, old, new, plan, draw(st.floats(0.0, 1.0))


@PROPERTY
@given(case=hand_over_cases())
def test_an_ip_never_has_two_senders_whatever_the_skew_latency_and_loss(
    case: tuple[Timing, ClockModel, ClockModel, ClockModel, list[Fate], float],
) -> None:
    """The old holder's last sending instant (its own TTL from its last receipt, minus the
    margin) lies before the new grant even leaves the operator, so before B can send."""
    last_a, granted, received_b = hand_over(*case)
    if last_a is not None:
        assert last_a <= granted + EPSILON, (last_a, granted)
        assert last_a <= received_b + EPSILON


def test_the_check_sees_double_sending_when_the_skew_exceeds_its_allowance() -> None:
    """Control: an operator clock 20 % fast against a 10 % allowance (1 s over 10 s), every
    renewal delivered as late as allowed and every answer lost, no margin: the new grant
    leaves while A may still send. So the property above is not vacuous."""
    timing = Timing(ttl=10.0, request_timeout=2.0, skew=1.0, renew_interval=3.0, margin=0.0)
    plan = [Fate(delivered=True, latency=1.0, answered=False, answer_latency=0.0)] * 3
    last_a, granted, _ = hand_over(timing, ClockModel(0.0, 1.2), ClockModel(5.0, 1.0),
                                   ClockModel(9.0, 1.0), plan, 0.0)
    assert last_a is not None and last_a > granted


@PROPERTY
@given(
    margin=st.floats(0.0, 5.0),
    ttls=st.lists(st.floats(0.5, 30.0), min_size=12, max_size=12),
    gaps=st.lists(st.floats(0.0, 40.0), min_size=12, max_size=12),
    epochs=st.lists(st.integers(0, 4), min_size=12, max_size=12),
    order=st.permutations(range(12)),
)
def test_the_pod_table_refuses_old_epochs_and_never_revives_an_ended_lease(
    margin: float, ttls: list[float], gaps: list[float], epochs: list[int], order: list[int]
) -> None:
    """Grants delivered in any order at any delays (a queued request, a deposed operator):
    the pod never holds an epoch lower than one it accepted, a renewal of an epoch that ran
    out here never brings it back, and no attempt may start with `margin` or less left."""
    now = 1000.0
    table = leases.LeaseTable(clock.Clock(wall=lambda: 0.0, monotonic=lambda: now))
    highest = -1
    ended: set[int] = set()
    for step, index in enumerate(order[: len(ttls)]):
        now += gaps[step]
        before = table.get(IP)
        if before is not None and not before.valid(now):
            ended.add(before.epoch)
        epoch = epochs[index]
        try:
            table.apply(grant(index + 1, ttl=ttls[index], epoch=epoch), sent_today={})
        except leases.StaleAssignment:
            assert epoch < highest or table.generation > index + 1
            continue
        source = table.get(IP)
        if epoch in ended or epoch < highest:
            assert source is None or source.epoch != epoch or not source.valid(now)
        if source is not None and source.valid(now):
            highest = max(highest, source.epoch)
            assert source.deadline == pytest.approx(now + ttls[index])
        usable = table.usable(margin)
        assert all(s.remaining(now) > margin for s in usable)


@dataclasses.dataclass(frozen=True)
class Write:
    """An old leader's renewal: when it left (true), whether and how late it landed, and
    whether its answer came back."""

    landed: bool
    latency: float
    answered: bool


@PROPERTY
@given(
    durations=st.tuples(st.floats(0.5, 5.0), st.floats(1.1, 3.0), st.floats(1.01, 2.0)),
    old_rate=st.floats(0.5, 2.0),
    new_rate_share=st.floats(0.3, 1.0),
    offsets_=st.tuples(offsets, offsets),
    writes=st.lists(st.builds(Write, landed=st.booleans(), latency=st.floats(0.0, 1.0),
                              answered=st.booleans()), min_size=1, max_size=15),
    polls=st.lists(st.floats(0.01, 3.0), min_size=1, max_size=60),
)
def test_a_deposed_leader_stops_before_another_replica_takes_over(
    durations: tuple[float, float, float],
    old_rate: float,
    new_rate_share: float,
    offsets_: tuple[float, float],
    writes: list[Write],
    polls: list[float],
) -> None:
    """Leader election with the old leader's renewals delayed or lost and the replicas'
    clocks at different rates: the new replica's clock may run up to `leaseDuration /
    renewDeadline` times the old one's (the bound the settings' ordering buys). The old
    leader counts itself leader until `renewDeadline` after the last answered renewal *left*;
    the new replica acquires (an atomic conditional write) only when `decide` says so, and
    from then on the old leader's writes fail: the new leader's first instant is after the
    old one's last."""
    retry, deadline_share, duration_share = durations
    election = leader_election.ElectionSettings(
        retry_period=retry, renew_deadline=retry * deadline_share,
        lease_duration=retry * deadline_share * duration_share,
    )
    old = ClockModel(offsets_[0], old_rate)
    bound = election.lease_duration / election.renew_deadline
    new = ClockModel(offsets_[1], old_rate * (1 + new_rate_share * (bound - 1)))
    def leading(at_true: float, *, by: float) -> bool:
        """Whether the old leader counts itself leader at `at_true`, given the renewals
        answered by `by`: each conditional write either lands (and is answered) before the
        other replica takes over, or meets a changed resourceVersion and fails."""
        sent_ok = [s for s, w, ok in log if ok and w is not None and w <= by]
        return leader_election.is_leading(
            last_renew=old.local(max(sent_ok, default=0.0)), now=old.local(at_true),
            renew_deadline=election.renew_deadline,
        )

    log: list[tuple[float, float | None, bool]] = [(0.0, 0.0, True)]  # sent, landed, answered
    t = 0.0
    for write in writes:
        t = old.true(old.local(t) + election.retry_period)
        if not leading(t, by=t):
            break  # it stopped leading: it renews no more
        log.append((t, t + write.latency * retry if write.landed else None, write.answered))
    landed = sorted((w, version) for version, (_, w, _) in enumerate(log, start=1)
                    if w is not None)
    observation: leader_election.Observation | None = None
    now = 0.0
    for poll in polls:
        now += poll
        current = max((v for w, v in landed if w <= now), default=None)
        record = None if current is None else leader_election.LeaseRecord(
            holder="old", lease_duration_seconds=math.ceil(election.lease_duration),
            acquire_time="a", renew_time=f"r{current}", lease_transitions=0,
            resource_version=str(current),
        )
        observation = leader_election.observe(observation, record, now=new.local(now))
        decision = leader_election.decide(lease=record, identity="new", observation=observation,
                                          now=new.local(now), settings=election)
        if decision.action is leader_election.Action.ACQUIRE:
            assert not leading(now + EPSILON, by=now), now
            return
