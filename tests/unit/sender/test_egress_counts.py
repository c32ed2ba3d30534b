"""The sender's per-IP egress counters (`egress_counts`): what an observer reads to see a pod's
fence from the pod itself."""

from __future__ import annotations

from mailfleet_sender import clock, egress_counts


def test_connections_transactions_messages_and_refusals_are_counted_apart_with_times() -> None:
    now = [100.0]
    counts = egress_counts.EgressCounts(clock.Clock(wall=lambda: now[0]))
    counts.connecting("127.0.0.1")
    counts.transacting("127.0.0.1")
    now[0] = 105.0
    counts.transacting("127.0.0.1")
    counts.writing("127.0.0.1")
    counts.refused("127.0.0.1")
    counts.refused("127.0.0.2")
    snap = counts.snapshot()
    assert snap["127.0.0.1"] == egress_counts.Count(
        connections=1, transactions=2, messages=1, fenced=1, last_connection_at=100.0,
        last_transaction_at=105.0, last_message_at=105.0)
    # A refusal is no connection: an IP only ever refused shows no activity.
    assert snap["127.0.0.2"] == egress_counts.Count(fenced=1)
    snap["127.0.0.1"].connections = 99  # a snapshot is a copy
    assert counts.snapshot()["127.0.0.1"].connections == 1
