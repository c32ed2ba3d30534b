"""The pool's suppression list: addresses no pod of the pool may mail.

Mechanism: every pod holds a full copy, replicated between peers. Each pod keeps the list in
a local SQLite file (on its spool volume) as one last-writer-wins register per address: an
entry is (address, suppressed or removed, reason, source, timestamp, origin pod). A write
replaces the stored entry only if its (timestamp, origin, suppressed) is greater, so applying
the same entries in any order, any number of times, gives the same list: adds and removes are
idempotent and commutative, and a conflicting add and remove resolve the same way on every pod
(the later timestamp wins; on a tie, the greater origin name, then the addition, then the
remaining fields, so no two versions ever tie).
Timestamps come from a hybrid logical clock (wall-clock microseconds, but never behind any
timestamp this pod has seen), so a change made after seeing another is always ordered after it
even when pods' clocks disagree a little.

Replication (`Replicator`): a local change is pushed at once to every peer found by resolving
the pool's headless Service (one A record per pod), which is what makes "an entry recorded at
one pod stops the others within seconds" hold; and every few seconds each pod pulls from every
peer the changes it has not seen (`GET /v1/suppressions?since=<cursor>`, the cursor being the
peer's local change sequence, not a timestamp, so entries a peer merged late are not skipped).
Pulling repairs lost pushes, catches up a pod that was down and bootstraps a new pod from any
peer.

Why not a shared store (Redis, a database, a ConfigMap): it would be one more stateful
dependency for the pool, whose loss stops every pod from checking suppressions (fail open:
mail to suppressed addresses; fail closed: no mail at all). With full copies on every pod a
check is an in-memory set lookup, sending never waits for the network, and the list survives
the loss of any pod, or of all pods but one. The price is eventual consistency within the push
latency (milliseconds) or, when a push is lost, one pull interval.

Addresses: the domain is lowercased; the local part is kept as written (RFC 5321 says it may be
case-sensitive) but compared case-insensitively, because in practice no mailbox provider
distinguishes `Jane@` from `jane@` and suppression must err on the side of not mailing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import logging
import math
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncresolver
import dns.exception
from aiohttp import web

from mailfleet_sender import bodies

__all__ = [
    "MAX_IMPORT_BYTES",
    "MAX_IMPORT_ENTRIES",
    "Authorizer",
    "Entry",
    "InvalidAddress",
    "PeerDiscoveryError",
    "Reason",
    "ReplicationMetrics",
    "Replicator",
    "SuppressionList",
    "SuppressionMetrics",
    "bearer_authorizer",
    "dns_peers",
    "normalize_address",
    "static_peers",
    "suppression_routes",
]

log = logging.getLogger(__name__)

MAX_IMPORT_ENTRIES = 10_000
"""Entries per bulk import request: bigger lists are imported in several requests."""
MAX_IMPORT_BYTES = 2 * 1024 * 1024
"""Body size of a bulk import request."""
PAGE_LIMIT = 1000
"""Entries per page of the changes feed and of the listing."""
MAX_QUERY_INT = 2**63 - 1
"""Cursors and offsets are SQLite integers: a larger value is a 400, not an overflow."""
MAX_ENTRY_BYTES = 16 * 1024
"""Body size of a request about one address (PUT)."""
MAX_SKEW_US = 5 * 60 * 1_000_000
"""Entries from peers stamped later than now plus this are refused (not clamped: a clamped
copy would differ from the origin's, and the list would no longer be the same everywhere).
One entry with ts = 2**63-1 otherwise made every later local write overflow."""

_LOCAL_PART = re.compile(r"^[^\s@\"<>()\[\],;:\\\x00-\x1f\x7f]{1,64}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$"
)


class InvalidAddress(ValueError):
    """Not an address we can suppress (syntax), with the reason."""


class Reason(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_TO_HARD = "soft_to_hard"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    MANUAL = "manual"
    IMPORT = "import"
    REMOVED = "removed"


def normalize_address(address: str) -> tuple[str, str]:
    """(display form, comparison key) of an address; InvalidAddress when it is not one."""
    if not isinstance(address, str):
        raise InvalidAddress("an address must be a string")
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise InvalidAddress(f"{address!r} has no local part and domain")
    if len(text) > 254:
        raise InvalidAddress(f"{address[:40]!r}... is longer than 254 characters")
    try:
        domain = domain.strip().lower().encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidAddress(f"{address!r}: invalid domain") from exc
    if not _LOCAL_PART.match(local):
        raise InvalidAddress(f"{address!r}: invalid local part")
    if not _DOMAIN.match(domain):
        raise InvalidAddress(f"{address!r}: invalid domain")
    display = f"{local}@{domain}"
    return display, display.lower()


@dataclasses.dataclass(frozen=True)
class Entry:
    """The current state of one address (a last-writer-wins register)."""

    address: str
    suppressed: bool
    reason: str
    source: str
    ts: int  # hybrid logical clock, microseconds
    origin: str

    @property
    def key(self) -> str:
        return self.address.lower()

    @property
    def at(self) -> float:
        """The timestamp as Unix seconds."""
        return self.ts / 1_000_000

    def order(self) -> tuple[int, str, bool, str, str, str]:
        """Total order of versions of one address; the greatest wins everywhere.

        Every field takes part, so two versions that differ in anything never tie and the
        outcome cannot depend on arrival order.
        """
        return (self.ts, self.origin, self.suppressed, self.address, self.reason, self.source)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "suppressed": self.suppressed,
            "reason": self.reason,
            "source": self.source,
            "ts": self.ts,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "origin": self.origin,
        }

    @classmethod
    def from_json(cls, body: Any) -> Entry:
        """Read an entry from a peer; ValueError when any field is wrong."""
        if not isinstance(body, dict):
            raise ValueError("an entry must be an object")
        try:
            display, _ = normalize_address(body["address"])
            suppressed, ts = body["suppressed"], body["ts"]
            reason, source, origin = body["reason"], body["source"], body["origin"]
        except KeyError as exc:
            raise ValueError(f"entry lacks {exc.args[0]!r}") from exc
        if not isinstance(suppressed, bool) or not isinstance(ts, int) or ts <= 0:
            raise ValueError("entry has a bad 'suppressed' or 'ts'")
        for name, value in (("reason", reason), ("source", source), ("origin", origin)):
            if not isinstance(value, str) or not value or len(value) > 200:
                raise ValueError(f"entry has a bad {name!r}")
        return cls(display, suppressed, reason, source, ts, origin)


@dataclasses.dataclass
class SuppressionMetrics:
    """Counters exported by the sender's /metrics (one instance per list)."""

    added: int = 0
    removed: int = 0
    merged: int = 0
    merge_rejected: int = 0
    import_rejected: int = 0
    invalid_requests: int = 0
    unauthorized: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    suppressed INTEGER NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    ts INTEGER NOT NULL,
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_seq ON entries (seq);
CREATE TABLE IF NOT EXISTS peer_cursors (
    peer TEXT PRIMARY KEY, epoch TEXT NOT NULL, cursor INTEGER NOT NULL
);
"""

Listener = Callable[[Sequence[Entry]], None]


class SuppressionList:
    """One pod's copy of the pool's list: SQLite on disk, the active set in memory.

    Writes go to SQLite synchronously on the event loop: they are rare (bounces, complaints,
    admin calls) and small. Reads on the sending path (`is_suppressed`) never touch the disk.

    Durability: `synchronous=FULL` fsyncs the WAL at every commit. With NORMAL a committed
    row survives a crash of the process but not a power loss or a kernel panic, and an
    unsubscribe we answered 200 for (RFC 8058: the receiver will not ask again) or a hard
    bounce we acknowledged would be forgotten, and we would mail that address again: a
    complaint, a CAN-SPAM/GDPR breach. Writes are rare, so the fsync costs nothing that shows.
    """

    def __init__(
        self, path: str | Path, *, node_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.node_id = node_id
        self.metrics = SuppressionMetrics()
        self._clock = clock
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # see the class docstring: power loss
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT v FROM meta WHERE k='epoch'").fetchone()
        if row is None:
            # A new file is a new history: peers must not trust old cursors into it.
            self.epoch = secrets.token_hex(8)
            self._db.execute("INSERT INTO meta (k, v) VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = str(row[0])
        self._active: set[str] = {
            str(key) for (key,) in self._db.execute("SELECT key FROM entries WHERE suppressed")
        }
        self._resync = (
            self._db.execute("SELECT v FROM meta WHERE k='resync'").fetchone() is not None
        )
        self.resync_listeners: list[Callable[[], None]] = []
        (seq,) = self._db.execute("SELECT MAX(seq) FROM entries").fetchone()
        self._seq = int(seq or 0)
        self._hlc = 0
        self._listeners: list[Listener] = []
        self._heal_future_entries()
        self._hlc = int(self._db.execute("SELECT MAX(ts) FROM entries").fetchone()[0] or 0)

    @property
    def synchronous(self) -> int:
        """The `PRAGMA synchronous` level in force on the connection (2 = FULL)."""
        (level,) = self._db.execute("PRAGMA synchronous").fetchone()
        return int(level)

    def close(self) -> None:
        self._db.close()

    def _horizon(self) -> int:
        """The latest timestamp believed: now plus MAX_SKEW (see `merge`)."""
        return int(self._clock() * 1_000_000) + MAX_SKEW_US

    def _heal_future_entries(self) -> None:
        """A file written before timestamps were bounded may hold one far in the future
        (2**63-1 made every later write overflow): such entries are re-stamped with now,
        and so replicate again with a sane timestamp, keeping their content."""
        horizon = self._horizon()
        rows = self._db.execute(
            "SELECT key FROM entries WHERE ts > ? ORDER BY key", (horizon,)
        ).fetchall()
        if not rows:
            return
        now = int(self._clock() * 1_000_000)
        self._db.execute("BEGIN IMMEDIATE")
        for (key,) in rows:
            self._seq += 1
            self._db.execute("UPDATE entries SET ts = ?, seq = ? WHERE key = ?",
                             (now, self._seq, key))
        self._db.execute("COMMIT")
        log.warning("suppression entries with a timestamp in the future re-stamped at start",
                    extra={"entries": len(rows)})

    # ---------------------------------------------------------------- re-sync after a loss

    @property
    def resync_pending(self) -> bool:
        """The list was lost (a corrupt file set aside) and is not restored yet: bulk mail is
        held meanwhile (fail closed). Kept in the file, so a restart does not forget it."""
        return self._resync

    def require_resync(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('resync', 'pending')")
        self._resync = True

    def resynced(self, via: str) -> None:
        """Restored: a full pull from a peer, or an admin confirming an import finished."""
        if not self._resync:
            return
        self._db.execute("DELETE FROM meta WHERE k='resync'")
        self._resync = False
        log.warning("suppression list restored after a loss; held mail goes out",
                    extra={"via": via, "entries": len(self._active)})
        for listener in self.resync_listeners:
            listener()

    # ---------------------------------------------------------------- reading

    def is_suppressed(self, address: str) -> bool:
        """The sending-path check: in memory, case-insensitive. Unparsable -> not suppressed."""
        try:
            _, key = normalize_address(address)
        except InvalidAddress:
            return False
        return key in self._active

    def __len__(self) -> int:
        return len(self._active)

    @property
    def cursor(self) -> int:
        """The local change sequence: peers pull entries with a greater sequence."""
        return self._seq

    def get(self, address: str) -> Entry | None:
        _, key = normalize_address(address)
        row = self._db.execute(
            "SELECT address, suppressed, reason, source, ts, origin FROM entries WHERE key=?",
            (key,),
        ).fetchone()
        return _entry(row) if row else None

    def last_removed_at(self, address: str) -> float | None:
        """When the address was last removed, if its current state is "removed"."""
        entry = self.get(address)
        return entry.at if entry is not None and not entry.suppressed else None

    def entries(self, since: int = 0, limit: int = PAGE_LIMIT) -> tuple[list[Entry], int]:
        """Changes after local sequence `since` (removals included) and the next cursor."""
        rows = self._db.execute(
            "SELECT address, suppressed, reason, source, ts, origin, seq FROM entries "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (since, limit),
        ).fetchall()
        cursor = int(rows[-1][6]) if rows else max(since, 0)
        return [_entry(row[:6]) for row in rows], cursor

    def active(self, *, offset: int = 0, limit: int = PAGE_LIMIT) -> list[Entry]:
        rows = self._db.execute(
            "SELECT address, suppressed, reason, source, ts, origin FROM entries "
            "WHERE suppressed ORDER BY key LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
        return [_entry(row) for row in rows]

    # ---------------------------------------------------------------- writing

    def add_listener(self, listener: Listener) -> None:
        """Called with every batch of local changes (not merges), e.g. to push them to peers."""
        self._listeners.append(listener)

    def _tick(self) -> int:
        self._hlc = max(int(self._clock() * 1_000_000), self._hlc + 1)
        return self._hlc

    def _store(self, entry: Entry) -> bool:
        """Write `entry` if it beats the stored version; inside the caller's transaction."""
        key = entry.key
        row = self._db.execute(
            "SELECT address, suppressed, reason, source, ts, origin FROM entries WHERE key=?",
            (key,),
        ).fetchone()
        if row is not None and _entry(row).order() >= entry.order():
            return False
        self._seq += 1
        self._db.execute(
            "INSERT OR REPLACE INTO entries "
            "(key, address, suppressed, reason, source, ts, origin, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, entry.address, int(entry.suppressed), entry.reason, entry.source,
             entry.ts, entry.origin, self._seq),
        )
        return True

    def _write(self, entries: Iterable[Entry]) -> list[Entry]:
        """Store a batch in one transaction; the in-memory set follows only after COMMIT."""
        seq_before = self._seq
        self._db.execute("BEGIN IMMEDIATE")
        try:
            applied = [entry for entry in entries if self._store(entry)]
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._seq = seq_before
            raise
        for entry in applied:
            if entry.suppressed:
                self._active.add(entry.key)
            else:
                self._active.discard(entry.key)
        return applied

    def _local(self, entries: Sequence[Entry]) -> list[Entry]:
        applied = self._write(entries)
        if applied:
            for listener in self._listeners:
                listener(applied)
        return applied

    async def add(self, address: str, reason: str, source: str) -> Entry:
        """Suppress an address; if it already is, keep the existing entry (idempotent)."""
        return self.record(address, reason, source)

    def record(self, address: str, reason: str, source: str) -> Entry:
        """`add` for synchronous callers (the delivery path's outcome observer)."""
        display, key = normalize_address(address)
        if key in self._active:
            existing = self.get(display)
            assert existing is not None
            return existing
        entry = Entry(display, True, reason, source, self._tick(), self.node_id)
        self._local([entry])
        self.metrics.added += 1
        log.info("suppression added", extra={"reason": reason, "source": source})
        return entry

    async def add_many(self, items: Sequence[tuple[str, str]], source: str) -> int:
        """Bulk add (address, reason) pairs in one transaction; returns how many were new."""
        entries = []
        for address, reason in items:
            display, key = normalize_address(address)
            if key not in self._active:
                entries.append(Entry(display, True, reason, source, self._tick(), self.node_id))
        applied = self._local(entries)
        self.metrics.added += len(applied)
        return len(applied)

    async def remove(self, address: str, source: str = "api") -> Entry | None:
        """Lift a suppression; None when the address was never on the list."""
        display, _ = normalize_address(address)
        existing = self.get(display)
        if existing is None:
            return None
        if not existing.suppressed:
            return existing
        entry = Entry(existing.address, False, Reason.REMOVED, source, self._tick(), self.node_id)
        self._local([entry])
        self.metrics.removed += 1
        return entry

    async def merge(self, entries: Iterable[Entry]) -> list[Entry]:
        """Apply entries from a peer; returns those that changed this copy."""
        horizon = self._horizon()
        batch, future = [], 0
        for entry in entries:
            if entry.ts > horizon:  # refused, not clamped: see MAX_SKEW_US
                future += 1
                continue
            batch.append(entry)
            self._hlc = max(self._hlc, entry.ts)
        if future:
            self.metrics.merge_rejected += future
            log.warning("suppression entries from the future refused",
                        extra={"entries": future, "max_skew_s": MAX_SKEW_US // 1_000_000})
        applied = self._write(batch)
        self.metrics.merged += len(applied)
        return applied

    # ------------------------------------------------------------ peer cursors

    def peer_cursor(self, peer: str) -> tuple[str, int] | None:
        row = self._db.execute(
            "SELECT epoch, cursor FROM peer_cursors WHERE peer=?", (peer,)
        ).fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def set_peer_cursor(self, peer: str, epoch: str, cursor: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO peer_cursors (peer, epoch, cursor) VALUES (?, ?, ?)",
            (peer, epoch, cursor),
        )


def _entry(row: Sequence[Any]) -> Entry:
    address, suppressed, reason, source, ts, origin = row
    return Entry(str(address), bool(suppressed), str(reason), str(source), int(ts), str(origin))


# --------------------------------------------------------------------------- HTTP API

Authorizer = Callable[[web.Request], bool]


def bearer_authorizer(token: str) -> Authorizer:
    """Accept requests carrying `Authorization: Bearer <token>` (constant-time compare)."""
    expected = f"Bearer {token}".encode()

    def check(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, expected)

    return check


def _error(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, "message": message, **extra}, status=status)


def suppression_routes(
    lst: SuppressionList,
    auth: Authorizer,
    *,
    max_import_entries: int = MAX_IMPORT_ENTRIES,
    max_import_bytes: int = MAX_IMPORT_BYTES,
    admin_auth: Authorizer | None = None,
) -> web.RouteTableDef:
    """`/v1/suppressions` for admins and peers, all behind `auth`; `_resynced` (it releases
    held bulk mail on a person's word) behind `admin_auth` when given, never a peer's token.

    GET    /v1/suppressions                 active entries (offset, limit)
    GET    /v1/suppressions?since=<cursor>  changes feed for peers (removals included)
    GET    /v1/suppressions/{address}       one entry, 404 if never listed
    PUT    /v1/suppressions/{address}       add {"reason", "source"?}; 201 new, 200 existing
    DELETE /v1/suppressions/{address}       remove; 404 if never listed
    POST   /v1/suppressions                 bulk import {"entries": [{"address", "reason"?}]};
                                            all or nothing: 400 on any bad entry, 413 too big
    POST   /v1/suppressions/_replicate      peers push {"entries": [entry...]}
    POST   /v1/suppressions/_resynced       the list is restored after a loss: release held
                                            bulk mail (also done by a full pull from a peer)
    """
    routes = web.RouteTableDef()

    def guard(request: web.Request) -> web.Response | None:
        if not auth(request):
            lst.metrics.unauthorized += 1
            return _error(401, "unauthorized", "missing or wrong credentials")
        return None

    def bad(reason: str, message: str, **extra: Any) -> web.Response:
        lst.metrics.invalid_requests += 1
        return _error(400, reason, message, **extra)

    def int_param(request: web.Request, name: str, default: int) -> int:
        value = int(request.query.get(name, default))
        if not 0 <= value <= MAX_QUERY_INT:
            raise ValueError(f"{name} must be 0-{MAX_QUERY_INT}")
        return value

    @routes.get("/v1/suppressions")
    async def listing(request: web.Request) -> web.Response:
        if (denied := guard(request)) is not None:
            return denied
        try:
            limit = min(int_param(request, "limit", PAGE_LIMIT), PAGE_LIMIT)
            if "since" in request.query:
                since = int_param(request, "since", 0)
                changes, cursor = lst.entries(since, limit)
                return web.json_response({
                    "node": lst.node_id, "epoch": lst.epoch, "cursor": cursor,
                    "more": len(changes) == limit, "entries": [e.to_json() for e in changes],
                })
            offset = int_param(request, "offset", 0)
        except ValueError as exc:
            return bad("bad_query", str(exc))
        page = lst.active(offset=offset, limit=limit)
        return web.json_response(
            {"count": len(lst), "entries": [entry.to_json() for entry in page]}
        )

    @routes.get("/v1/suppressions/{address}")
    async def show(request: web.Request) -> web.Response:
        if (denied := guard(request)) is not None:
            return denied
        try:
            entry = lst.get(request.match_info["address"])
        except InvalidAddress as exc:
            return bad("invalid_address", str(exc))
        if entry is None:
            return _error(404, "not_found", "address was never on the list")
        return web.json_response(entry.to_json())

    @routes.put("/v1/suppressions/{address}")
    async def put(request: web.Request) -> web.Response:
        if (denied := guard(request)) is not None:
            return denied
        body: Any = {}
        if request.can_read_body:
            try:
                body = bodies.loads(await bodies.read_body(request, MAX_ENTRY_BYTES))
            except bodies.TooLarge as exc:
                return _error(413, "too_large", str(exc), maxBytes=MAX_ENTRY_BYTES)
            except ValueError as exc:
                return bad("bad_json", f"body is not JSON: {exc}")
        if not isinstance(body, dict):
            return bad("bad_body", "body must be an object")
        reason = body.get("reason", Reason.MANUAL)
        source = body.get("source", "api")
        if not isinstance(reason, str) or not isinstance(source, str) or not reason or not source:
            return bad("bad_body", "reason and source must be non-empty strings")
        try:
            address = request.match_info["address"]
            new = not lst.is_suppressed(address)
            entry = await lst.add(address, reason[:200], source[:200])
        except InvalidAddress as exc:
            return bad("invalid_address", str(exc))
        return web.json_response(entry.to_json(), status=201 if new else 200)

    @routes.delete("/v1/suppressions/{address}")
    async def delete(request: web.Request) -> web.Response:
        if (denied := guard(request)) is not None:
            return denied
        try:
            entry = await lst.remove(request.match_info["address"], source="api")
        except InvalidAddress as exc:
            return bad("invalid_address", str(exc))
        if entry is None:
            return _error(404, "not_found", "address was never on the list")
        return web.json_response(entry.to_json())

    async def read_limited(request: web.Request) -> Any:
        return bodies.loads(await bodies.read_body(request, max_import_bytes))

    @routes.post("/v1/suppressions")
    async def bulk_import(request: web.Request) -> web.Response:
        if (denied := guard(request)) is not None:
            return denied
        try:
            body = await read_limited(request)
        except bodies.TooLarge as exc:
            lst.metrics.import_rejected += 1
            return _error(413, "import_too_large", str(exc), maxBytes=max_import_bytes)
        except ValueError as exc:
            lst.metrics.import_rejected += 1
            return bad("bad_json", str(exc))
        items = body.get("entries") if isinstance(body, dict) else None
        if not isinstance(items, list):
            lst.metrics.import_rejected += 1
            return bad("bad_body", 'body must be {"entries": [...]}')
        if len(items) > max_import_entries:
            lst.metrics.import_rejected += 1
            return _error(
                413, "import_too_large",
                f"{len(items)} entries, limit {max_import_entries} per request",
                maxEntries=max_import_entries,
            )
        pairs: list[tuple[str, str]] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            address = item.get("address") if isinstance(item, dict) else item
            reason = item.get("reason", Reason.IMPORT) if isinstance(item, dict) else Reason.IMPORT
            try:
                if not isinstance(reason, str) or not reason:
                    raise InvalidAddress("reason must be a non-empty string")
                if not isinstance(address, str):
                    raise InvalidAddress("address must be a string")
                display, _ = normalize_address(address)
                pairs.append((display, reason[:200]))
            except InvalidAddress as exc:
                errors.append({"index": index, "error": str(exc)})
        if errors:
            lst.metrics.import_rejected += 1
            return bad("invalid_entries", f"{len(errors)} invalid entries, nothing imported",
                       errors=errors[:50])
        added = await lst.add_many(pairs, source="import")
        return web.json_response({"received": len(pairs), "added": added})

    @routes.post("/v1/suppressions/_resynced")
    async def resynced(request: web.Request) -> web.Response:
        """An admin confirms the list is restored (imported) after a loss with no peer to
        pull it from: held bulk mail goes out."""
        if (denied := guard(request)) is not None:
            return denied
        if admin_auth is not None and not admin_auth(request):
            lst.metrics.unauthorized += 1
            return _error(403, "forbidden", "only the admin token confirms a resync")
        lst.resynced("admin")
        return web.json_response({"resyncPending": lst.resync_pending})

    @routes.post("/v1/suppressions/_replicate")
    async def replicate(request: web.Request) -> web.Response:
        if (denied := guard(request)) is not None:
            return denied
        try:
            body = await read_limited(request)
            items = body["entries"] if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ValueError("entries must be a list")
            entries = [Entry.from_json(item) for item in items]
        except bodies.TooLarge as exc:
            lst.metrics.merge_rejected += 1
            return _error(413, "replication_too_large", str(exc), maxBytes=max_import_bytes)
        except (ValueError, KeyError, InvalidAddress) as exc:
            lst.metrics.merge_rejected += 1
            return bad("bad_replication", str(exc))
        applied = await lst.merge(entries)
        return web.json_response({"node": lst.node_id, "applied": len(applied)})

    return routes


# ------------------------------------------------------------------------ replication

PeersProvider = Callable[[], Awaitable[Sequence[str]]]
"""Returns the base URLs (`http://10.1.2.3:8080`) of the pool's pods, possibly including self."""


def static_peers(urls: Sequence[str]) -> PeersProvider:
    """A fixed peer list (tests, the sandbox without DNS)."""

    async def peers() -> Sequence[str]:
        return list(urls)

    return peers


class PeerDiscoveryError(RuntimeError):
    """The pool's pods could not be looked up (DNS failure, no such name)."""


def dns_peers(
    service: str,
    port: int,
    *,
    scheme: str = "http",
    resolver: dns.asyncresolver.Resolver | None = None,
) -> PeersProvider:
    """Peers from the headless Service's A records (one per pod, ready or not). The name is
    looked up with the resolver's search list (in a pod: `<ns>.svc.cluster.local`...), so
    `<svc>.<ns>.svc` resolves as it does for any program in the cluster; configured
    nameservers have no search list and get the name as written. Raises
    `PeerDiscoveryError`; callers count and log it (`Replicator`, the hand-off)."""

    async def peers() -> Sequence[str]:
        try:
            if resolver is not None:
                answer = await resolver.resolve(service, "A", search=True)
            else:
                answer = await dns.asyncresolver.resolve(service, "A", search=True)
        except dns.exception.DNSException as exc:
            raise PeerDiscoveryError(f"{service}: {type(exc).__name__}: {exc}") from exc
        return [f"{scheme}://{record.to_text()}:{port}" for record in answer]

    return peers


@dataclasses.dataclass
class ReplicationMetrics:
    pushes: int = 0
    push_failures: int = 0
    pulls: int = 0
    pull_failures: int = 0
    pulled_entries: int = 0
    peers: int = 0
    """Other pods found at the last discovery."""
    discovery_failures: dict[str, int] = dataclasses.field(default_factory=dict)
    """reason (error: the lookup failed; empty: it found no pod, not even this one) -> n."""
    last_discovery_error: str | None = None


class Replicator:
    """Pushes local changes to peers at once and pulls missed changes periodically."""

    def __init__(
        self,
        lst: SuppressionList,
        peers: PeersProvider,
        *,
        token: str | Callable[[], str | None],
        self_url: str | None = None,
        pull_interval: float = 5.0,
        push_attempts: int = 3,
        retry_delay: float = 0.2,
        timeout: float = 2.0,
    ) -> None:
        self.metrics = ReplicationMetrics()
        self._lst = lst
        self._peers = peers
        # A callable: the pod's peer token file is re-read when it changes (rotation).
        self._token = token if callable(token) else (lambda: token)
        self._skip: set[str] = {self_url.rstrip("/")} if self_url else set()
        self._pull_interval = pull_interval
        self._last_discovery_warning = -math.inf
        self._push_attempts = push_attempts
        self._retry_delay = retry_delay
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._pending: list[Entry] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        lst.add_listener(self._queue)

    def _auth(self) -> dict[str, str]:
        token = self._token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _queue(self, entries: Sequence[Entry]) -> None:
        self._pending.extend(entries)
        self._wake.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._tasks = [
            asyncio.create_task(self._push_loop(), name="suppression-push"),
            asyncio.create_task(self._pull_loop(), name="suppression-pull"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _targets(self) -> list[str]:
        """The peers to push to or pull from now. Discovery runs on every push and every
        pull, so a pod whose discovery fails (or finds nobody) retries each pull interval
        and catches up by pulling once peers appear. A failure is counted each time and
        logged as a warning at most once per pull interval; a pool of one pod (only this pod
        found) is not a failure."""
        try:
            urls = [url.rstrip("/") for url in await self._peers()]
        except Exception as exc:  # a broken provider must not stop replication for good
            self._discovery_failed("error", str(exc) or repr(exc))
            return []
        if not urls:
            self._discovery_failed("empty", "peer discovery found no pod")
            return []
        targets = [url for url in urls if url not in self._skip]
        if self.metrics.last_discovery_error is not None or self.metrics.peers != len(targets):
            log.info("peers discovered", extra={"peers": len(targets)})
        self.metrics.peers = len(targets)
        self.metrics.last_discovery_error = None
        return targets

    def _discovery_failed(self, reason: str, error: str) -> None:
        m = self.metrics
        m.discovery_failures[reason] = m.discovery_failures.get(reason, 0) + 1
        m.last_discovery_error = error
        m.peers = 0
        now = time.monotonic()
        if now - self._last_discovery_warning >= self._pull_interval:
            self._last_discovery_warning = now
            log.warning("peer discovery failed: suppression changes reach no other pod",
                        extra={"reason": reason, "error": error})

    async def _push_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self.push(batch)

    async def push(self, batch: Sequence[Entry]) -> None:
        """Send entries to every peer; a peer that stays unreachable catches up by pulling."""
        body = {"entries": [entry.to_json() for entry in batch]}
        await asyncio.gather(*(self._push_one(url, body) for url in await self._targets()))

    async def _push_one(self, url: str, body: dict[str, Any]) -> None:
        assert self._session is not None
        for attempt in range(self._push_attempts):
            try:
                async with self._session.post(f"{url}/v1/suppressions/_replicate",
                                              json=body, headers=self._auth()) as response:
                    if response.status == 200:
                        reply = await response.json()
                        if reply.get("node") == self._lst.node_id:
                            self._skip.add(url)  # our own address in the peer list
                        else:
                            self.metrics.pushes += 1
                        return
                    if response.status < 500:
                        break  # auth or payload problem: retrying will not help
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            if attempt + 1 < self._push_attempts:
                await asyncio.sleep(self._retry_delay * (attempt + 1))
        self.metrics.push_failures += 1
        log.warning("suppression push failed", extra={"peer": url})

    async def _pull_loop(self) -> None:
        while True:
            await self.pull_once()
            await asyncio.sleep(self._pull_interval)

    async def pull_once(self) -> int:
        """Pull every peer's changes since our cursor for it; returns entries applied."""
        results = await asyncio.gather(*(self._pull_one(url) for url in await self._targets()))
        return sum(results)

    async def _pull_one(self, url: str) -> int:
        assert self._session is not None
        known = self._lst.peer_cursor(url)
        epoch, cursor = known if known is not None else ("", 0)
        applied = 0
        try:
            while True:
                async with self._session.get(
                    f"{url}/v1/suppressions", params={"since": str(cursor)},
                    headers=self._auth(),
                ) as response:
                    if response.status != 200:
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status
                        )
                    page = bodies.loads(await response.read())
                if page["node"] == self._lst.node_id:
                    self._skip.add(url)
                    return 0
                if page["epoch"] != epoch and cursor != 0:
                    # A different history lives at this URL now: read it from the start.
                    epoch, cursor = page["epoch"], 0
                    continue
                epoch = page["epoch"]
                entries = [Entry.from_json(item) for item in page["entries"]]
                applied += len(await self._lst.merge(entries))
                self.metrics.pulled_entries += len(entries)
                cursor = int(page["cursor"])
                self._lst.set_peer_cursor(url, epoch, cursor)
                if not page["more"]:
                    break
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            self.metrics.pull_failures += 1
            log.debug("suppression pull failed", extra={"peer": url, "error": repr(exc)})
            return applied
        self.metrics.pulls += 1
        self._lst.resynced(f"pull:{url}")
        return applied
