"""Object storage: one monotonic resourceVersion counter, a bounded event history for
watches (older versions answer 410 Expired), fan-out to watchers, optional SQLite file.

Stored objects are never mutated after `put`: readers may share them; writers build new dicts.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    key: str  # storage key "group/plural"
    obj: JSON
    old: JSON | None


class Expired(Exception):
    """The requested resourceVersion is older than the kept history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclass(eq=False)
class Watcher:
    key: str
    namespace: str | None
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)


Listener = Callable[[Event], None]


class Store:
    """In-memory objects keyed by storage key, with optional write-through to SQLite."""

    def __init__(self, db_path: Path | str | None = None, history: int = 10_000) -> None:
        self.objects: dict[str, dict[ObjKey, JSON]] = collections.defaultdict(dict)
        self.history: collections.deque[Event] = collections.deque()
        self.history_limit = history
        self.rv = 0
        # Watches from a version below this one cannot be served: events were dropped.
        self.compacted_rv = 0
        self.watchers: set[Watcher] = set()
        self.listeners: builtins.list[Listener] = []
        self.owners: dict[str, set[tuple[str, str, str]]] = collections.defaultdict(set)
        self.by_uid: dict[str, tuple[str, str, str]] = {}
        self._db: sqlite3.Connection | None = None
        if db_path is not None:
            self._open(Path(db_path))

    # ------------------------------------------------------------------ persistence
    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS objects (key TEXT, ns TEXT, name TEXT, "
                   "body TEXT, PRIMARY KEY (key, ns, name))")
        db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        row = db.execute("SELECT v FROM meta WHERE k='rv'").fetchone()
        self.rv = int(row[0]) if row else 0
        self.compacted_rv = self.rv
        for key, ns, name, body in db.execute("SELECT key, ns, name, body FROM objects"):
            obj = json.loads(body)
            self.objects[key][(ns, name)] = obj
            self._index(key, obj, add=True)
        self._db = db

    def _persist(self, key: str, obj: JSON, deleted: bool) -> None:
        if self._db is None:
            return
        meta = obj["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        with self._db:
            if deleted:
                self._db.execute("DELETE FROM objects WHERE key=? AND ns=? AND name=?",
                                 (key, ns, name))
            else:
                self._db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?)",
                                 (key, ns, name, json.dumps(obj, separators=(",", ":"))))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('rv', ?)", (str(self.rv),))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        for w in list(self.watchers):
            w.queue.put_nowait(None)

    # --------------------------------------------------------------------- reading
    def get(self, key: str, namespace: str, name: str) -> JSON | None:
        return self.objects[key].get((namespace, name))

    def list(self, key: str, namespace: str | None = None) -> builtins.list[JSON]:
        items = self.objects[key]
        keys = sorted(k for k in items if namespace is None or k[0] == namespace)
        return [items[k] for k in keys]

    def list_at(self, key: str, namespace: str | None, rv: int) -> builtins.list[JSON]:
        """The objects as they were at version `rv` (what etcd serves for a list at a
        revision): the current ones with later events undone; Expired once compacted."""
        if rv < self.compacted_rv:
            raise Expired(rv, self.compacted_rv + 1)
        items = dict(self.objects[key])
        for event in reversed(self.history):
            if event.rv <= rv:
                break
            if event.key != key:
                continue
            meta = event.obj["metadata"]
            ident = (meta.get("namespace", ""), meta["name"])
            if event.old is None:
                items.pop(ident, None)
            else:
                items[ident] = event.old
        keys = sorted(k for k in items if namespace is None or k[0] == namespace)
        return [items[k] for k in keys]

    def iter_all(self) -> Iterator[tuple[str, JSON]]:
        for key, items in self.objects.items():
            for obj in list(items.values()):
                yield key, obj

    def exists_uid(self, uid: str) -> bool:
        return uid in self.by_uid

    def dependents(self, owner_uid: str) -> builtins.list[tuple[str, JSON]]:
        out = []
        for key, ns, name in sorted(self.owners.get(owner_uid, ())):
            obj = self.get(key, ns, name)
            if obj is not None:
                out.append((key, obj))
        return out

    # --------------------------------------------------------------------- writing
    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _index(self, key: str, obj: JSON, *, add: bool) -> None:
        meta = obj.get("metadata") or {}
        ident = (key, meta.get("namespace", ""), meta.get("name", ""))
        if meta.get("uid"):
            if add:
                self.by_uid[meta["uid"]] = ident
            else:
                self.by_uid.pop(meta["uid"], None)
        for ref in meta.get("ownerReferences") or []:
            uid = ref.get("uid")
            if not uid:
                continue
            if add:
                self.owners[uid].add(ident)
            else:
                self.owners[uid].discard(ident)
                if not self.owners[uid]:
                    del self.owners[uid]

    def put(self, key: str, obj: JSON) -> JSON:
        """Store a new version (a fresh dict the caller no longer touches); assigns its rv."""
        meta = obj["metadata"]
        ident = (meta.get("namespace", ""), meta["name"])
        old = self.objects[key].get(ident)
        rv = self.next_rv()
        meta["resourceVersion"] = str(rv)
        if old is not None:
            self._index(key, old, add=False)
        self.objects[key][ident] = obj
        self._index(key, obj, add=True)
        self._persist(key, obj, deleted=False)
        self._emit(Event(rv, "MODIFIED" if old is not None else "ADDED", key, obj, old))
        return obj

    def remove(self, key: str, obj: JSON) -> JSON:
        """Delete for good; the DELETED event carries the final state at a new rv."""
        meta = obj["metadata"]
        ident = (meta.get("namespace", ""), meta["name"])
        old = self.objects[key].pop(ident, None)
        if old is not None:
            self._index(key, old, add=False)
        rv = self.next_rv()
        final = dict(obj)
        final["metadata"] = dict(meta, resourceVersion=str(rv))
        self._persist(key, final, deleted=True)
        self._emit(Event(rv, "DELETED", key, final, old))
        return final

    def _emit(self, event: Event) -> None:
        self.history.append(event)
        while len(self.history) > self.history_limit:
            dropped = self.history.popleft()
            self.compacted_rv = dropped.rv
        ns = event.obj["metadata"].get("namespace", "")
        for w in self.watchers:
            if w.key == event.key and (w.namespace is None or w.namespace == ns):
                w.queue.put_nowait(event)
        for listener in list(self.listeners):
            listener(event)

    # --------------------------------------------------------------------- watching
    def watch(self, key: str, namespace: str | None, since: int | None) -> Watcher:
        """Register a watcher; with `since`, replay history after it first (atomically,
        no await between replay and registration, so nothing is lost or doubled)."""
        watcher = Watcher(key, namespace)
        if since is not None:
            if since < self.compacted_rv:
                raise Expired(since, self.compacted_rv + 1)
            if since > self.rv:
                # A version from the future: the real server waits for it; we start now.
                since = self.rv
            for event in self.history:
                if event.rv <= since or event.key != key:
                    continue
                if namespace is not None and event.obj["metadata"].get("namespace") != namespace:
                    continue
                watcher.queue.put_nowait(event)
        self.watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
