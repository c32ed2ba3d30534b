"""The durable spool: SQLite in WAL mode on the pod's volume, one row per recipient delivery.

Why SQLite: one file, atomic transactions, a WAL that survives `kill -9` at any instant, and no
server to run. Durability rules:

- A submission is one transaction (message + all its delivery rows), committed with
  `synchronous=FULL` (the WAL is fsynced at commit) before the caller is told, so the client
  hears 250/202 only for mail that is on disk. Nothing is half-written: a failed transaction
  leaves no row.
- All writes go through one writer thread that commits whatever has queued up while the
  previous fsync ran (group commit): under load one fsync covers many submissions.
- Outcome updates (delivered, deferred, bounced) are queued without waiting. A crash can lose
  the last few, which only means a message delivered just before the crash is delivered again
  after restart: exactly the window between the remote 250 and the local commit. A commit
  that fails (disk full, I/O error, a read-only volume) loses none of them: they are kept in
  order and committed, before anything newer, once a retry succeeds (`unrecorded` counts them).
- Only non-final deliveries are kept; a final one removes its row, and the message body goes
  with its last recipient. Per-IP daily counters live in the same file so `sentToday` survives
  restarts, and so do per-address soft-bounce counts (`softToHardAfter` spans restarts) and
  the campaign KPIs (`kpis`: saved now and then and on stop, a crash loses at most the last
  interval's figures, never mail).
- Hand-off (`handoff`): deliveries are first marked `handoff` (durably: after a crash they are
  handed off again, never delivered here), then each message is re-submitted to another pod
  with an idempotency key, and only after that pod accepted it are its rows removed here. The
  receiving pod stores the key in the same transaction as the message (`handoffs` table), so a
  re-submission after a crash on either side is recognised and not stored twice.
- Events (`outbox`): an event rides with the write that causes it (the accepted events with the
  message, a delivery's with its update) and is committed in the same transaction; once
  committed it is handed to `on_events` (stdout, listeners). Message ids only go up
  (`spool_schema`), so an event's message id names one message for good.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from mailfleet_sender import events, outbox, spool_schema
from mailfleet_sender import tags as tags_module

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.sqlite3"
MAX_BATCH = 2000
"""Operations per write transaction; bounds the latency of one commit under a flood."""
RETRY_FIRST = 0.05
RETRY_MAX = 5.0
"""Seconds between tries of updates whose commit failed (doubling from the first)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    sender TEXT NOT NULL,
    from_domain TEXT NOT NULL,
    message_id TEXT NOT NULL,
    data BLOB NOT NULL,
    remaining INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES messages(id),
    recipient TEXT NOT NULL,
    domain TEXT NOT NULL,
    class TEXT NOT NULL,
    tier TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    created REAL NOT NULL,
    last_response TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (class, next_attempt);
