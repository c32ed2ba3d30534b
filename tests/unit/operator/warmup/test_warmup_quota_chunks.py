"""Warm-up quota in chunks: how big a lease's grant is, and what a lost holder blocks."""

from __future__ import annotations

import pytest
from mailfleet_operator.logic import warmup_quotas
from mailfleet_operator.logic.warmup_quotas import HolderUsage

DAY = 86400.0


@pytest.mark.parametrize(
    ("quota", "day_seconds", "renew", "observed", "fixed", "expected"),
    [
        # A production day: the even pace is tiny, the floor gives a useful first grant.
        (500, DAY, 3.0, 0.0, None, 10),
        # Sending fast: 20 msg/s over two 3 s renewals.
        (100_000, DAY, 3.0, 20.0, None, 120),
        # The sandbox: 60 a 12 s day is 5 msg/s, two 1 s renewals -> 10.
        (60, 12.0, 1.0, 0.0, None, 10),
        (200, 12.0, 1.0, 0.0, None, 34),  # ceil(200 / 12 * 2) = ceil(33.3)
        # The observed rate wins over a slower even pace, and the result rounds up.
        (200, 12.0, 1.0, 30.5, None, 61),
        # A fixed setting wins over everything, and is never below 1.
        (500, DAY, 3.0, 50.0, 25, 25),
    ],
)
def test_chunk_size(
    quota: int, day_seconds: float, renew: float, observed: float, fixed: int | None,
    expected: int,
) -> None:
    got = warmup_quotas.quota_chunk(
        daily_quota=quota, day_seconds=day_seconds, renew_interval=renew,
        observed_rate=observed, fixed=fixed,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("quota", "holders", "chunk", "expected"),
    [
        # The holder gets a chunk beyond its own count, not the day's remainder.
        (1000, [HolderUsage("p-0", sent=300)], 50, 50),
        # ... but never more than the remainder.
        (1000, [HolderUsage("p-0", sent=980)], 50, 20),
        # A holder lost mid-day blocks only its outstanding chunk (allowance 350, sent 300):
        # the new holder gets a chunk of the 650 left at once.
        (1000, [HolderUsage("p-1", sent=0),
                HolderUsage("p-0", sent=300, allowance=350, final=False)], 50, 50),
        # Close to the end of the day the lost chunk is what is missing.
        (400, [HolderUsage("p-1", sent=0),
               HolderUsage("p-0", sent=300, allowance=350, final=False)], 80, 50),
        # Once the lost pod reports its final count, only what it sent counts.
        (400, [HolderUsage("p-1", sent=0),
               HolderUsage("p-0", sent=310, allowance=350, final=True)], 200, 90),
        # Without chunks (None) the lease carries the whole remainder, as before.
        (1000, [HolderUsage("p-0", sent=300)], None, 700),
        # An unlimited IP stays unlimited.
        (None, [HolderUsage("p-0", sent=300)], 50, None),
    ],
)
def test_lease_quota_in_chunks(
    quota: int | None, holders: list[HolderUsage], chunk: int | None, expected: int | None
) -> None:
    assert warmup_quotas.lease_quota(daily_quota=quota, holders=holders, chunk=chunk) == expected


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (None, (10.0, 40), None),
        ((10.0, 40), (10.1, 45), None),  # too close to say anything
        ((10.0, 40), (12.0, 60), 10.0),
        ((10.0, 40), (12.0, 30), 0.0),  # a count that went back (a returned reservation)
    ],
)
def test_send_rate(
    previous: tuple[float, int] | None, current: tuple[float, int], expected: float | None
) -> None:
    assert warmup_quotas.send_rate(previous, current, min_span=0.5) == expected


def test_unsent_chunks_of_pods_without_a_final_count_carry_into_the_next_day() -> None:
    got = warmup_quotas.carry_over(
        {"lost": 300, "done": 200, "spent": 100},
        {"lost": 340, "done": 250, "spent": 100, "never-read": 10},
        final={"done"},
    )
    assert got == {"lost": 40, "never-read": 10}
