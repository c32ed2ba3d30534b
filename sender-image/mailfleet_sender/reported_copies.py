"""The ledger of report identities this pod has counted: at most one complaint and one bounce
per delivered copy, however often a report about it is mailed to us.

Why: a report carries our sealed marks, so it cannot name a copy we never sent, but anyone who
received one copy holds a valid report about it and can mail it again and again. Each counted
report would raise the complaint or bounce rate the reputation breaker and the warm-up gates
read. The identity of a report is (kind, message reference, recipient): the message reference
is the pod-qualified spool id both marks carry (trace header and VERP return path), so a DSN
matched by its trace and one matched by its return path are the same copy.

Bounds: an identity is remembered for `window` after it was first counted (reports come days
after the mail at most; the window defaults to 30 days), and at most `capacity` identities are
kept. A full ledger refuses to count (`LedgerFull`, a temporary refusal: reporters retry, and
entries expire), never forgets early, so a replay cannot be made to count by flooding.

Stored in SQLite next to the spool (`reports.sqlite3`, `synchronous=FULL`) so a restart does
not reopen the door. Identities are stored as 16-byte SHA-256 prefixes: the file holds no
recipient addresses. Calls are synchronous, made on the event loop (one small write per
counted report, like the suppression list's).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

__all__ = ["FILE", "LedgerFull", "ReportedCopies", "identity"]

FILE = "reports.sqlite3"
PRUNE_EVERY = 60.0
"""Seconds between two sweeps of expired identities (and always before refusing as full)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counted (
    id BLOB PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counted_at ON counted (at);
"""


class LedgerFull(RuntimeError):
    """`capacity` identities within the window: nothing more is counted until some expire."""


def identity(kind: str, message_ref: str, recipient: str) -> bytes:
    """The stored key of one report about one copy (recipient compared case-insensitively)."""
    text = f"{kind}\x00{message_ref}\x00{recipient.strip().lower()}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


class ReportedCopies:
    """Identities counted within the last `window` seconds, at most `capacity` of them."""

    def __init__(self, path: str | Path, *, window: float, capacity: int) -> None:
        if window <= 0 or capacity < 1:
            raise ValueError("the replay window and capacity must be positive")
        self.window = window
        self.capacity = capacity
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._size = int(self._db.execute("SELECT COUNT(*) FROM counted").fetchone()[0])
        self._pruned_at: float | None = None

    def __len__(self) -> int:
        return self._size

    def close(self) -> None:
        self._db.close()

    def claim(self, key: bytes, now: float) -> bool:
        """Record `key` as counted at `now`; False when it was counted within the window.

        LedgerFull when the ledger holds `capacity` live identities (nothing is recorded).
        """
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
            self.prune(now)
        row = self._db.execute("SELECT at FROM counted WHERE id = ?", (key,)).fetchone()
        if row is not None and now - float(row[0]) < self.window:
            return False
        if row is None and self._size >= self.capacity:
            self.prune(now)
            if self._size >= self.capacity:
                raise LedgerFull(f"{self._size} report identities within the replay window")
        self._db.execute(
            "INSERT INTO counted (id, at) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET at = ?",
            (key, now, now),
        )
        if row is None:
            self._size += 1
        return True

    def release(self, key: bytes) -> None:
        """Forget `key` again: it was claimed but acting on the report failed."""
        cursor = self._db.execute("DELETE FROM counted WHERE id = ?", (key,))
        self._size -= max(cursor.rowcount, 0)

    def prune(self, now: float) -> int:
        """Forget identities older than the window; how many went."""
        cursor = self._db.execute("DELETE FROM counted WHERE at <= ?", (now - self.window,))
        self._pruned_at = now
        removed = max(cursor.rowcount, 0)
        self._size -= removed
        return removed