CREATE TABLE IF NOT EXISTS soft_bounces (
    address TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS handoffs (
    key TEXT PRIMARY KEY,
    message INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS handoffs_created ON handoffs (created);
CREATE TABLE IF NOT EXISTS counters (
    day INTEGER NOT NULL,
    address TEXT NOT NULL,
    kind TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (day, address, kind)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kpis (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""

HANDOFF_MODE = "handoff_mode"
"""meta key: `drain` while a hand-off drain is on (the pod comes back draining after a restart),
`settle` after an undrain left messages whose hand-off must still finish (the pod comes back
accepting mail and finishes those). Absent with hand-off rows: `drain` (older spools)."""

State = Literal["queued", "held", "handoff", "delivered", "bounced", "expired", "handed_off"]
FINAL_STATES: frozenset[str] = frozenset({"delivered", "bounced", "expired", "handed_off"})
HANDOFF_KEY_DAYS = 7
"""How long a received hand-off key is remembered (a sender retries for far less)."""


@dataclasses.dataclass(frozen=True)
class NewMessage:
    """What submission hands to the spool: one message, its envelope and its metadata."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    from_domain: str
    message_id: str
    class_name: str
    tier: str | None
    created: float
    handoff_key: str | None = None
    """Idempotency key of a message handed off by another pod (stored with the message)."""
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    accepted: events.Event | None = None
    """The accepted event without message and recipient: one per recipient is written with
    the message (None: no event, e.g. a hand-off, accepted where it was first submitted)."""
    id: int | None = None
    """Its id, reserved beforehand (`Spool.reserve_id`) by a caller that must name it before
    it is stored (tracking tokens); the spool reserves one when None."""


@dataclasses.dataclass(frozen=True)
class Known:
    """A hand-off whose key this spool already holds: the message it was stored as."""

    message: int
    recipients: int


@dataclasses.dataclass(frozen=True)
class HandoffItem:
    """One message (and its undelivered recipients) to re-submit to another pod."""

    message: int
    sender: str
    data: bytes
    message_id: str
    created: float
    class_name: str
    tier: str | None
    deliveries: tuple[tuple[int, str], ...]
    """(delivery id, recipient) pairs."""
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SoftCount:
    """Set an address's count of soft bounces in a row (0 forgets it)."""

    address: str
    n: int


@dataclasses.dataclass
class Delivery:
    """One recipient of one message, as the scheduler tracks it (mutable in memory)."""

    id: int
    message: int
    recipient: str
    domain: str
    class_name: str
    tier: str | None
    sender: str
    from_domain: str
    attempts: int
    next_attempt: float
    created: float
    state: str = "queued"
    last_response: str | None = None


@dataclasses.dataclass(frozen=True)
class Update:
    """A change of one delivery row, applied in the writer's next transaction."""

    delivery: int
    message: int
    state: State
    attempts: int
    next_attempt: float
    response: str | None
    event: events.Event | None = None
    """Committed with the update; its tags are the message's when it has none."""


@dataclasses.dataclass(frozen=True)
class Count:
    """+n on a per-day, per-IP counter (sent, delivered, bounced, deferred, complained)."""

    day: int
    address: str
    kind: str
    n: int = 1


@dataclasses.dataclass
class _Op:
    kind: Literal["submit", "update", "count", "soft", "mark_handoff", "unmark_handoff",
                  "barrier", "event", "outbox", "kpis"]
    payload: object
    future: concurrent.futures.Future[object] | None


_IDLE = _Op("barrier", None, None)
"""What the writer takes from an empty queue when it wakes only to retry."""


class SpoolError(RuntimeError):
    """The spool cannot take the write (disk full, I/O error); the client gets a 4xx."""


class Spool:
    """Open with `Spool.open(directory)`, then `start()` the writer before writing."""

    def __init__(self, path: Path, *, sync: str = "full") -> None:
        self.path = path
        self._sync = "FULL" if sync == "full" else "NORMAL"
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool-read")
        self._reader_local = threading.local()
        self.commits = 0
        self.commit_failures = 0
        self._retry: list[_Op] = []
        self._retry_delay = RETRY_FIRST
        self.unrecorded = 0
        """Outcome and counter updates of failed commits waiting for a retry."""
        self.on_events: Callable[[list[outbox.Published]], None] | None = None
        """Called by the writer thread with the events of each committed transaction."""
        self.outbox_enabled = False
        """Events are appended to the outbox (some webhook reads them)."""
        self._published: list[outbox.Published] = []
        self._kpis = b""
        with self._connect() as db:
            db.executescript(_SCHEMA)
            spool_schema.migrate(db)
            highest = spool_schema.last_message_id(db)
        self._ids = itertools.count(int(highest) + 1)
        """Every message id comes from here (never from SQLite's max+1, which would hand out
        an id reserved but not yet stored): unique for the life of the process."""

    @classmethod
    def open(cls, directory: str | Path, *, sync: str = "full") -> Spool:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path / SPOOL_FILE, sync=sync)

    def reader(self) -> sqlite3.Connection:
        """A connection of its own for a reader outside the spool (a webhook's outbox reads)."""
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._sync}")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    # --- reading (startup and cache misses) -----------------------------------------------

    def load_pending(self) -> list[Delivery]:
        """Every delivery not yet final, for the scheduler at start (in-flight ones included:
        after a crash they are simply tried again)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT d.id, d.message, d.recipient, d.domain, d.class, d.tier, m.sender,"
                " m.from_domain, d.attempts, d.next_attempt, d.created, d.state, d.last_response"
                " FROM deliveries d JOIN messages m ON m.id = d.message"
                " WHERE d.state != 'handoff' ORDER BY d.id"
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def load_page(
        self, class_name: str, after: tuple[float, int] | None, *, due_by: float | None,
        limit: int,
    ) -> list[Delivery]:
        """The next page of one class in (due time, id) order after `after`, due by `due_by`
        (None: any time): the engine's window is refilled from here (index `deliveries_due`)."""
        start = after if after is not None else (float("-inf"), 0)
        due = "" if due_by is None else " AND d.next_attempt <= ?"
        args: tuple[object, ...] = (class_name, start[0], start[1])
        if due_by is not None:
            args += (due_by,)
        with self._connect() as db:
            rows = db.execute(
                "SELECT d.id, d.message, d.recipient, d.domain, d.class, d.tier, m.sender,"
                " m.from_domain, d.attempts, d.next_attempt, d.created, d.state, d.last_response"
                " FROM deliveries d JOIN messages m ON m.id = d.message"
                " WHERE d.class = ? AND (d.next_attempt, d.id) > (?, ?)" + due +
                " AND d.state != 'handoff' ORDER BY d.next_attempt, d.id LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def pending_classes(self) -> dict[str, tuple[int, float]]:
        """class -> (deliveries not final and not handed off, oldest creation time): the true
        queue depth, whatever part of it the engine holds in memory."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT class, COUNT(*), MIN(created) FROM deliveries"
                " WHERE state != 'handoff' GROUP BY class"
            ).fetchall()
        return {str(c): (int(n), float(oldest)) for c, n, oldest in rows}

    def load_handoff(self, limit: int = 100) -> list[HandoffItem]:
        """Messages with deliveries marked for hand-off (oldest first, at most `limit`)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT m.id, m.sender, m.data, m.message_id, m.created, d.class, d.tier,"
                " d.id, d.recipient, t.tags FROM deliveries d JOIN messages m ON m.id = d.message"
                " LEFT JOIN message_tags t ON t.message = m.id"
                " WHERE d.state = 'handoff' AND m.id IN (SELECT DISTINCT message FROM"
                " deliveries WHERE state = 'handoff' ORDER BY message LIMIT ?)"
                " ORDER BY m.id, d.id",
                (limit,),
            ).fetchall()
        grouped: dict[tuple[int, str, str | None], list[tuple[int, str]]] = {}
        heads: dict[tuple[int, str, str | None], tuple[str, bytes, str, float, str | None]] = {}
        for message, sender, data, message_id, created, klass, tier, did, rcpt, tag in rows:
            key = (int(message), str(klass), tier)
            grouped.setdefault(key, []).append((int(did), str(rcpt)))
            heads[key] = (str(sender), bytes(data), str(message_id), float(created), tag)
        return [
            HandoffItem(
                message=key[0], sender=heads[key][0], data=heads[key][1],
                message_id=heads[key][2], created=heads[key][3], class_name=key[1],
                tier=key[2], deliveries=tuple(items), tags=tags_module.decode(heads[key][4]),
            )
            for key, items in grouped.items()
        ]

    def handoff_stored(self, key: str) -> int | None:
        """The message a hand-off key was stored as (None: never stored here), read from
        what is committed: a draining pod still answers a repeat it holds as a duplicate."""
        with self._connect() as db:
            row = db.execute("SELECT message FROM handoffs WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def count_handoff(self) -> int:
        with self._connect() as db:
            (n,) = db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'handoff'"
            ).fetchone()
        return int(n)

    def load_soft_counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT address, n FROM soft_bounces").fetchall()
        return {str(address): int(n) for address, n in rows}

    def load_counters(self, day: int) -> dict[tuple[str, str], int]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT address, kind, n FROM counters WHERE day = ?", (day,)
            ).fetchall()
        return {(address, kind): n for address, kind, n in rows}

    def load_counters_between(
        self, first: int, last: int
    ) -> dict[int, dict[tuple[str, str], int]]:
        """Per day from `first` to `last` (inclusive): (address, kind) -> n."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT day, address, kind, n FROM counters WHERE day BETWEEN ? AND ?",
                (first, last),
            ).fetchall()
        found: dict[int, dict[tuple[str, str], int]] = {}
        for day, address, kind, n in rows:
            found.setdefault(int(day), {})[(str(address), str(kind))] = int(n)
        return found

    def load_kpis(self) -> bytes | None:
        """The campaign KPIs saved last (`save_kpis`), None when never saved."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM kpis WHERE key = 'book'").fetchone()
        return bytes(row[0]) if row is not None else None

    def count_pending(self) -> int:
        with self._connect() as db:
            (n,) = db.execute("SELECT COUNT(*) FROM deliveries").fetchone()
        return int(n)

    def _read_data(self, message: int) -> bytes | None:
        db = getattr(self._reader_local, "db", None)
        if db is None:
            db = self._connect()
            self._reader_local.db = db
        row = db.execute("SELECT data FROM messages WHERE id = ?", (message,)).fetchone()
        return None if row is None else bytes(row[0])

    async def read_data(self, message: int) -> bytes | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_data, message)

    # --- writing --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
            self._thread.start()

    def reserve_id(self) -> int:
        """An id for a message about to be submitted (`NewMessage.id`); an id reserved and
        never used is simply skipped."""
        return next(self._ids)

    def _with_id(self, message: NewMessage) -> NewMessage:
        return message if message.id is not None else dataclasses.replace(
            message, id=self.reserve_id()
        )

    async def submit(self, message: NewMessage) -> list[Delivery] | Known:
        """Store a message and its deliveries durably; return the delivery rows (or `Known`
        when it is a hand-off whose key is already stored)."""
        result = await self._call("submit", self._with_id(message))
        assert isinstance(result, list | Known)
        return result

    async def submit_many(self, messages: Sequence[NewMessage]) -> list[list[Delivery]]:
        """Several messages in one transaction (bulk injection, tests and tools)."""
        futures = [self._enqueue("submit", self._with_id(m)) for m in messages]
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        return [r for r in results if isinstance(r, list)]

    def update(
        self,
        updates: Sequence[Update],
        counts: Sequence[Count] = (),
        soft: Sequence[SoftCount] = (),
    ) -> None:
        """Queue outcome updates; they commit with the writer's next batch."""
        for item in updates:
            self._queue.put(_Op("update", item, None))
        for count in counts:
            self._queue.put(_Op("count", count, None))
        for entry in soft:
            self._queue.put(_Op("soft", entry, None))

    def record_event(self, event: events.Event, *, tags_from: int | None = None) -> None:
        """Queue an event not tied to a spool change (a complaint, an open); committed with
        the writer's next batch. `tags_from`: a message of this spool whose tags it takes."""
        self._queue.put(_Op("event", (event, tags_from), None))

    async def in_writer(self, work: Callable[[sqlite3.Connection], object]) -> object:
        """Run `work` in the writer's next transaction (outbox cursors and pruning)."""
        return await self._call("outbox", work)
    def save_kpis(self, data: bytes) -> None:
        """Queue the KPIs' state; it commits with the writer's next batch (and on close).
        Only the newest state is written: a commit fault holds one marker, not every copy."""
        self._kpis = data
        self._queue.put(_Op("kpis", None, None))

    async def mark_handoff(self) -> int:
        """Durably mark every undelivered row for hand-off; returns how many."""
        result = await self._call("mark_handoff", None)
        assert isinstance(result, int)
        return result

    async def unmark_handoff(self, keep: Sequence[int] = ()) -> int:
        """Undrain: return every hand-off row to the queue (durably), except those of the
        messages in `keep` (their hand-off must still finish). Returns how many came back."""
        result = await self._call("unmark_handoff", tuple(keep))
        assert isinstance(result, int)
        return result

    def handoff_mode(self) -> str:
        """`drain` or `settle` (see HANDOFF_MODE); `drain` when not recorded."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (HANDOFF_MODE,)).fetchone()
        return str(row[0]) if row is not None else "drain"

    async def finish_handoff(self, item: HandoffItem) -> None:
        """Another pod accepted the message: remove its handed-off rows here (durably)."""
        self.update(
            [Update(did, item.message, "handed_off", 0, 0.0, "handed off") for did, _ in
             item.deliveries]
        )
        await self.flush()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._call("barrier", None)

    def _enqueue(self, kind: str, payload: object) -> concurrent.futures.Future[object]:
        future: concurrent.futures.Future[object] = concurrent.futures.Future()
        if self._thread is None or not self._thread.is_alive():
            future.set_exception(SpoolError("spool writer is not running"))
            return future
        self._queue.put(_Op(kind, payload, future))  # type: ignore[arg-type]
        return future

    async def _call(self, kind: str, payload: object) -> object:
        return await asyncio.wrap_future(self._enqueue(kind, payload))

    def close(self) -> None:
        """Commit what is queued and stop the writer (the spool stays consistent)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._reader.shutdown(wait=True)

    def _run(self) -> None:
        db = self._connect()
        stopping = False
        while not stopping:
            retrying = bool(self._retry)
            try:
                first = self._queue.get(timeout=self._retry_delay if retrying else None)
            except queue.Empty:
                first = _IDLE
            batch: list[_Op] = []
            if first is None:
                stopping = True
            elif first is not _IDLE:
                batch.append(first)
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            if self._retry:
                held, self._retry = self._retry, []
                db = self._write_batch(db, held + batch)
                self._retried(len(held))
            elif batch:
                db = self._write_batch(db, batch)
            self.unrecorded = len(self._retry)
        if self._retry:
            held, self._retry = self._retry, []
            db = self._write_batch(db, held)
        if self._retry:
            log.error(
                "spool writer stopped with outcome updates not recorded; their deliveries are "
                "tried again after restart",
                extra={"ops": len(self._retry)},
            )
        db.close()

    def _retried(self, held: int) -> None:
        """Back off while the fault lasts; the held updates always go first, in order, in the
        same transaction as newer writes (a newer update of a row must win)."""
        if self._retry:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        else:
            self._retry_delay = RETRY_FIRST
            log.info("spool writes recovered", extra={"ops": held})

    def _write_batch(self, db: sqlite3.Connection, batch: list[_Op]) -> sqlite3.Connection:
        """One transaction for the batch; on failure the callers waiting for an answer get
        `SpoolError` and the queued-without-waiting updates are kept (in order) for a retry,
        so an outcome or counter is never dropped by a failed commit."""
        results: list[object] = []
        self._published = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in batch:
                results.append(self._apply(db, op))
            db.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # any failure: roll back, fail the callers, keep the writer
            self.commit_failures += 1
            unanswered = [op for op in batch if op.future is None]
            log.error(
                "spool write failed",
                extra={"error": str(exc), "ops": len(batch), "kept_for_retry": len(unanswered)},
            )
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            error = SpoolError(f"spool write failed: {exc}")
            for op in batch:
                if op.future is not None and not op.future.done():
                    op.future.set_exception(error)
            self._retry.extend(unanswered)
            last = max((i for i, op in enumerate(self._retry) if op.kind == "kpis"), default=-1)
            self._retry = [op for i, op in enumerate(self._retry) if op.kind != "kpis" or i == last]
            return self._reconnect(db)
        self._publish()  # before the answers: once flushed, an event has been handed over
        for op, result in zip(batch, results, strict=True):
            if op.future is not None and not op.future.done():
                op.future.set_result(result)
        return db

    def _publish(self) -> None:
        published, self._published = self._published, []
        if published and self.on_events is not None:
            try:
                self.on_events(published)
            except Exception:  # committed already: a broken consumer must not stop the writer
                log.exception("publishing committed events failed")

    def _event(self, db: sqlite3.Connection, event: events.Event, tags_from: int | None) -> None:
        self._published.append(
            outbox.write(db, event, store=self.outbox_enabled, now=event.time,
                         tags_from=tags_from)
        )

    def _reconnect(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """A fresh handle after a failure (a remounted volume, a handle left read-only)."""
        with contextlib.suppress(sqlite3.Error):
            db.close()
        try:
            return self._connect()
        except sqlite3.Error as exc:  # the closed handle fails the next try, which reopens
            log.error("spool reopen failed", extra={"error": str(exc)})
            return db

    def _apply(self, db: sqlite3.Connection, op: _Op) -> object:
        if op.kind == "submit":
            assert isinstance(op.payload, NewMessage)
            inserted = _insert(db, op.payload)
            if isinstance(inserted, list) and op.payload.accepted is not None:
                for row in inserted:
                    self._event(db, dataclasses.replace(
                        op.payload.accepted, id=events.new_event_id(),
                        message_id=str(row.message), recipient=row.recipient,
                        tags=op.payload.tags,
                    ), None)
            return inserted
        if op.kind == "update":
            assert isinstance(op.payload, Update)
            _apply_update(db, op.payload)
            if op.payload.event is not None:
                self._event(db, op.payload.event, op.payload.message)
        elif op.kind == "event":
            assert isinstance(op.payload, tuple)
            self._event(db, *op.payload)
        elif op.kind == "outbox":
            assert callable(op.payload)
            return op.payload(db)
        elif op.kind == "soft":
            assert isinstance(op.payload, SoftCount)
            if op.payload.n <= 0:
                db.execute("DELETE FROM soft_bounces WHERE address = ?", (op.payload.address,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO soft_bounces (address, n) VALUES (?, ?)",
                    (op.payload.address, op.payload.n),
                )
        elif op.kind == "mark_handoff":
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, 'drain')", (HANDOFF_MODE,)
            )
            return db.execute(
                "UPDATE deliveries SET state = 'handoff' WHERE state IN ('queued', 'held')"
            ).rowcount
        elif op.kind == "unmark_handoff":
            assert isinstance(op.payload, tuple)
            keep = [int(m) for m in op.payload]
            marks = ",".join("?" * len(keep))
            unmarked = db.execute(
                "UPDATE deliveries SET state = 'queued' WHERE state = 'handoff'"
                + (f" AND message NOT IN ({marks})" if keep else ""),
                keep,
            ).rowcount
            if keep:
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, 'settle')",
                    (HANDOFF_MODE,),
                )
            else:
                db.execute("DELETE FROM meta WHERE key = ?", (HANDOFF_MODE,))
            return unmarked
        elif op.kind == "kpis":
            db.execute("INSERT OR REPLACE INTO kpis (key, value) VALUES ('book', ?)",
                       (self._kpis,))
        elif op.kind == "count":
            assert isinstance(op.payload, Count)
            c = op.payload
            db.execute(
                "INSERT INTO counters (day, address, kind, n) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (day, address, kind) DO UPDATE SET n = n + excluded.n",
                (c.day, c.address, c.kind, c.n),
            )
        return None


