"""The paging of the spool into the engine's window (`paging`): which rows a page holds, in
what order, and the bookkeeping that keeps a row from being lost or read twice."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from mailfleet_sender import paging, spool


def _spool(tmp_path: Path, rows: list[tuple[str, float]]) -> spool.Spool:
    """A spool holding one one-recipient message per (class, due time), in that order."""
    store = spool.Spool.open(tmp_path, sync="normal")
    store.start()

    async def fill() -> None:
        await store.submit_many([
            spool.NewMessage(
                sender="a@example.test", recipients=(f"r{n}@example.org",), data=b"x",
                from_domain="example.test", message_id=f"<{n}>", class_name=name, tier=None,
                created=due,
            )
            for n, (name, due) in enumerate(rows)
        ])

    asyncio.run(fill())
    return store


def _ids(rows: list[spool.Delivery]) -> list[int]:
    return [row.id for row in rows]


def test_a_page_takes_due_rows_of_the_higher_class_first_and_stops_at_the_room(
    tmp_path: Path,
) -> None:
    store = _spool(tmp_path, [("marketing", 10.0)] * 5 + [("transactional", 20.0)] * 3)
    page = paging.read_page(store, {}, ["transactional", "marketing"], now=100.0, room=4)
    assert [r.class_name for r in page.rows] == ["transactional"] * 3 + ["marketing"]
    assert not page.exhausted

    rest = paging.read_page(store, page.cursors, ["transactional", "marketing"], now=100.0,
                            room=10)
    assert _ids(rest.rows) == [2, 3, 4, 5]  # the rest of marketing, nothing read twice
    assert rest.exhausted
    store.close()


def test_rows_due_later_are_read_only_when_everything_fits(tmp_path: Path) -> None:
    store = _spool(tmp_path, [("marketing", 10.0), ("marketing", 500.0), ("marketing", 600.0)])
    tight = paging.read_page(store, {}, ["marketing"], now=100.0, room=2)
    assert _ids(tight.rows) == [1] and not tight.exhausted  # the window holds due mail only
    roomy = paging.read_page(store, {}, ["marketing"], now=100.0, room=3)
    assert _ids(roomy.rows) == [1, 2, 3] and roomy.exhausted
    store.close()


def test_the_page_query_uses_the_due_index(tmp_path: Path) -> None:
    store = _spool(tmp_path, [("marketing", 1.0)])
    store.close()
    with sqlite3.connect(tmp_path / spool.SPOOL_FILE) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM deliveries WHERE class = ? AND"
            " (next_attempt, id) > (?, ?) AND next_attempt <= ? ORDER BY next_attempt, id"
            " LIMIT 10", ("marketing", 0.0, 0, 5.0),
        ).fetchall()
    text = " ".join(str(row[-1]) for row in plan)
    assert "deliveries_due" in text and "TEMP B-TREE" not in text


def test_an_existing_spool_gains_the_index_and_keeps_its_rows(tmp_path: Path) -> None:
    store = _spool(tmp_path, [("marketing", 1.0), ("marketing", 2.0)])
    store.close()
    with sqlite3.connect(tmp_path / spool.SPOOL_FILE) as db:
        db.execute("DROP INDEX deliveries_due")  # as a spool written before paging
    reopened = spool.Spool.open(tmp_path)
    assert reopened.count_pending() == 2
    assert reopened.pending_classes() == {"marketing": (2, 1.0)}
    with sqlite3.connect(tmp_path / spool.SPOOL_FILE) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "deliveries_due" in names
    reopened.close()


def _row(did: int, due: float, name: str = "marketing") -> spool.Delivery:
    return spool.Delivery(
        id=did, message=did, recipient="r@example.org", domain="example.org", class_name=name,
        tier=None, sender="a@example.test", from_domain="example.test", attempts=0,
        next_attempt=due, created=due,
    )


def test_a_row_left_on_disk_lies_after_the_cursor() -> None:
    pager = paging.Pager(window=2)
    pager.cursors["marketing"] = (50.0, 9)
    pager.on_disk = False
    pager.forgot("marketing", (40.0, 12))  # e.g. a submission committed after a later read
    assert pager.on_disk
    assert pager.cursors["marketing"] < (40.0, 12)
    assert pager.cursors["marketing"] >= (40.0, 11)


def test_a_read_never_moves_a_cursor_past_a_row_forgotten_meanwhile() -> None:
    pager = paging.Pager(window=10)
    pager.begin()
    pager.forgot("marketing", (5.0, 3))  # dropped from memory while the page was read
    page = paging.Page([_row(3, 5.0), _row(4, 6.0)], {"marketing": (6.0, 4)}, exhausted=True)
    fresh = pager.fresh(page, live=[4])
    assert _ids(fresh) == [3]  # 4 is in memory already
    assert pager.cursors["marketing"] < (5.0, 3)  # 3 is read again by the next page
    assert pager.on_disk


def test_a_row_settled_while_a_page_is_read_is_not_taken_back() -> None:
    pager = paging.Pager(window=10)
    pager.begin()
    pager.settled(7)  # delivered; its DELETE may not be committed when the page was read
    page = paging.Page([_row(7, 1.0), _row(8, 1.0)], {"marketing": (1.0, 8)}, exhausted=True)
    assert _ids(pager.fresh(page, live=[])) == [8]
    assert not pager.on_disk
    pager.settled(9)  # outside a read nothing is remembered
    assert pager.unsettled == set()


def test_refills_wait_for_a_tenth_of_the_window_or_the_tick() -> None:
    pager = paging.Pager(window=100)
    assert not pager.wants_refill(95, tick=False)
    assert pager.wants_refill(95, tick=True)
    assert pager.wants_refill(90, tick=False)
    assert not pager.wants_refill(100, tick=True)
    pager.on_disk = False
    assert not pager.wants_refill(0, tick=True)
