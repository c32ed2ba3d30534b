"""A quota belongs to the IP, not the pod: whatever moves mid-day, the IP never sends more
than its day's quota, and an IP not under warm-up is not limited by it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_operator.logic import warmup_quotas
from mailfleet_operator.logic.schedules import LinearSchedule
from mailfleet_operator.logic.warmup_quotas import HolderUsage


@pytest.mark.parametrize(
    ("quota", "holders", "expected"),
    [
        pytest.param(1000, [], 1000, id="an IP nobody sent from today has its whole quota"),
        pytest.param(
            1000, [HolderUsage("p-0", sent=300)], 700,
            id="the current holder's sends come off the day's quota",
        ),
        pytest.param(
            1000, [HolderUsage("p-0", sent=600), HolderUsage("p-1", sent=150)], 250,
            id="after a failover the new holder gets what remains after both pods' sends",
        ),
        pytest.param(
            1000, [HolderUsage("p-0", sent=700), HolderUsage("p-1", sent=500)], 0,
            id="an overspent day leaves nothing and never a negative quota",
        ),
        pytest.param(
            1000, [HolderUsage("p-0", sent=200, allowance=1000, final=False)], 0,
            id="a lost pod that may still be sending counts as having used its whole allowance",
        ),
        pytest.param(
            1000, [HolderUsage("p-0", sent=200, allowance=600, final=False)], 400,
            id="a lost pod counts its allowance, not the whole quota",
        ),
        pytest.param(
            1000, [HolderUsage("p-0", sent=200, allowance=600, final=True)], 800,
            id="a pod that released its lease and reported counts only what it sent",
        ),
        pytest.param(
            None, [HolderUsage("p-0", sent=50_000)], None,
            id="an IP not under warm-up stays unlimited",
        ),
    ],
)
def test_remaining_quota(
    quota: int | None, holders: list[HolderUsage], expected: int | None
) -> None:
    assert warmup_quotas.remaining_quota(quota, holders) == expected
    assert warmup_quotas.lease_quota(daily_quota=quota, holders=holders) == expected


def test_counts_keep_the_highest_figure_so_a_vanished_pod_still_counts() -> None:
    last = {"p-0": 400, "p-1": 10}
    fresh = {"p-1": 90, "p-2": 5}
    assert warmup_quotas.merge_sent_counts(last, fresh) == {"p-0": 400, "p-1": 90, "p-2": 5}
    assert warmup_quotas.merge_sent_counts({"p-0": 400}, {"p-0": 3}) == {"p-0": 400}


def test_provider_caps_shrink_with_what_each_provider_already_got() -> None:
    caps = {"gmail": 400, "outlook": 300}
    assert warmup_quotas.remaining_provider_caps(caps, {"gmail": 450, "outlook": 100}) == {
        "gmail": 0,
        "outlook": 200,
    }


@pytest.mark.parametrize(
    ("warm", "expected"),
    [
        pytest.param(False, 1500, id="a warming IP gets its schedule day's quota"),
        pytest.param(True, None, id="a warm IP has its quota limit removed"),
    ],
)
def test_ip_daily_quota(warm: bool, expected: int | None) -> None:
    schedule = LinearSchedule(start=500, increment=500)
    quota = warmup_quotas.ip_daily_quota(warm=warm, schedule=schedule, day=3, target=5000)
    assert quota == expected


@given(
    quota=st.integers(min_value=0, max_value=10_000),
    moves=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=8),
)
def test_no_ip_exceeds_its_quota_whatever_moves(quota: int, moves: list[float]) -> None:
    """Hand the IP from pod to pod; each holder sends some fraction of its lease allowance
    before the next move. The day's total never exceeds the quota."""
    holders: list[HolderUsage] = []
    for index, fraction in enumerate(moves):
        allowance = warmup_quotas.lease_quota(daily_quota=quota, holders=holders)
        assert allowance is not None and allowance >= 0
        holders.append(HolderUsage(f"p-{index}", sent=int(allowance * fraction)))
    assert warmup_quotas.used_today(holders) <= quota
