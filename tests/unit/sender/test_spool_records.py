"""What the spool hands back is what was submitted: every field of a delivery row, of a
hand-off item and of a repeated hand-off; hand-off keys are remembered for their full week;
a handed-off message leaves nothing behind; a spool whose writer is not running refuses
(the client gets a 4xx, never a 250 for mail not on disk); failed commits are counted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mailfleet_sender import spool

DAY = 86400.0


def message(n: int, *recipients: str, key: str | None = None,
            created: float = 1000.0) -> spool.NewMessage:
    return spool.NewMessage(sender=f"s{n}@x.test", recipients=recipients, data=b"body %d" % n,
                            from_domain="x.test", message_id=f"<{n}@x.test>",
                            class_name=f"class-{n}", tier=f"tier-{n}", created=created,
                            handoff_key=key)


async def started(directory: Path) -> spool.Spool:
    store = spool.Spool.open(directory)
    store.start()
    return store


async def test_a_stored_delivery_carries_the_envelope_and_reads_back_the_same(
    tmp_path: Path,
) -> None:
    store = await started(tmp_path)
    rows = await store.submit(message(1, "A@Example.COM", '"odd@name"@Mail.Example'))
    assert isinstance(rows, list)
    first, second = rows
    assert first == spool.Delivery(
        id=first.id, message=first.message, recipient="A@Example.COM", domain="example.com",
        class_name="class-1", tier="tier-1", sender="s1@x.test", from_domain="x.test",
        attempts=0, next_attempt=1000.0, created=1000.0,
    )
    assert first.id > 0 and first.message > 0 and second.id == first.id + 1
    assert second.domain == "mail.example" and second.message == first.message
    assert await store.read_data(first.message) == b"body 1"
    store.close()
    assert spool.Spool.open(tmp_path).load_pending() == rows


async def test_a_repeated_hand_off_is_known_as_the_message_it_was_stored_as(
    tmp_path: Path,
) -> None:
    store = await started(tmp_path)
    rows = await store.submit(message(1, "a@x.test", "b@x.test", key="k1"))
    assert isinstance(rows, list)
    again = await store.submit(message(1, "a@x.test", "b@x.test", key="k1"))
    assert again == spool.Known(message=rows[0].message, recipients=2)
    store.close()


async def test_a_hand_off_key_is_remembered_for_a_week_and_then_forgotten(
    tmp_path: Path,
) -> None:
    store = await started(tmp_path)
    await store.submit(message(1, "a@x.test", key="old", created=1000.0))
    # Six days later another hand-off arrives: the old key is still known.
    await store.submit(message(2, "b@x.test", key="k2", created=1000.0 + 6 * DAY))
    assert isinstance(await store.submit(message(1, "a@x.test", key="old")), spool.Known)
    # Past the week, the next hand-off forgets it: the same key is a new message again.
    await store.submit(message(3, "c@x.test", key="k3", created=1000.0 + 7 * DAY + 1))
    stored = await store.submit(message(1, "a@x.test", key="old", created=1000.0 + 7 * DAY))
    assert isinstance(stored, list)
    store.close()


async def test_marked_mail_is_handed_off_whole_and_then_leaves_nothing(tmp_path: Path) -> None:
    store = await started(tmp_path)
    rows = await store.submit(message(4, "a@x.test", "b@x.test"))
    assert isinstance(rows, list)
    assert await store.mark_handoff() == 2
    (item,) = store.load_handoff()
    assert item == spool.HandoffItem(
        message=rows[0].message, sender="s4@x.test", data=b"body 4",
        message_id="<4@x.test>", created=1000.0, class_name="class-4", tier="tier-4",
        deliveries=((rows[0].id, "a@x.test"), (rows[1].id, "b@x.test")),
    )
    await store.finish_handoff(item)
    assert store.load_handoff() == [] and store.load_pending() == []
    assert store.count_pending() == 0
    assert await store.read_data(rows[0].message) is None  # the message itself is gone
    store.close()


async def test_a_spool_whose_writer_is_not_running_refuses_the_mail(tmp_path: Path) -> None:
    store = spool.Spool.open(tmp_path)
    with pytest.raises(spool.SpoolError, match="spool writer is not running"):
        await store.submit(message(1, "a@x.test"))
    store.start()
    store.close()
    with pytest.raises(spool.SpoolError, match="spool writer is not running"):
        await store.flush()


class ReadOnlyWriter(spool.Spool):
    """A spool whose writer handle refuses writes (a volume remounted read-only)."""

    def _connect(self):  # type: ignore[no-untyped-def]
        db = super()._connect()
        db.execute("PRAGMA query_only = ON")
        return db


async def test_every_transaction_and_every_failed_one_is_counted(tmp_path: Path) -> None:
    store = await started(tmp_path)
    await store.submit(message(1, "a@x.test"))
    await store.flush()
    assert (store.commits, store.commit_failures) == (2, 0)
    store.close()
    broken = ReadOnlyWriter(tmp_path / spool.SPOOL_FILE)
    broken.start()
    with pytest.raises(spool.SpoolError, match="spool write failed"):
        await broken.submit(message(2, "b@x.test"))
    assert (broken.commits, broken.commit_failures) == (0, 1)
    broken.close()


async def test_a_hand_off_can_be_undone_except_for_messages_still_moving(tmp_path: Path) -> None:
    store = await started(tmp_path)
    first = await store.submit(message(1, "a@x.test", "b@x.test"))
    second = await store.submit(message(2, "c@x.test"))
    assert isinstance(first, list) and isinstance(second, list)
    assert store.handoff_mode() == "drain"  # nothing recorded: drain
    assert await store.mark_handoff() == 3
    assert store.count_handoff() == 3 and store.load_pending() == []
    # Undrain while message 2 is still being handed off: only message 1 comes back.
    assert await store.unmark_handoff(keep=[second[0].message]) == 2
    assert store.handoff_mode() == "settle"
    assert store.count_handoff() == 1
    assert [d.recipient for d in store.load_pending()] == ["a@x.test", "b@x.test"]
    assert await store.unmark_handoff() == 1
    assert store.handoff_mode() == "drain" and store.count_handoff() == 0
    assert len(store.load_pending()) == 3
    store.close()


async def test_hand_off_items_come_oldest_first_and_at_most_the_limit(tmp_path: Path) -> None:
    store = await started(tmp_path)
    for n in range(3):
        await store.submit(message(n, f"r{n}@x.test"))
    await store.mark_handoff()
    assert [i.sender for i in store.load_handoff(limit=2)] == ["s0@x.test", "s1@x.test"]
    assert len(store.load_handoff()) == 3
    store.close()


async def test_a_stored_hand_off_key_names_its_message(tmp_path: Path) -> None:
    store = await started(tmp_path)
    rows = await store.submit(message(1, "a@x.test", key="k1"))
    assert isinstance(rows, list)
    assert store.handoff_stored("k1") == rows[0].message
    assert store.handoff_stored("k2") is None
    store.close()


async def test_daily_counters_read_back_per_day_over_a_range(tmp_path: Path) -> None:
    store = await started(tmp_path)
    store.update([], [spool.Count(day=d, address="10.0.0.1", kind="sent", n=d) for d in (5, 6, 7)]
                 + [spool.Count(day=6, address="10.0.0.2", kind="bounced")])
    await store.flush()
    assert store.load_counters_between(6, 7) == {
        6: {("10.0.0.1", "sent"): 6, ("10.0.0.2", "bounced"): 1},
        7: {("10.0.0.1", "sent"): 7},
    }
    assert store.load_counters_between(8, 9) == {}
    store.close()


async def test_a_hand_off_round_takes_a_hundred_messages_by_default(tmp_path: Path) -> None:
    store = await started(tmp_path)
    await store.submit_many([message(n, f"r{n}@x.test") for n in range(101)])
    await store.mark_handoff()
    assert len(store.load_handoff()) == 100
    store.close()


@pytest.mark.parametrize(("sync", "level"), [("full", 2), ("normal", 1)])
def test_every_spool_handle_runs_the_configured_synchronous_level(
    tmp_path: Path, sync: str, level: int
) -> None:
    # FULL (2) fsyncs the WAL at every commit, before the client is told 250: the default.
    store = spool.Spool.open(tmp_path / "nested" / "dir", sync=sync)
    with store._connect() as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == level
    with spool.Spool.open(tmp_path / "default")._connect() as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2


async def test_outcomes_queued_before_close_are_on_disk_after_it(tmp_path: Path) -> None:
    store = await started(tmp_path)
    assert store.unrecorded == 0
    rows = await store.submit(message(1, "a@x.test", "b@x.test"))
    assert isinstance(rows, list)
    store.update(
        [spool.Update(rows[0].id, rows[0].message, "delivered", 1, 0.0, "250 ok"),
         spool.Update(rows[1].id, rows[1].message, "queued", 1, 60.0, "451 later")],
        [spool.Count(day=3, address="10.0.0.1", kind="sent", n=2)],
        [spool.SoftCount("b@x.test", 1), spool.SoftCount("c@x.test", 2)],
    )
    store.close()  # no flush: close commits what is queued
    reopened = await started(tmp_path)
    (left,) = reopened.load_pending()
    assert (left.recipient, left.attempts, left.last_response) == ("b@x.test", 1, "451 later")
    assert reopened.load_counters(3) == {("10.0.0.1", "sent"): 2}
    assert reopened.load_soft_counts() == {"b@x.test": 1, "c@x.test": 2}
    reopened.update([], soft=[spool.SoftCount("b@x.test", 0)])  # a delivery forgets it
    await reopened.flush()
    assert reopened.load_soft_counts() == {"c@x.test": 2}
    reopened.close()


async def test_a_reserved_id_is_the_stored_message_id_and_never_given_to_another(
    tmp_path: Path,
) -> None:
    """Tracking tokens name a message before it is stored: the id reserved for it is the one
    it gets, and a message submitted meanwhile without one does not take it."""
    store = await started(tmp_path)
    reserved = store.reserve_id()
    other = await store.submit(message(1, "a@x.test"))
    assert isinstance(other, list) and other[0].message != reserved
    mine = await store.submit(dataclasses.replace(message(2, "b@x.test"), id=reserved))
    assert isinstance(mine, list) and mine[0].message == reserved
    assert await store.read_data(reserved) == b"body 2"
    batch = await store.submit_many([message(3, "c@x.test"), message(4, "d@x.test")])
    ids = [reserved, other[0].message, *(rows[0].message for rows in batch)]
    assert len(set(ids)) == 4
    store.close()


async def test_ids_after_a_restart_start_above_every_stored_message(tmp_path: Path) -> None:
    store = await started(tmp_path)
    rows = await store.submit(dataclasses.replace(message(1, "a@x.test"), id=41))
    assert isinstance(rows, list) and rows[0].message == 41
    store.close()
    reopened = await started(tmp_path)
    assert reopened.reserve_id() == 42
    again = await reopened.submit(message(2, "b@x.test"))
    assert isinstance(again, list) and again[0].message == 43
    reopened.close()
