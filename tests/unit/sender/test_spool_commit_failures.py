"""A failed group commit keeps the outcome and counter updates it carried: they commit once the
fault clears (issue 16: a failed commit used to drop them silently)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mailfleet_sender import spool
from sandbox_fixtures.waiting import eventually as _until


class ReadOnlyVolume(spool.Spool):
    """A spool whose writer handles are opened read-only while `read_only` is set, the way a
    volume remounted read-only after an I/O error behaves: every write fails in SQLite."""

    read_only = False

    def _connect(self) -> sqlite3.Connection:
        db = super()._connect()
        if self.read_only:
            db.execute("PRAGMA query_only = ON")
        return db


def _message(n: int, recipients: tuple[str, ...]) -> spool.NewMessage:
    return spool.NewMessage(sender="s@x.test", recipients=recipients, data=b"m%d" % n,
                            from_domain="x.test", message_id=f"<{n}>", class_name="c",
                            tier=None, created=1.0)


async def _stored(directory: Path, recipients: tuple[str, ...]) -> list[spool.Delivery]:
    store = spool.Spool.open(directory)
    store.start()
    rows = await store.submit(_message(1, recipients))
    store.close()
    assert isinstance(rows, list)
    return rows


async def test_outcomes_and_counters_of_a_failed_commit_land_once_the_fault_clears(
    tmp_path: Path,
) -> None:
    a, b, c = await _stored(tmp_path, ("a@x.test", "b@x.test", "c@x.test"))
    store = ReadOnlyVolume(tmp_path / spool.SPOOL_FILE)
    store.read_only = True
    store.start()
    store.update(
        [spool.Update(a.id, a.message, "delivered", 1, 0.0, "250 ok"),
         spool.Update(b.id, b.message, "queued", 1, 99.0, "451 later")],
        [spool.Count(day=7, address="10.0.0.1", kind="sent", n=2),
         spool.Count(day=7, address="10.0.0.1", kind="delivered")],
        [spool.SoftCount("b@x.test", 1)],
    )
    with pytest.raises(spool.SpoolError):
        await store.flush()  # a caller waiting for a commit hears of the failure
    with pytest.raises(spool.SpoolError):
        await store.submit(_message(2, ("d@x.test",)))  # never a 250 for mail not on disk
    assert store.unrecorded == 5
    failures = store.commit_failures

    store.read_only = False
    await _until(lambda: store.unrecorded == 0, "the retried updates to commit")
    await store.flush()
    assert store.commit_failures >= failures
    store.close()

    reopened = spool.Spool.open(tmp_path)
    pending = {d.id: d for d in reopened.load_pending()}
    assert set(pending) == {b.id, c.id}  # a was delivered, and d never stored
    assert (pending[b.id].attempts, pending[b.id].next_attempt) == (1, 99.0)
    assert reopened.load_counters(7) == {("10.0.0.1", "sent"): 2,
                                         ("10.0.0.1", "delivered"): 1}
    assert reopened.load_soft_counts() == {"b@x.test": 1}


async def test_retried_updates_keep_their_order_before_newer_ones(tmp_path: Path) -> None:
    (a,) = await _stored(tmp_path, ("a@x.test",))
    store = ReadOnlyVolume(tmp_path / spool.SPOOL_FILE)
    store.read_only = True
    store.start()
    store.update([spool.Update(a.id, a.message, "queued", 1, 10.0, "451 first")])
    await _until(lambda: store.unrecorded == 1, "the failed commit")
    store.read_only = False
    store.update([spool.Update(a.id, a.message, "queued", 2, 20.0, "451 second")])
    await _until(lambda: store.unrecorded == 0, "the retry")
    await store.flush()
    store.close()
    (row,) = spool.Spool.open(tmp_path).load_pending()
    assert (row.attempts, row.last_response) == (2, "451 second")
