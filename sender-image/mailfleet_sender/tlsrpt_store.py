"""Where TLS-RPT state survives a restart: SQLite next to the spool (`tlsrpt.sqlite3`,
`synchronous=FULL`).

- `counts`: the aggregate of each (period, policy domain) not yet reported, written by the
  flush of `tlsrpt_sending` every `flushInterval` (a crash loses at most the sessions since the
  last flush) and read back at start.
- `outbox`: reports of ended periods, built once (their report-id and gzip body fixed, so a
  retry sends the same report), with the rua destinations already served and the next try.
  Moving a period from `counts` to `outbox` is one transaction.
- `received`: reports other senders sent about the pool's domains (`tlsrpt_inbound`), kept
  for `keepReceived` and at most `maxReceived` rows; `(organization, report-id)` is unique, so
  a report delivered twice (by mail and by HTTPS, or retried) is stored and counted once.

Calls are synchronous, made on the event loop: a flush writes one small row per policy domain
that saw a session, a received report one row (like the suppression list's writes).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

FILE = "tlsrpt.sqlite3"
MAX_OUTBOX = 10_000
"""Reports waiting to be sent at most; past it the oldest is dropped (and counted)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    period INTEGER NOT NULL,
    length REAL NOT NULL,
    domain TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (period, domain)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    domain TEXT NOT NULL,
    report_id TEXT NOT NULL,
    report TEXT NOT NULL,
    body BLOB NOT NULL,
    done TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_try REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS received (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    organization TEXT NOT NULL,
    report_id TEXT NOT NULL,
    policy_domains TEXT NOT NULL,
    successes INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    report TEXT NOT NULL,
    UNIQUE (organization, report_id)
);
CREATE INDEX IF NOT EXISTS received_at ON received (at);
"""


@dataclasses.dataclass(frozen=True)
class Pending:
    """One built report waiting in the outbox."""

    id: int
    domain: str
    report_id: str
    report: str
    """The report's JSON text (for the mail's text part and headers)."""
    body: bytes
    """application/tlsrpt+gzip."""
    done: tuple[str, ...]
    """rua URIs already served."""
    attempts: int
    created: float


@dataclasses.dataclass(frozen=True)
class Received:
    organization: str
    report_id: str
    policy_domains: tuple[str, ...]
    successes: int
    failures: int
    report: str


class Store:
    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._summary: dict[str, tuple[int, int, int, float]] | None = None

    def close(self) -> None:
        self._db.close()

    # --- counts -----------------------------------------------------------------------------

    def save_counts(self, rows: list[tuple[int, float, str, str]]) -> None:
        """(period, length, domain, counts JSON) upserted in one transaction."""
        if not rows:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT INTO counts (period, length, domain, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (period, domain) DO UPDATE SET length = excluded.length, "
                "data = excluded.data",
                rows,
            )

    def load_counts(self) -> list[tuple[int, float, str, str]]:
        return [
            (int(p), float(n), str(d), str(t))
            for p, n, d, t in self._db.execute(
                "SELECT period, length, domain, data FROM counts ORDER BY period, domain")
        ]

    # --- outbox -----------------------------------------------------------------------------

    def to_outbox(
        self, *, period: int, domain: str, report_id: str, report: str, body: bytes, now: float
    ) -> int:
        """The counts of (period, domain) become a report to send, in one transaction; how
        many older reports were dropped to keep the outbox bounded."""
        with self._transaction():
            self._db.execute("DELETE FROM counts WHERE period = ? AND domain = ?",
                             (period, domain))
            self._db.execute(
                "INSERT INTO outbox (domain, report_id, report, body, created, next_try) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (domain, report_id, report, body, now, now),
            )
            over = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) - MAX_OUTBOX
            if over > 0:
                self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                    (over,))
        return max(over, 0)

    def due(self, now: float, limit: int = 100) -> list[Pending]:
        rows = self._db.execute(
            "SELECT id, domain, report_id, report, body, done, attempts, created FROM outbox "
            "WHERE next_try <= ? ORDER BY next_try LIMIT ?", (now, limit))
        return [
            Pending(int(i), str(d), str(r), str(t), bytes(b), tuple(json.loads(done)),
                    int(a), float(c))
            for i, d, r, t, b, done, a, c in rows
        ]

    def served(self, item: Pending, done: tuple[str, ...], *, next_try: float) -> None:
        """Destinations served so far; the report stays for the others."""
        self._db.execute(
            "UPDATE outbox SET done = ?, attempts = attempts + 1, next_try = ? WHERE id = ?",
            (json.dumps(sorted(done)), next_try, item.id))

    def remove(self, item: Pending) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (item.id,))

    def outbox_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # --- received ---------------------------------------------------------------------------

    def store_received(
        self, report: Received, *, now: float, keep: float, capacity: int
    ) -> bool:
        """Store a received report; False when the same report was stored before. Reports
        older than `keep` go, and the oldest beyond `capacity`."""
        with self._transaction():
            self._db.execute("DELETE FROM received WHERE at <= ?", (now - keep,))
            cursor = self._db.execute(
                "INSERT INTO received (at, organization, report_id, policy_domains, successes, "
                "failures, report) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (organization, report_id) DO NOTHING",
                (now, report.organization, report.report_id,
                 json.dumps(list(report.policy_domains)), report.successes, report.failures,
                 report.report),
            )
            stored = cursor.rowcount > 0
            self._summary = None
            over = int(self._db.execute("SELECT COUNT(*) FROM received").fetchone()[0]) - capacity
            if over > 0:
                self._db.execute(
                    "DELETE FROM received WHERE id IN "
                    "(SELECT id FROM received ORDER BY at, id LIMIT ?)", (over,))
        return stored

    def received_summary(self) -> dict[str, tuple[int, int, int, float]]:
        """policy domain -> (reports, successful sessions, failed sessions, last at) of the
        reports stored now (recomputed only after a change)."""
        if self._summary is not None:
            return self._summary
        out: dict[str, tuple[int, int, int, float]] = {}
        for domains, ok, failed, at in self._db.execute(
            "SELECT policy_domains, successes, failures, at FROM received"
        ):
            for domain in json.loads(domains):
                n, s, f, last = out.get(domain, (0, 0, 0, 0.0))
                out[domain] = (n + 1, s + int(ok), f + int(failed), max(last, float(at)))
        self._summary = out
        return out

    def received_reports(self) -> list[Received]:
        return [
            Received(str(o), str(r), tuple(json.loads(d)), int(s), int(f), str(t))
            for o, r, d, s, f, t in self._db.execute(
                "SELECT organization, report_id, policy_domains, successes, failures, report "
                "FROM received ORDER BY id")
        ]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
