"""Daily quotas per IP, across pods: what an IP's current holder may still send today.

Pure (no I/O). A quota belongs to the IP, not the pod. When an IP moves to another pod
mid-day (failover, scale-down, rollout), the new holder's lease carries only what remains of
the day's quota, so no IP exceeds its day's quota whatever moves.

What counts as used: for each pod that held the IP today, the larger of
- the count last read from its `/v1/stats` for this IP and day, and
- when its count is not final (the pod did not answer, or still holds a lease that may be
  sending), the allowance its lease carried: a pod that stopped answering may have sent up to
  that, and we would rather leave quota unused than overshoot.
Counts only grow within a day, so `merge_sent_counts` keeps the highest figure ever seen per
pod: a pod that vanishes still counts with what it last reported.

Chunks: a lease never carries the whole remainder of the day, only a *chunk* beyond what the
holder last reported (`quota_chunk`, refilled at every renewal). A holder lost without a final
report then blocks only its outstanding chunk, not the rest of the day, so the IP's new holder
gets quota at once instead of on the next day, and the day's quota still holds: the sum of
what every holder could possibly send (`HolderUsage.used`) never exceeds it.

An IP not under warm-up (or whose warm-up completed) has no quota: `None` means unlimited.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from mailfleet_operator.logic import schedules


@dataclasses.dataclass(frozen=True)
class HolderUsage:
    """One pod's use of one IP today.

    `allowance` is the most its leases let it send from the IP today (what it had sent when
    its lease was granted plus the lease's allowance; None if it never had a quota-limited
    lease);
    `final` is True when `sent` is known to be complete: the pod answered just now, or it
    released the lease and reported its last count.
    """

    pod: str
    sent: int
    allowance: int | None = None
    final: bool = True

    @property
    def used(self) -> int:
        """The most this pod can have sent from the IP today."""
        if self.final or self.allowance is None:
            return max(0, self.sent)
        return max(self.sent, self.allowance, 0)


def used_today(holders: Iterable[HolderUsage]) -> int:
    """What the IP may have sent today, summed over every pod that held it."""
    return sum(holder.used for holder in holders)


def remaining_quota(daily_quota: int | None, holders: Iterable[HolderUsage]) -> int | None:
    """What the IP may still send today: quota minus everything sent, never negative.

    None stays None: an IP not under warm-up is not limited by it.
    """
    if daily_quota is None:
        return None
    return max(0, daily_quota - used_today(holders))


def lease_quota(
    *, daily_quota: int | None, holders: Iterable[HolderUsage], chunk: int | None = None
) -> int | None:
    """The allowance a new lease carries: at most `chunk` (None: no chunking) of what remains
    of the IP's day, whoever sent it.

    `holders` are every pod that sent from the IP today, the new holder included (with its
    own reported count, final) if it held the IP earlier today. The sender counts the
    allowance from its reported count (`sentTodayBasis`), so the new holder's
    `HolderUsage.allowance` is then that count plus this.
    """
    remaining = remaining_quota(daily_quota, holders)
    if remaining is None or chunk is None:
        return remaining
    return min(remaining, max(0, chunk))


CHUNK_FLOOR = 10
"""Smallest automatic chunk: a quiet IP still gets a useful grant at once."""
CHUNK_RENEWALS = 2.0
"""An automatic chunk covers this many renewal intervals at the IP's rate, so a holder
sending steadily never runs dry between two renewals, and one sending faster than its chunk
sees its next chunk double (slow start) until it matches its real rate."""


def quota_chunk(
    *,
    daily_quota: int,
    day_seconds: float,
    renew_interval: float,
    observed_rate: float = 0.0,
    fixed: int | None = None,
    floor: int = CHUNK_FLOOR,
    renewals: float = CHUNK_RENEWALS,
) -> int:
    """How much of a warming IP's day one lease may carry beyond the holder's reported count.

    `fixed` (the `warmup_quota_chunk` setting) wins when set. Otherwise the chunk is
    `max(floor, ceil(rate * renew_interval * renewals))` with `rate` the larger of the day's
    even pace (`daily_quota / day_seconds`) and the rate the IP was last seen sending at
    (`observed_rate`, messages per second). A larger chunk lets a holder send faster between
    renewals; a smaller one strands less quota when the holder is lost mid-day.
    """
    if fixed is not None:
        return max(1, fixed)
    pace = daily_quota / day_seconds if day_seconds > 0 else 0.0
    rate = max(pace, observed_rate, 0.0)
    return max(floor, math.ceil(rate * renew_interval * renewals))


def send_rate(
    previous: tuple[float, int] | None, current: tuple[float, int], *, min_span: float
) -> float | None:
    """Messages per second between two (seconds, count) readings of one holder, or None
    when they are too close together (`min_span`) to say anything."""
    if previous is None:
        return None
    span = current[0] - previous[0]
    if span < min_span or span <= 0:
        return None
    return max(0, current[1] - previous[1]) / span


def carry_over(
    sent: Mapping[str, int], allowance: Mapping[str, int], final: Iterable[str]
) -> dict[str, int]:
    """Per pod, what it may still send after its quota day rolled over: a lease granted
    late in one day still allows its unsent chunk (the sender counts it on the new day) until
    it ends, so a pod without a final count starts the new day with that much used."""
    done = set(final)
    return {
        pod: outstanding
        for pod, granted in allowance.items()
        if pod not in done and (outstanding := granted - sent.get(pod, 0)) > 0
    }


def merge_sent_counts(last_known: Mapping[str, int], fresh: Mapping[str, int]) -> dict[str, int]:
    """Per pod, the highest count seen today: pods that stop answering keep their last figure."""
    merged = dict(last_known)
    for pod, sent in fresh.items():
        merged[pod] = max(sent, merged.get(pod, 0))
    return merged


def remaining_provider_caps(
    caps: Mapping[str, int], sent_by_provider: Mapping[str, int]
) -> dict[str, int]:
    """Per provider, what the IP may still send it today (never negative)."""
    return {
        provider: max(0, cap - sent_by_provider.get(provider, 0)) for provider, cap in caps.items()
    }


def ip_daily_quota(
    *,
    warm: bool,
    schedule: schedules.Schedule,
    day: int,
    target: int,
) -> int | None:
    """The IP's quota for schedule day `day`, or None (unlimited) once it is warm."""
    if warm:
        return None
    return schedules.quota_for_day(schedule, day, target)
