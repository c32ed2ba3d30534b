"""Warm-up quotas in the pool's leases: what each grant allows, across pods and stats reads."""

from __future__ import annotations

from datetime import UTC, datetime

from mailfleet_operator.logic import assigning, usage_book
from mailfleet_operator.reconcile import sendingpool as reconciler
from mailfleet_sender import wire

IP = "192.0.2.10"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def stats(pod: str, sent: int, day: int = 7) -> wire.Stats:
    return wire.Stats(pod=pod, day=day, ips=[wire.IPStats(address=IP, sent_today=sent)])


def read(memory: reconciler.PoolMemory, *pods: wire.Stats) -> None:
    memory.stats = {s.pod: s for s in pods}
    usage_book.merge_usage(memory, memory.stats)


def test_a_renewal_carries_the_pods_own_count_as_basis_so_a_stale_read_grants_nothing_twice() -> (
    None
):
    memory = reconciler.PoolMemory()
    read(memory, stats("mail-0", 300))
    assert usage_book.lease_quota(memory, IP, "mail-0", 1000) == (700, 300)
    # Renewed before the next read: the same figures; the sender subtracts what it sent since
    # 300 (the basis), so the 700 are not granted afresh.
    assert usage_book.lease_quota(memory, IP, "mail-0", 1000) == (700, 300)


def hold(memory: reconciler.PoolMemory, pod: str) -> None:
    memory.leases = {IP: assigning.Lease(address=IP, pod=pod, pod_uid=pod, expires_at=T0)}


def test_after_a_move_the_new_holder_gets_what_the_old_pod_left_once_it_reported() -> None:
    memory = reconciler.PoolMemory()
    hold(memory, "mail-0")
    read(memory, stats("mail-0", 300), stats("mail-1", 0))
    assert usage_book.lease_quota(memory, IP, "mail-0", 1000) == (700, 300)
    hold(memory, "mail-1")  # mail-0 released the IP, then reported 400
    read(memory, stats("mail-0", 400), stats("mail-1", 0))
    assert usage_book.lease_quota(memory, IP, "mail-1", 1000) == (600, 0)
    read(memory, stats("mail-1", 0))  # mail-0 removed by a scale-down: its 400 still count
    assert usage_book.lease_quota(memory, IP, "mail-1", 1000) == (600, 0)
    assert usage_book.sent_today(memory) == {IP: 400}


def test_a_pod_lost_while_holding_counts_with_its_whole_allowance() -> None:
    memory = reconciler.PoolMemory()
    hold(memory, "mail-0")
    read(memory, stats("mail-0", 300), stats("mail-1", 0))
    usage_book.lease_quota(memory, IP, "mail-0", 1000)  # mail-0 may reach 1000
    hold(memory, "mail-1")  # its lease expired while it was partitioned: it never reported
    read(memory, stats("mail-1", 0))
    assert usage_book.lease_quota(memory, IP, "mail-1", 1000) == (0, 0)


def test_a_new_sender_day_starts_from_zero_and_unlimited_ips_have_no_quota() -> None:
    memory = reconciler.PoolMemory()
    read(memory, stats("mail-0", 900, day=7))
    read(memory, stats("mail-0", 5, day=8))
    assert usage_book.lease_quota(memory, IP, "mail-0", 1000) == (995, 5)
    assert usage_book.lease_quota(memory, IP, "mail-0", None) == (None, None)
