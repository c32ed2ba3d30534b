"""A corrupt database is moved aside whole (with its WAL) and a healthy one is left alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mailfleet_sender import quarantining


def _database(path: Path, rows: int = 2000) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE INDEX t_v ON t (v)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(f"value {n}" * 5,) for n in range(rows)])
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_healthy_or_missing_database_stays_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    assert quarantining.set_aside_if_corrupt(path, database="spool", now=0.0) is None
    _database(path)
    assert quarantining.set_aside_if_corrupt(path, database="spool", now=0.0) is None
    assert path.exists()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"garbage " * 5000), id="not a database at all"),
        pytest.param(lambda p: _overwrite(p, 4096 * 3, b"\xff" * 4096),
                     id="a page in the middle overwritten"),
        pytest.param(lambda p: _overwrite(p, 0, b"\x00" * 100), id="the header zeroed"),
    ],
)
def test_a_corrupt_database_moves_aside_with_its_wal_and_shm(
    tmp_path: Path, damage: object
) -> None:
    path = tmp_path / "spool.sqlite3"
    _database(path)
    damage(path)  # type: ignore[operator]
    (tmp_path / "spool.sqlite3-wal").write_bytes(b"wal")
    (tmp_path / "spool.sqlite3-shm").write_bytes(b"shm")
    moved = quarantining.set_aside_if_corrupt(path, database="spool", now=1_700_000_000.0)
    assert moved is not None
    assert moved.moved_to == tmp_path / "spool.sqlite3.corrupt-20231114T221320Z"
    assert moved.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "spool.sqlite3.corrupt-20231114T221320Z",
        "spool.sqlite3.corrupt-20231114T221320Z-shm",
        "spool.sqlite3.corrupt-20231114T221320Z-wal",
    ]
    # A second corrupt file in the same second does not overwrite the first one set aside.
    path.write_bytes(b"garbage " * 5000)
    again = quarantining.set_aside_if_corrupt(path, database="spool", now=1_700_000_000.0)
    assert again is not None and again.moved_to.name.endswith("-2")
    assert (tmp_path / "spool.sqlite3.corrupt-20231114T221320Z").exists()


def test_a_fault_that_is_not_corruption_is_raised_not_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    path.mkdir()  # sqlite cannot open a directory: an error, but the data is not corrupt
    with pytest.raises(sqlite3.Error):
        quarantining.set_aside_if_corrupt(path, database="spool", now=0.0)
    assert path.is_dir()
