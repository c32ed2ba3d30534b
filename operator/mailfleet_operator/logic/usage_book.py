"""Warm-up quota accounting of a pool's IPs across pods (pure: no I/O).

Per IP and quota day: the highest `sentToday` each pod reported, what each pod's last lease
allowed it to reach, and which pods' counts are final (they reported while not holding the
IP). A pod whose count is not final may have sent up to its allowance, so a lease never
grants the day's quota twice, even across failovers and operator restarts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

from mailfleet_sender import wire

from mailfleet_operator.logic import assigning, warmup_quotas


@dataclasses.dataclass
class UsageBook:
    """The accounting state (kept in the operator's per-pool book)."""

    leases: dict[str, assigning.Lease] | None = None
    # The senders' current day: ip -> pod -> the highest sentToday seen (a pod that vanished
    # still counts); ip -> pod -> what its last lease allowed it to reach; ip -> pods whose
    # count is final (they reported it while not holding the IP).
    usage_day: int | None = None
    ip_sent: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    ip_allowance: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    ip_final: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    # ip -> (holder, seconds, count) of its last reading, and the rate measured between the
    # last two readings (messages/s): sizes the automatic quota chunk.
    ip_rate_probe: dict[str, tuple[str, float, int]] = dataclasses.field(default_factory=dict)
    ip_rate: dict[str, float] = dataclasses.field(default_factory=dict)
    # Set when leases were rebuilt from the API (restart): each recorded holder of a warming
    # IP counts with the whole day until it acknowledges a lease of ours.
    seed_allowances: bool = False
    # Counts every quota grant (`lease_quota`); (ip, pod) -> the count at its last grant. A
    # stats read that started before a pod's last grant cannot make its count final.
    grant_seq: int = 0
    last_grant: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    # The zone of the senders' quota days (the pool's warm-up's timezone), rendered into
    # their config so their day is the warm-up's day.
    quota_timezone: str = "UTC"


def sent_today(book: UsageBook) -> dict[str, int]:
    """Per IP, what every pod reported sending from it today (the highest figure per pod)."""
    return {address: sum(by_pod.values()) for address, by_pod in book.ip_sent.items()}


def roll_day(book: UsageBook, day: int) -> None:
    """Start the senders' new quota day. A pod without a final count may still send what
    its last lease left unsent (the sender counts it on the new day), so that carries over
    as its allowance; everything else starts from zero."""
    if book.usage_day == day:
        return
    if book.usage_day is None:
        # Grants made before any count was read belong to this day: keep them all.
        book.usage_day = day
        return
    carried: dict[str, dict[str, int]] = {}
    if day > book.usage_day:
        for address, allowances in book.ip_allowance.items():
            left = warmup_quotas.carry_over(
                book.ip_sent.get(address, {}), allowances, book.ip_final.get(address, ())
            )
            if left:
                carried[address] = left
    book.usage_day, book.ip_sent, book.ip_allowance, book.ip_final = day, {}, carried, {}
    book.ip_rate_probe = {}  # counts restart; the IP's rate still holds


def observe(book: UsageBook, address: str, pod: str, count: int, now: datetime) -> None:
    """Fold one count of `pod` on `address` into the day's figures and the IP's send rate."""
    by_pod = book.ip_sent.setdefault(address, {})
    by_pod.update(warmup_quotas.merge_sent_counts(by_pod, {pod: count}))
    at = now.timestamp()
    probe = book.ip_rate_probe.get(address)
    if probe is not None and probe[0] == pod:
        rate = warmup_quotas.send_rate((probe[1], probe[2]), (at, by_pod[pod]), min_span=0.2)
        if rate is None:
            return  # too close to the last reading: keep it as the reference
        book.ip_rate[address] = rate
    book.ip_rate_probe[address] = (pod, at, by_pod[pod])


def fold_answer(
    book: UsageBook, pod: str, answer: wire.AssignmentStatus, now: datetime
) -> None:
    """An assignment answer carries the pod's fresh counts of the IPs it holds: the next
    renewal refills its chunk from them without waiting for a stats read."""
    if book.usage_day is not None and answer.day < book.usage_day:
        return
    roll_day(book, answer.day)
    for lease in answer.leases:
        if lease.warmup:
            observe(book, lease.address, pod, lease.sent_today, now)


def acknowledged(
    book: UsageBook,
    pod: str,
    allowances: Mapping[str, int],
    *,
    granted_day: int | None,
    answer_day: int,
) -> None:
    """The pod applied the leases we granted (`allowances`: address -> the count each lets
    it reach) in place of its earlier ones: what it may reach today is now exactly that, not
    the most any earlier grant allowed. Figures of another day are left alone (the larger,
    earlier figure is the safe one)."""
    if granted_day is None or answer_day != granted_day or book.usage_day != granted_day:
        return
    for address, reach in allowances.items():
        book.ip_allowance.setdefault(address, {})[pod] = reach


def merge_usage(
    book: UsageBook,
    fresh: Mapping[str, wire.Stats],
    now: datetime | None = None,
    held_before: Collection[tuple[str, str]] = (),
    read_started: int | None = None,
) -> None:
    """Fold a stats read into the day's per-pod counts; a new sender day starts afresh.

    A pod's count is final only if it held the IP neither when the read started
    (`held_before`: (address, pod)) nor now, nor was granted it in between (`read_started`:
    `grant_seq` when the read left): a read answered just before a release may miss the last
    messages, and one that left before a short-lived grant misses all of them."""
    if not fresh:
        return
    day = max(stats.day for stats in fresh.values())
    if book.usage_day is not None and day < book.usage_day:
        return  # an answer has already shown the next day
    roll_day(book, day)
    leases = book.leases or {}
    when = now or datetime.now(UTC)
    for pod, stats in fresh.items():
        if stats.day != day:
            continue
        for ip in stats.ips:
            observe(book, ip.address, pod, ip.sent_today, when)
        for address in set(book.ip_sent) | set(book.ip_allowance):
            lease = leases.get(address)
            final = book.ip_final.setdefault(address, set())
            holding = lease is not None and lease.pod == pod and not lease.released
            granted_since = (
                read_started is not None
                and book.last_grant.get((address, pod), -1) >= read_started
            )
            if holding or granted_since or (address, pod) in held_before:
                final.discard(pod)  # still holding: it may send more
            else:
                final.add(pod)


def seed_from_holders(book: UsageBook, quotas: Mapping[str, int | None]) -> None:
    """After a restart the operator does not know what the recorded holders' leases allowed:
    each counts with the whole day (at most the quota) until it acknowledges one of ours."""
    book.seed_allowances = False
    for address, lease in (book.leases or {}).items():
        quota = quotas.get(address)
        if quota is not None and not lease.released:
            allowances = book.ip_allowance.setdefault(address, {})
            allowances[lease.pod] = max(allowances.get(lease.pod, 0), quota)


def seed_recorded(book: UsageBook, recorded: Mapping[str, Mapping[int, Mapping[str, int]]]) -> None:
    """Fold in the per-pod counts the warm-up controller persisted (address -> sender day ->
    pod -> sent), highest figure per pod as for a stats read: after an operator restart a pod
    lost mid-day still counts with what it sent, so its IP's new holder gets only what remains.
    Before any count was read (day unknown) the latest recorded day is taken: at worst it
    under-grants until the first read."""
    day = book.usage_day
    if day is None:
        day = max((d for by_day in recorded.values() for d in by_day), default=None)
    if day is None:
        return
    for address, by_day in recorded.items():
        pods = by_day.get(day)
        if pods:
            by_pod = book.ip_sent.setdefault(address, {})
            by_pod.update(warmup_quotas.merge_sent_counts(by_pod, pods))


@dataclasses.dataclass(frozen=True)
class Chunking:
    """How much of a warming IP's day one lease may carry (`warmup_quotas.quota_chunk`)."""

    fixed: int | None
    day_seconds: float
    renew_interval: float

    def chunk(self, book: UsageBook, address: str, quota: int | None) -> int | None:
        if quota is None:
            return None
        return warmup_quotas.quota_chunk(
            daily_quota=quota,
            day_seconds=self.day_seconds,
            renew_interval=self.renew_interval,
            observed_rate=book.ip_rate.get(address, 0.0),
            fixed=self.fixed,
        )


def lease_quota(
    book: UsageBook, address: str, pod: str, quota: int | None, *, chunk: int | None = None
) -> tuple[int | None, int | None]:
    """(quotaRemaining, sentTodayBasis) of `pod`'s lease on `address`: at most `chunk`
    (None: all) of what remains of the day.

    Other pods count with what they reported once they no longer held the IP, or else (lost
    before a final report) with what their last lease allowed (`warmup_quotas.HolderUsage`).
    The pod's own count is sent as the basis: the sender subtracts what it sent since, so a
    stale read (or a renewal between two reads) never grants the same messages twice.
    The pod's recorded allowance only grows here (an earlier lease may still be in force if
    this one never arrives); its acknowledgement sets it exactly (`_send_assignment`)."""
    if quota is None:
        return None, None
    sent = book.ip_sent.get(address, {})
    allowances = book.ip_allowance.setdefault(address, {})
    book.ip_final.setdefault(address, set()).discard(pod)  # it holds the IP: not final
    book.last_grant[(address, pod)] = book.grant_seq
    book.grant_seq += 1
    own = sent.get(pod, 0)
    holders = [warmup_quotas.HolderUsage(pod=pod, sent=own)]
    for other in sorted((set(sent) | set(allowances)) - {pod}):
        holders.append(
            warmup_quotas.HolderUsage(
                pod=other,
                sent=sent.get(other, 0),
                allowance=allowances.get(other),
                final=other in book.ip_final.get(address, ()),
            )
        )
    remaining = warmup_quotas.lease_quota(daily_quota=quota, holders=holders, chunk=chunk)
    assert remaining is not None
    allowances[pod] = max(allowances.get(pod, 0), own + remaining)
    return remaining, own
