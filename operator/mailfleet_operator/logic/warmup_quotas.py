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

An IP not under warm-up (or whose warm-up completed) has no quota: `None` means unlimited.
"""

from __future__ import annotations

import dataclasses
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


def lease_quota(*, daily_quota: int | None, holders: Iterable[HolderUsage]) -> int | None:
    """The allowance a new lease carries: what remains of the IP's day, whoever sent it.

    `holders` are every pod that sent from the IP today, the new holder included if it held
    the IP earlier today. The sender counts the allowance from the grant of the lease, so the
    new holder's `HolderUsage.allowance` is then its sent count at grant time plus this.
    """
    return remaining_quota(daily_quota, holders)


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