def _insert(db: sqlite3.Connection, m: NewMessage) -> list[Delivery] | Known:
    if m.handoff_key is not None:
        row = db.execute(
            "SELECT message FROM handoffs WHERE key = ?", (m.handoff_key,)
        ).fetchone()
        if row is not None:
            return Known(message=int(row[0]), recipients=len(m.recipients))
        db.execute(
            "DELETE FROM handoffs WHERE created < ?", (m.created - HANDOFF_KEY_DAYS * 86400,)
        )
    assert m.id is not None, "Spool.submit reserves the id"
    message = m.id
    spool_schema.note_message_id(db, message)
    db.execute(
        "INSERT INTO messages (id, created, sender, from_domain, message_id, data, remaining)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (message, m.created, m.sender, m.from_domain, m.message_id, m.data, len(m.recipients)),
    )
    outbox.store_tags(db, message, m.tags, m.created)
    if m.handoff_key is not None:
        db.execute(
            "INSERT INTO handoffs (key, message, created) VALUES (?, ?, ?)",
            (m.handoff_key, message, m.created),
        )
    out: list[Delivery] = []
    for recipient in m.recipients:
        domain = recipient.rpartition("@")[2].lower()
        cursor = db.execute(
            "INSERT INTO deliveries (message, recipient, domain, class, tier, state, attempts,"
            " next_attempt, created) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
            (message, recipient, domain, m.class_name, m.tier, m.created, m.created),
        )
        out.append(
            Delivery(
                id=int(cursor.lastrowid or 0),
                message=message,
                recipient=recipient,
                domain=domain,
                class_name=m.class_name,
                tier=m.tier,
                sender=m.sender,
                from_domain=m.from_domain,
                attempts=0,
                next_attempt=m.created,
                created=m.created,
            )
        )
    return out


def _apply_update(db: sqlite3.Connection, u: Update) -> None:
    if u.state in FINAL_STATES:
        deleted = db.execute("DELETE FROM deliveries WHERE id = ?", (u.delivery,)).rowcount
        if deleted:
            db.execute("UPDATE messages SET remaining = remaining - 1 WHERE id = ?", (u.message,))
            db.execute("DELETE FROM messages WHERE id = ? AND remaining <= 0", (u.message,))
        return
    db.execute(
        "UPDATE deliveries SET state = ?, attempts = ?, next_attempt = ?, last_response = ?"
        " WHERE id = ?",
        (u.state, u.attempts, u.next_attempt, u.response, u.delivery),
    )
