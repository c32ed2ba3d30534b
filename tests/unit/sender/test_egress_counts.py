"""The sender's egress counters (`egress_counts`): what an observer reads to see a pod's fence
from the pod itself, per source IP and lease epoch."""

from __future__ import annotations

from mailfleet_sender import clock, egress_counts


def test_connections_transactions_messages_and_refusals_are_counted_apart_with_times() -> None:
    now = [100.0]
    counts = egress_counts.EgressCounts(clock.Clock(wall=lambda: now[0]))
    counts.connecting("127.0.0.1", 3)
    counts.transacting("127.0.0.1", 3)
    now[0] = 105.0
    counts.transacting("127.0.0.1", 3)
    counts.writing("127.0.0.1", 3)
    counts.refused("127.0.0.1", 3)
    counts.refused("127.0.0.2", 1)
    snap = counts.snapshot()
    assert snap["127.0.0.1", 3] == egress_counts.Count(
        connections=1, transactions=2, messages=1, fenced=1, last_connection_at=100.0,
        last_transaction_at=105.0, last_message_at=105.0)
    # A refusal is no connection: an IP only ever refused shows no activity.
    assert snap["127.0.0.2", 1] == egress_counts.Count(fenced=1)
    snap["127.0.0.1", 3].connections = 99  # a snapshot is a copy
    assert counts.snapshot()["127.0.0.1", 3].connections == 1


def test_the_ip_granted_again_under_a_new_epoch_is_counted_apart_from_the_old_lease() -> None:
    counts = egress_counts.EgressCounts(clock.Clock(wall=lambda: 1.0))
    counts.transacting("127.0.0.1", 3)
    counts.transacting("127.0.0.1", 5)
    counts.transacting("127.0.0.1", 5)
    assert [(key, c.transactions) for key, c in counts.snapshot().items()] == [
        (("127.0.0.1", 3), 1), (("127.0.0.1", 5), 2)]
