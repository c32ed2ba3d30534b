"""The leader election rules (logic/leader_election.py), with injected monotonic times."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from mailfleet_operator import settings as settings_module
from mailfleet_operator.logic import leader_election as rules

SETTINGS = rules.ElectionSettings(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
WALL = datetime.datetime(2026, 12, 4, 18, 0, 0, 123456, tzinfo=datetime.UTC)


def lease(holder: str | None, *, renew: str = "2026-12-04T18:00:00.000000Z", rv: str = "7",
          transitions: int = 3, duration: int | None = 15) -> dict[str, Any]:
    spec: dict[str, Any] = {"renewTime": renew, "acquireTime": "2026-12-04T17:00:00.000000Z",
                            "leaseTransitions": transitions}
    if holder is not None:
        spec["holderIdentity"] = holder
    if duration is not None:
        spec["leaseDurationSeconds"] = duration
    return {"metadata": {"name": "leader", "namespace": "ops", "resourceVersion": rv},
            "spec": spec}


def decide_after(obj: dict[str, Any] | None, *, first_seen: float, now: float,
                 identity: str = "b") -> rules.Decision:
    record = rules.read_lease(obj)
    observation = rules.observe(None, record, now=first_seen)
    observation = rules.observe(observation, record, now=now)
    return rules.decide(lease=record, identity=identity, observation=observation, now=now,
                        settings=SETTINGS)


def test_an_absent_lease_is_acquired_at_once() -> None:
    decision = rules.decide(lease=None, identity="b", observation=None, now=0.0,
                            settings=SETTINGS)
    assert decision.action is rules.Action.ACQUIRE
    assert decision.reason == "LeaseAbsent"


def test_a_released_lease_is_acquired_at_once() -> None:
    assert decide_after(lease(None), first_seen=5.0, now=5.0).action is rules.Action.ACQUIRE


def test_our_own_lease_is_renewed() -> None:
    decision = decide_after(lease("b"), first_seen=0.0, now=0.0)
    assert (decision.action, decision.reason) == (rules.Action.RENEW, "Holding")


@pytest.mark.parametrize("elapsed", [0.0, 1.0, 14.9])
def test_another_holders_lease_is_not_taken_before_its_duration_by_our_clock(
        elapsed: float) -> None:
    decision = decide_after(lease("a"), first_seen=100.0, now=100.0 + elapsed)
    assert decision.action is rules.Action.WAIT
    assert decision.wait == pytest.approx(15.0 - elapsed)


def test_a_renew_time_far_in_the_past_by_wall_clock_does_not_shorten_the_wait() -> None:
    """A skewed writer: its renewTime says a year ago; we still wait a full duration from
    when we first saw the Lease like this."""
    skewed = lease("a", renew="2025-01-01T00:00:00.000000Z")
    assert decide_after(skewed, first_seen=100.0, now=100.0).action is rules.Action.WAIT
    assert decide_after(skewed, first_seen=100.0, now=114.0).action is rules.Action.WAIT
    assert decide_after(skewed, first_seen=100.0, now=115.0).action is rules.Action.ACQUIRE


def test_an_unchanged_lease_is_taken_once_its_duration_passed_by_our_clock() -> None:
    decision = decide_after(lease("a"), first_seen=100.0, now=115.0)
    assert (decision.action, decision.reason) == (rules.Action.ACQUIRE, "LeaseExpired")


def test_any_change_of_the_lease_restarts_the_count() -> None:
    first = rules.observe(None, rules.read_lease(lease("a", rv="7")), now=100.0)
    renewed = rules.read_lease(lease("a", rv="8", renew="2026-12-04T18:00:02.000000Z"))
    observation = rules.observe(first, renewed, now=114.0)
    assert observation is not None and observation.observed_at == 114.0
    decision = rules.decide(lease=renewed, identity="b", observation=observation, now=120.0,
                            settings=SETTINGS)
    assert decision.action is rules.Action.WAIT


def test_a_lease_never_observed_as_it_is_counts_from_now() -> None:
    record = rules.read_lease(lease("a"))
    decision = rules.decide(lease=record, identity="b", observation=None, now=1000.0,
                            settings=SETTINGS)
    assert decision.action is rules.Action.WAIT and decision.wait == 15.0


def test_a_holder_advertising_a_longer_lease_is_waited_out_in_full() -> None:
    longer = lease("a", duration=40)
    assert decide_after(longer, first_seen=0.0, now=20.0).action is rules.Action.WAIT
    assert decide_after(longer, first_seen=0.0, now=40.0).action is rules.Action.ACQUIRE


def test_a_holder_change_increments_lease_transitions_and_sets_acquire_time() -> None:
    spec = rules.build_lease_spec(current=rules.read_lease(lease("a", transitions=3)),
                                  identity="b", settings=SETTINGS, now=WALL)
    assert spec == {
        "holderIdentity": "b",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-04T18:00:00.123456Z",
        "renewTime": "2026-12-04T18:00:00.123456Z",
        "leaseTransitions": 4,
    }


def test_a_renewal_keeps_acquire_time_and_transitions() -> None:
    spec = rules.build_lease_spec(current=rules.read_lease(lease("b", transitions=3)),
                                  identity="b", settings=SETTINGS, now=WALL)
    assert spec["acquireTime"] == "2026-12-04T17:00:00.000000Z"
    assert spec["renewTime"] == "2026-12-04T18:00:00.123456Z"
    assert spec["leaseTransitions"] == 3


def test_a_new_lease_starts_at_zero_transitions() -> None:
    spec = rules.build_lease_spec(current=None, identity="b", settings=SETTINGS, now=WALL)
    assert spec["leaseTransitions"] == 0


def test_the_write_carries_the_resource_version_it_was_computed_from() -> None:
    body = rules.build_lease(name="leader", namespace="ops", spec={"holderIdentity": "b"},
                             resource_version="7")
    assert body["metadata"] == {"name": "leader", "namespace": "ops", "resourceVersion": "7"}
    created = rules.build_lease(name="leader", namespace="ops", spec={}, resource_version=None)
    assert "resourceVersion" not in created["metadata"]


def test_micro_time_is_rfc3339_utc_with_microseconds() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    moment = datetime.datetime(2026, 12, 4, 20, 0, 0, 5, tzinfo=plus_two)
    assert rules.format_micro_time(moment) == "2026-12-04T18:00:00.000005Z"


@pytest.mark.parametrize(("last_renew", "now", "leading"), [
    (None, 0.0, False),
    (100.0, 100.0, True),
    (100.0, 109.99, True),
    (100.0, 110.0, False),
    (100.0, 500.0, False),
])
def test_a_leader_leads_only_within_the_renew_deadline_of_its_last_renewal(
        last_renew: float | None, now: float, leading: bool) -> None:
    assert rules.is_leading(last_renew=last_renew, now=now, renew_deadline=10.0) is leading


@pytest.mark.parametrize(("duration", "deadline", "retry"), [
    (10.0, 10.0, 2.0), (15.0, 10.0, 10.0), (15.0, 20.0, 2.0), (15.0, 10.0, 0.0)])
def test_timings_that_do_not_nest_are_refused(duration: float, deadline: float,
                                              retry: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        rules.ElectionSettings(lease_duration=duration, renew_deadline=deadline,
                               retry_period=retry)


def test_settings_default_to_controller_runtime_timings_and_refuse_bad_nesting() -> None:
    settings = settings_module.Settings()
    assert (settings.leader_election, settings.leader_lease_name) == (
        True, "mailfleet-operator-leader")
    assert (settings.leader_lease_duration, settings.leader_renew_deadline,
            settings.leader_retry_period) == (15.0, 10.0, 2.0)
    with pytest.raises(ValueError, match="leader_renew_deadline < leader_lease_duration"):
        settings_module.Settings.from_env({"MAILFLEET_OPERATOR_LEADER_RENEW_DEADLINE": "15"})
    off = settings_module.Settings.from_env({"MAILFLEET_OPERATOR_LEADER_ELECTION": "false"})
    assert off.leader_election is False
