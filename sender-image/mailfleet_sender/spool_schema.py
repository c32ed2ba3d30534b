"""Versions of the spool database's schema and the steps between them; and the message id
sequence. No threads: the spool calls these on its own connections.

A pod upgraded in place opens the spool its previous version wrote: every step runs in one
transaction at open, before anything reads or writes, and records its number in
`PRAGMA user_version`, so a step runs once and a crash during it leaves the old version whole.

- 1: the event outbox (`outbox.SCHEMA`) and the message id sequence. Message ids were SQLite
  rowids, which come back after the newest message leaves (the next id is the largest left
  + 1): an event consumer, a tracking link or a complaint naming message 7 could mean two
  messages. Ids now come from a counter in `meta` that only goes up, seeded from the largest
  id present.
"""

from __future__ import annotations

import sqlite3

from mailfleet_sender import outbox

VERSION = 1
LAST_MESSAGE = "last_message"
"""meta key: the last message id handed out."""


def migrate(db: sqlite3.Connection) -> int:
    """Bring the (already created) base schema to `VERSION`; returns the version found."""
    (found,) = db.execute("PRAGMA user_version").fetchone()
    if found >= VERSION:
        return int(found)
    db.execute("BEGIN IMMEDIATE")
    try:
        if found < 1:
            for statement in outbox.SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            (largest,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                (LAST_MESSAGE, str(int(largest))),
            )
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return int(found)




def last_message_id(db: sqlite3.Connection) -> int:
    """The largest message id ever stored: `meta`'s counter or the largest present (cheap:
    the rowid tree's last entry), whichever is higher. New ids are handed out above it."""
    (last,) = db.execute(
        "SELECT MAX(COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?), 0),"
        " COALESCE((SELECT MAX(id) FROM messages), 0))",
        (LAST_MESSAGE,),
    ).fetchone()
    return int(last)


def note_message_id(db: sqlite3.Connection, message: int) -> None:
    """Record a stored message's id (inside the writer's transaction: a rollback takes it
    back). Ids reserved ahead (tracking tokens) may commit out of order: the counter keeps
    the highest, so an id once stored is never handed out again after a restart."""
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
        " SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
        (LAST_MESSAGE, str(message)),
    )
