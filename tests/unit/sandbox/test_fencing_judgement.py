"""How the failover scenes judge a healed pod's fence from its own readings (pure part of
`mailfleet_sandbox.fencing`): any connection or transaction begun after it lost the lease, or a
valid lease it still shows, is a breach; a new holder that did not move is reported too."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
from mailfleet_sandbox import fencing

LOST_AT = 1000.0
HEALED = fencing.Egress(pod="old", ip="127.0.20.2", epochs="<=3", connections=4,
                        transactions=9,
                        messages=9, fenced=0, last_connection_at=990.0,
                        last_transaction_at=999.5, last_message_at=999.6, lease_valid=False,
                        epoch=3)


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (HEALED, []),
        (dataclasses.replace(HEALED, fenced=7), []),
        (dataclasses.replace(HEALED, transactions=10, last_transaction_at=1001.0),
         ["began 1 more transactions", "began a transaction from 127.0.20.2 1.000s after"]),
        (dataclasses.replace(HEALED, connections=5),
         ["began 1 more connections"]),
        (dataclasses.replace(HEALED, messages=10, last_message_at=1000.3),
         ["began 1 more messages", "wrote a message from 127.0.20.2 0.300s after"]),
        (dataclasses.replace(HEALED, lease_valid=True),
         ["holds a valid lease for 127.0.20.2 (epoch 3)"]),
    ],
    ids=["counters still and no lease: the fence held",
         "attempts the fence refused are no breach",
         "a transaction begun after the loss is a breach, by count and by time",
         "a connection opened after the loss is a breach",
         "a message written after the loss is a breach, though its transaction began before",
         "a lease still valid after another pod got the IP is a breach"],
)
def test_a_breach_is_any_activity_after_the_loss_or_a_lease_still_valid(
        final: fencing.Egress, expected: list[str]) -> None:
    found = fencing.problems(lost_at=LOST_AT, baseline=HEALED, final=final)
    assert len(found) == len(expected), found
    for problem, fragment in zip(found, expected, strict=True):
        assert fragment in problem


def test_activity_right_after_a_thaw_shows_even_when_the_first_reading_already_has_it() -> None:
    """The pod may send between its thaw and the first reading: the times still tell."""
    early = dataclasses.replace(HEALED, connections=5, last_connection_at=1000.2)
    found = fencing.problems(lost_at=LOST_AT, baseline=early, final=early)
    assert found == ["old began a connection from 127.0.20.2 0.200s after it lost the lease"]


def test_a_new_holder_must_have_written_messages_under_a_newer_epoch() -> None:
    new = dataclasses.replace(HEALED, pod="new", epochs=">3", lease_valid=True, epoch=4)
    assert fencing.carried(new) == []
    assert fencing.carried(dataclasses.replace(new, messages=0))


STATS = {"ips": [
    {"address": "127.0.20.2", "egress": [
        {"epoch": 2, "connections": 1, "transactions": 3, "messages": 3, "fenced": 0,
         "lastConnectionAt": "2024-01-01T00:00:01Z", "lastTransactionAt": "2024-01-01T00:00:05Z",
         "lastMessageAt": "2024-01-01T00:00:05Z"},
        {"epoch": 3, "connections": 2, "transactions": 4, "messages": 4, "fenced": 1,
         "lastConnectionAt": "2024-01-01T00:00:02Z", "lastTransactionAt": "2024-01-01T00:00:04Z",
         "lastMessageAt": "2024-01-01T00:00:04Z"},
        {"epoch": 5, "connections": 1, "transactions": 1, "messages": 1, "fenced": 0,
         "lastConnectionAt": "2024-01-01T00:01:00Z", "lastTransactionAt": "2024-01-01T00:01:00Z",
         "lastMessageAt": "2024-01-01T00:01:00Z"}]},
    {"address": "127.0.20.1", "egress": [{"epoch": 1, "connections": 9}]}]}
HELD = {"leases": [{"address": "127.0.20.2", "epoch": 5, "valid": True}]}


def test_a_reading_sums_the_lost_lease_and_older_ones_and_leaves_a_later_grant_apart() -> None:
    old = fencing.egress_of("old", "127.0.20.2", STATS, HELD, upto=3)
    assert (old.connections, old.transactions, old.messages, old.fenced) == (3, 7, 7, 1)
    assert old.last_transaction_at == 1704067205.0  # the latest of the epochs read
    assert not old.lease_valid and old.epoch == 5  # valid, but a later lease: not the old one
    later = fencing.egress_of("old", "127.0.20.2", STATS, HELD, above=3)
    assert (later.transactions, later.lease_valid) == (1, True)
    assert fencing.egress_of("old", "127.0.20.9", STATS, {}).describe().endswith(
        "0 messages, 0 fenced, no valid lease of these epochs (its table: epoch None)")


def test_a_process_counts_as_stopped_once_all_its_threads_took_sigstop() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"])
    try:
        assert not fencing.stopped([child.pid])
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while not fencing.stopped([child.pid]):  # a condition waited for, bounded
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGCONT)
    finally:
        child.kill()
        child.wait()
    assert fencing.stopped([child.pid])  # gone counts as stopped: it begins nothing
