"""Warm-up schedules: the daily quota a user expects on each day, capped at the target, and a
clear problem with the field path for every schedule that could never complete."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_operator.api import ipwarmup
from mailfleet_operator.logic import schedules
from mailfleet_operator.logic.schedules import (
    ExponentialSchedule,
    LinearSchedule,
    ProviderShare,
    StepsSchedule,
)

CLASSIC = LinearSchedule(start=500, increment=500)


@pytest.mark.parametrize(
    ("schedule", "target", "expected"),
    [
        pytest.param(
            CLASSIC, 5000, [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000],
            id="the classic linear schedule sends 500 on day one and 500 more every day",
        ),
        pytest.param(
            LinearSchedule(start=500, increment=1000), 2000, [500, 1500, 2000],
            id="a linear schedule that overshoots the target is capped at the target",
        ),
        pytest.param(
            ExponentialSchedule(start=200, factor=2), 3000, [200, 400, 800, 1600, 3000],
            id="an exponential schedule doubles each day until capped at the target",
        ),
        pytest.param(
            ExponentialSchedule(start=100, factor=1.5), 500, [100, 150, 225, 337, 500],
            id="exponential quotas are rounded down to whole messages",
        ),
        pytest.param(
            ExponentialSchedule(start=1000, factor=1.1), 1500, [1000, 1100, 1210, 1331, 1464, 1500],
            id="floating point error never loses a message (1000 x 1.1^3 is 1331, not 1330)",
        ),
        pytest.param(
            StepsSchedule(steps=(50, 100, 500, 1000)), 1000, [50, 100, 500, 1000],
            id="explicit steps give one quota per day",
        ),
        pytest.param(
            StepsSchedule(steps=(50, 100, 5000, 6000)), 1000, [50, 100, 1000],
            id="a step above the target is capped and ends the warm-up on that day",
        ),
        pytest.param(
            LinearSchedule(start=5000, increment=500), 5000, [5000],
            id="a schedule that starts at its target is a one day warm-up",
        ),
    ],
)
def test_plan_quotas_day_by_day(
    schedule: schedules.Schedule, target: int, expected: list[int]
) -> None:
    assert schedules.plan_quotas(schedule, target) == expected
    assert schedules.days_to_target(schedule, target) == len(expected)


@pytest.mark.parametrize(
    ("schedule", "day", "expected"),
    [
        pytest.param(CLASSIC, 400, 5000, id="a linear schedule stays at the target after it"),
        pytest.param(
            ExponentialSchedule(start=100, factor=3), 100_000, 5000,
            id="an exponential schedule far past its target does not overflow",
        ),
        pytest.param(
            StepsSchedule(steps=(100, 5000)), 9, 5000,
            id="days past the last step keep the last step's quota",
        ),
        pytest.param(
            StepsSchedule(steps=(100, 200)), 9, 200,
            id="an invalid steps schedule ending below the target stays at its last step",
        ),
    ],
)
def test_quota_after_the_schedule(schedule: schedules.Schedule, day: int, expected: int) -> None:
    assert schedules.quota_for_day(schedule, day, 5000) == expected


def test_day_zero_is_refused_because_days_are_one_based() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        schedules.quota_for_day(CLASSIC, 0, 5000)


@pytest.mark.parametrize(
    ("schedule", "target", "paths"),
    [
        pytest.param(CLASSIC, 100_000, [], id="the classic linear schedule to 100k is fine"),
        pytest.param(
            LinearSchedule(start=500, increment=0), 5000, ["spec.schedule.linear.increment"],
            id="a linear increment of zero below the target never reaches it",
        ),
        pytest.param(
            LinearSchedule(start=500, increment=-100), 5000, ["spec.schedule.linear.increment"],
            id="a negative linear increment never reaches the target",
        ),
        pytest.param(
            ExponentialSchedule(start=500, factor=1.0), 5000, ["spec.schedule.exponential.factor"],
            id="an exponential factor of one never grows",
        ),
        pytest.param(
            ExponentialSchedule(start=500, factor=0.5), 5000, ["spec.schedule.exponential.factor"],
            id="an exponential factor below one shrinks instead of growing",
        ),
        pytest.param(
            LinearSchedule(start=0, increment=500), 5000, ["spec.schedule.linear.start"],
            id="a zero start is refused",
        ),
        pytest.param(
            ExponentialSchedule(start=-5, factor=2), 5000, ["spec.schedule.exponential.start"],
            id="a negative exponential start is refused",
        ),
        pytest.param(
            LinearSchedule(start=5000, increment=500), 1000, ["spec.target"],
            id="a target below the start is refused on the target",
        ),
        pytest.param(
            CLASSIC, 0, ["spec.target"], id="a zero target is refused",
        ),
        pytest.param(
            StepsSchedule(steps=(100, 200, 300)), 5000, ["spec.schedule.steps"],
            id="steps that end below the target never complete",
        ),
        pytest.param(
            StepsSchedule(steps=()), 5000, ["spec.schedule.steps"],
            id="an empty steps list is refused",
        ),
        pytest.param(
            StepsSchedule(steps=(100, 0, 5000)), 5000, ["spec.schedule.steps[1]"],
            id="a zero step is refused with its index",
        ),
        pytest.param(
            StepsSchedule(steps=(100, 1000, 500, 5000)), 5000, ["spec.schedule.steps[2]"],
            id="a decreasing step is refused with its index",
        ),
        pytest.param(
            LinearSchedule(start=10, increment=1), 100_000, ["spec.schedule"],
            id="a schedule that would take years to reach the target is refused as a typo",
        ),
    ],
)
def test_validate_schedule(schedule: schedules.Schedule, target: int, paths: list[str]) -> None:
    problems = schedules.validate_schedule(schedule, target)
    assert [p.path for p in problems] == paths
    assert all(p.message for p in problems)


def test_a_never_ending_schedule_says_why_in_words() -> None:
    [problem] = schedules.validate_schedule(LinearSchedule(start=500, increment=0), 5000)
    assert "never reaches the target 5000" in str(problem)
    assert str(problem).startswith("spec.schedule.linear.increment: ")


def test_days_to_target_is_none_for_a_schedule_that_never_gets_there() -> None:
    assert schedules.days_to_target(LinearSchedule(start=500, increment=0), 5000) is None
    assert schedules.days_to_target(ExponentialSchedule(start=500, factor=1), 5000) is None
    assert schedules.days_to_target(StepsSchedule(steps=(1, 2)), 5000) is None
    with pytest.raises(ValueError, match="never reaches"):
        schedules.plan_quotas(StepsSchedule(steps=(1, 2)), 5000)


@given(
    start=st.integers(min_value=1, max_value=10_000),
    factor=st.floats(min_value=1.01, max_value=10),
    target=st.integers(min_value=1, max_value=10_000_000),
)
def test_exponential_days_to_target_is_the_first_day_at_target(
    start: int, factor: float, target: int
) -> None:
    schedule = ExponentialSchedule(start=start, factor=factor)
    days = schedules.days_to_target(schedule, target)
    assert days is not None
    assert schedules.quota_for_day(schedule, days, target) == target
    if days > 1:
        assert schedules.quota_for_day(schedule, days - 1, target) < target


@given(
    start=st.integers(min_value=1, max_value=5000),
    increment=st.integers(min_value=1, max_value=5000),
    target=st.integers(min_value=1, max_value=1_000_000),
)
def test_linear_quotas_never_decrease_and_never_pass_the_target(
    start: int, increment: int, target: int
) -> None:
    schedule = LinearSchedule(start=start, increment=increment)
    quotas = [schedules.quota_for_day(schedule, day, target) for day in range(1, 60)]
    assert quotas == sorted(quotas)
    assert max(quotas) <= target


@pytest.mark.parametrize(
    ("quota", "shares", "expected"),
    [
        pytest.param(
            5000, {"gmail": 0.4}, {"gmail": 2000},
            id="no more than 40 percent of the day's quota goes to Gmail",
        ),
        pytest.param(
            1001, {"gmail": 0.4, "outlook": 0.3}, {"gmail": 400, "outlook": 300},
            id="provider caps round down so the share is never exceeded",
        ),
        pytest.param(
            1000, {"yahoo": 0.0}, {"yahoo": 0},
            id="a zero share keeps a provider off the warming IP",
        ),
        pytest.param(
            100, {"gmail": 0.29}, {"gmail": 29},
            id="a share whose product has floating point error still rounds to the right cap",
        ),
        pytest.param(5000, {}, {}, id="no shares means no provider caps"),
    ],
)
def test_provider_shares(quota: int, shares: dict[str, float], expected: dict[str, int]) -> None:
    assert schedules.provider_shares(quota, shares) == expected


@pytest.mark.parametrize(
    ("shares", "paths"),
    [
        pytest.param([ProviderShare("gmail", 0.4)], [], id="a share of 40 percent is fine"),
        pytest.param(
            [ProviderShare("gmail", 1.5)], ["spec.providerShares[0].maxShare"],
            id="a share above one is refused",
        ),
        pytest.param(
            [ProviderShare("gmail", -0.1)], ["spec.providerShares[0].maxShare"],
            id="a negative share is refused",
        ),
        pytest.param(
            [ProviderShare("gmail", 0.4), ProviderShare("gmail", 0.2)],
            ["spec.providerShares[1].provider"],
            id="a provider named twice is refused on the second entry",
        ),
    ],
)
def test_validate_provider_shares(shares: list[ProviderShare], paths: list[str]) -> None:
    assert [p.path for p in schedules.validate_provider_shares(shares)] == paths


def test_a_spec_model_converts_to_the_typed_schedule_and_is_checked() -> None:
    spec = ipwarmup.IPWarmupSpec.model_validate(
        {
            "poolRef": {"name": "pool-a"},
            "schedule": {"steps": [100, 200, 300]},
            "target": 5000,
            "providerShares": [{"provider": "gmail", "maxShare": 0.4}],
        }
    )
    assert schedules.schedule_from_spec(spec.schedule) == StepsSchedule(steps=(100, 200, 300))
    assert [p.path for p in schedules.validate_spec(spec)] == ["spec.schedule.steps"]
