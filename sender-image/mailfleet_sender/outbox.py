"""The event outbox in the spool database: the tables, and the statements the spool's writer
runs inside its transactions and the webhooks run to read. No threads, no asyncio: callers
hand in a connection (the writer's, inside its open transaction, or a reader's own).

Why in the spool's file: an event is written in the same transaction as the state change that
causes it (the message stored, a delivery row finished or rescheduled), so after `kill -9`
either both are on disk or neither is: the message is delivered again and the event written
again, never one without the other.

- `event_outbox`: one row per event (`seq` from AUTOINCREMENT, so a sequence number is never
  reused after pruning and a cursor stays meaningful), its type, its JSON line and when it was
  written. Rows are written only while at least one webhook reads them.
- `event_cursors`: per webhook, the last `seq` it has delivered (or dropped). A row is pruned
  once every cursor has passed it; without any webhook there is nothing to keep.
- `message_tags`: a message's tags, written with the message, kept `tagRetention` after it left
  the queue, so events that come later (a complaint, an open) still carry them.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mailfleet_sender import events, tags

SCHEMA = """
CREATE TABLE IF NOT EXISTS event_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS event_cursors (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS message_tags (
    message INTEGER PRIMARY KEY,
    tags TEXT NOT NULL,
    created REAL NOT NULL
);
"""

Published = tuple[dict[str, Any], str]
"""An event committed: its JSON object and its line (what stdout and listeners get)."""


@dataclasses.dataclass(frozen=True)
class Row:
    seq: int
    created: float
    body: str


@dataclasses.dataclass(frozen=True)
class Batch:
    """What one webhook reads: rows after its cursor, and how far the read looked."""

    rows: tuple[Row, ...]
    scanned: int
    """Once `rows` are delivered the cursor may move here: rows of other types up to it are
    not this webhook's (they must not hold back pruning)."""


# --- writing (the spool's writer thread, inside its transaction) -----------------------------


def store_tags(db: sqlite3.Connection, message: int, given: Mapping[str, str],
               now: float) -> None:
    if given:
        db.execute(
            "INSERT OR REPLACE INTO message_tags (message, tags, created) VALUES (?, ?, ?)",
            (message, tags.encode(given), now),
        )


def tags_of(db: sqlite3.Connection, message: int) -> dict[str, str]:
    row = db.execute("SELECT tags FROM message_tags WHERE message = ?", (message,)).fetchone()
    return tags.decode(None if row is None else str(row[0]))


def write(
    db: sqlite3.Connection, event: events.Event, *, store: bool, now: float,
    tags_from: int | None = None,
) -> Published:
    """Serialise one event (its tags looked up from message `tags_from` when it has none) and
    append it to the outbox when `store`; what to publish once the transaction commits."""
    body = event.to_json()
    if tags_from is not None and not body["tags"]:
        body["tags"] = tags_of(db, tags_from)
    line = events.dumps(body)
    if store:
        db.execute(
            "INSERT INTO event_outbox (type, created, body) VALUES (?, ?, ?)",
            (event.type.value, now, line),
        )
    return body, line


def last_seq(db: sqlite3.Connection) -> int:
    """The last sequence number handed out (rows may have been pruned since)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'event_outbox'").fetchone()
    return 0 if row is None else int(row[0])


def sync_cursors(db: sqlite3.Connection, names: Iterable[str]) -> None:
    """One cursor per configured webhook: a new one starts at the end (it gets what comes
    next), a removed one goes (it holds nothing back any more)."""
    wanted = set(names)
    have = {str(n) for (n,) in db.execute("SELECT name FROM event_cursors")}
    end = last_seq(db)
    for name in sorted(wanted - have):
        db.execute("INSERT INTO event_cursors (name, seq) VALUES (?, ?)", (name, end))
    for name in have - wanted:
        db.execute("DELETE FROM event_cursors WHERE name = ?", (name,))
    prune(db)


def advance(db: sqlite3.Connection, name: str, seq: int) -> None:
    """A webhook is done with every row up to `seq` (delivered or dropped)."""
    db.execute("UPDATE event_cursors SET seq = MAX(seq, ?) WHERE name = ?", (seq, name))
    prune(db)


def prune(db: sqlite3.Connection) -> int:
    """Remove the rows every cursor has passed (all of them when no webhook reads)."""
    row = db.execute("SELECT MIN(seq), COUNT(*) FROM event_cursors").fetchone()
    if int(row[1]) == 0:
        return db.execute("DELETE FROM event_outbox").rowcount
    return db.execute("DELETE FROM event_outbox WHERE seq <= ?", (int(row[0]),)).rowcount


def prune_tags(db: sqlite3.Connection, before: float) -> int:
    """Forget the tags of messages gone from the spool and older than `before`."""
    return db.execute(
        "DELETE FROM message_tags WHERE created < ? AND message NOT IN (SELECT id FROM messages)",
        (before,),
    ).rowcount


# --- reading (a webhook's own connection) -----------------------------------------------------


def load_cursors(db: sqlite3.Connection) -> dict[str, int]:
    return {str(n): int(s) for n, s in db.execute("SELECT name, seq FROM event_cursors")}


def _type_filter(types: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    if not types:
        return "", ()
    return f" AND type IN ({','.join('?' * len(types))})", tuple(types)


def read_batch(
    db: sqlite3.Connection, *, cursor: int, types: Sequence[str], limit: int
) -> Batch:
    """Up to `limit` rows of `types` (all when empty) after `cursor`, in outbox order."""
    (top,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM event_outbox").fetchone()
    where, args = _type_filter(types)
    rows = tuple(
        Row(int(seq), float(created), str(body))
        for seq, created, body in db.execute(
            "SELECT seq, created, body FROM event_outbox WHERE seq > ? AND seq <= ?" + where
            + " ORDER BY seq LIMIT ?",
            (cursor, top, *args, limit),
        )
    )
    scanned = rows[-1].seq if len(rows) >= limit else max(int(top), cursor)
    return Batch(rows=rows, scanned=scanned)


def count_after(db: sqlite3.Connection, *, cursor: int, types: Sequence[str]) -> int:
    where, args = _type_filter(types)
    (n,) = db.execute(
        "SELECT COUNT(*) FROM event_outbox WHERE seq > ?" + where, (cursor, *args)
    ).fetchone()
    return int(n)
