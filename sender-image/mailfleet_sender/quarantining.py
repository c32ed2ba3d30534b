"""Setting aside a corrupt SQLite file at start, so the pod starts with an empty one.

Why: a spool file that is not a database or is malformed (a torn volume, a bad block, a file
written over) used to make every start fail, so the pod crash-looped and took no mail at all.
The file is moved, never deleted (with its `-wal` and `-shm`), to `<name>.corrupt-<UTC time>`
beside it, where an operator can try to recover the mail it held (`sqlite3 <file> .recover`).

Only corruption is quarantined: SQLite's SQLITE_CORRUPT and SQLITE_NOTADB answers, or a
`PRAGMA quick_check` that finds a problem. Any other error (permissions, a missing volume, a
full disk, I/O) is raised as before: moving a healthy file aside over a passing fault would
hide accepted mail. `quick_check` reads every page once (it skips only the index-to-table
cross-check of `integrity_check`), which is the price of knowing at start rather than on the
first delivery that touches a bad page.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SIDE_FILES = ("-wal", "-shm")
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_REPORTED_PROBLEMS = 3
"""quick_check lines kept in the reason (it lists up to 100)."""


@dataclasses.dataclass(frozen=True)
class SetAside:
    """One database moved aside at start: what it was, where it went, and why."""

    database: str
    """spool, suppression or reports."""
    original: Path
    moved_to: Path
    reason: str
    at: float
    """Wall-clock seconds."""


def problem(path: Path) -> str | None:
    """Why `path` is not a usable SQLite database; None when it is fine or does not exist.

    Raises sqlite3.Error for failures that are not corruption (see the module docstring).
    """
    if not path.exists():
        return None
    try:
        # Read-only: the check must not checkpoint or delete the WAL it is judging.
        uri = f"{path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _CORRUPT_CODES:
            return str(exc)
        raise
    found = [str(row[0]) for row in rows]
    if found == ["ok"]:
        return None
    return "; ".join(found[:_REPORTED_PROBLEMS]) or "quick_check answered nothing"


def set_aside_if_corrupt(path: Path, *, database: str, now: float) -> SetAside | None:
    """Move a corrupt database (and its WAL and shared-memory files) aside; None if healthy."""
    reason = problem(path)
    if reason is None:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in SIDE_FILES:  # side files first: a crash here leaves the main file to retry
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    os.replace(path, target)
    _fsync_directory(path.parent)
    log.error(
        "corrupt database set aside; starting with an empty one",
        extra={"database": database, "path": str(path), "moved_to": str(target),
               "reason": reason},
    )
    return SetAside(database=database, original=path, moved_to=target, reason=reason, at=now)


def set_aside_corrupt(
    directory: Path, files: Mapping[str, str], *, now: float
) -> list[SetAside]:
    """`set_aside_if_corrupt` for each database (name -> file name) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    found = []
    for database, name in files.items():
        moved = set_aside_if_corrupt(directory / name, database=database, now=now)
        if moved is not None:
            found.append(moved)
    return found


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable before anything is written to a new file of the same name."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
