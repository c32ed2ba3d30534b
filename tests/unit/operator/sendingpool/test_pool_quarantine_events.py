"""A pod that set a corrupt database aside is reported once, as a Warning Event on the pool
(issue 16: "corrupt spool quarantined with a clear log line and an event")."""

from __future__ import annotations

from mailfleet_operator.reconcile import pool_policy
from mailfleet_operator.reconcile.pool_state import Cycle, PoolMemory
from mailfleet_sender import wire


def stats(pod: str, *paths: str) -> wire.Stats:
    return wire.Stats(pod=pod, spool=wire.SpoolStats(quarantined=[
        wire.QuarantinedDatabase(database="spool", path=p, reason="file is not a database")
        for p in paths]))


def cycle_with(memory: PoolMemory, *pods: wire.Stats) -> list[tuple[str, str, str]]:
    memory.stats = {s.pod: s for s in pods}
    cycle = Cycle()
    pool_policy.report_quarantines(memory, cycle)
    return [(t, r, m) for t, r, m in cycle.events]


def test_a_set_aside_database_is_reported_once_naming_the_pod_and_the_file() -> None:
    memory = PoolMemory()
    moved = "/spool/spool.sqlite3.corrupt-20261205T100000Z"
    events = cycle_with(memory, stats("mail-0"), stats("mail-1", moved))
    assert len(events) == 1
    type_, reason, message = events[0]
    assert (type_, reason) == ("Warning", "SpoolQuarantined")
    assert "mail-1" in message and moved in message and "spool database" in message
    # Every later read lists it again for the life of the process: no second Event.
    assert cycle_with(memory, stats("mail-0"), stats("mail-1", moved)) == []


def test_an_unanswered_read_does_not_make_the_event_repeat() -> None:
    memory = PoolMemory()
    moved = "/spool/spool.sqlite3.corrupt-20261205T100000Z"
    assert len(cycle_with(memory, stats("mail-1", moved))) == 1
    assert cycle_with(memory) == []  # mail-1 did not answer this time
    assert cycle_with(memory, stats("mail-1", moved)) == []


def test_a_second_corruption_after_a_restart_is_reported_again() -> None:
    memory = PoolMemory()
    first = "/spool/spool.sqlite3.corrupt-20261205T100000Z"
    second = "/spool/spool.sqlite3.corrupt-20261205T110000Z"
    assert len(cycle_with(memory, stats("mail-1", first))) == 1
    assert cycle_with(memory, stats("mail-1")) == []  # restarted clean: nothing listed
    events = cycle_with(memory, stats("mail-1", second))
    assert len(events) == 1 and second in events[0][2]
