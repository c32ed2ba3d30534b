"""The engine's window on the spool: at most `spoolWindow` pending deliveries in memory, the
rest read from SQLite in pages as the window drains.

Why: a campaign queued while a provider throttles can leave millions of deliveries pending;
holding each as an object costs ~1 KB, and reading them all delays start-up by minutes.

Order: each class is read in (due time, id) order after a per-class cursor (index
`deliveries_due`), due rows only, classes by priority (highest first), so the window takes the
mail the engine would send first anyway. Rows with a later due time are read only when the whole
queue fits (then the engine holds everything, as without paging).

Correctness rests on one invariant: every pending row of a class that is not in memory lies after
that class's cursor. What could break it lowers the cursor instead (`forgot`): a submission left
on disk because the window is full, a deferred delivery dropped from memory until it is due, a
row evicted for a higher class. A page is read after a spool barrier (every outcome queued
before it is committed); rows finished or dropped while the page is read are skipped
(`unsettled`), so a delivered row is never read back and sent twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from mailfleet_sender import spool

Key = tuple[float, int]
"""(due time, delivery id): the order rows are paged in."""
REFILL_FRACTION = 10
"""Refill once a tenth of the window is free (and at every tick while rows wait on disk)."""


def key_of(delivery: spool.Delivery) -> Key:
    return (delivery.next_attempt, delivery.id)


def before(key: Key) -> Key:
    """The largest key below `key` (ids are integers), so a page after it includes `key`."""
    return (key[0], key[1] - 1)


@dataclasses.dataclass
class Page:
    """What one read found: the rows, the cursors after them, and whether the spool is read
    to its end (everything pending is then in memory)."""

    rows: list[spool.Delivery]
    cursors: dict[str, Key]
    exhausted: bool


@dataclasses.dataclass
class Pager:
    """Cursors and bookkeeping of the window; the engine owns the deliveries themselves."""

    window: int
    cursors: dict[str, Key] = dataclasses.field(default_factory=dict)
    on_disk: bool = True
    """Rows may be pending on disk that are not in memory (start: unknown, so True)."""
    reading: bool = False
    unsettled: set[int] = dataclasses.field(default_factory=set)
    floors: dict[str, Key] = dataclasses.field(default_factory=dict)
    classes: set[str] = dataclasses.field(default_factory=set)
    depth: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)
    """class -> (count, oldest created) as last counted in the spool (while paging)."""

    def reset(self) -> None:
        """Forget the window (hand-off, undrain): the next read starts from the beginning."""
        self.cursors.clear()
        self.floors.clear()
        self.unsettled.clear()
        self.depth.clear()
        self.on_disk = True
        self.reading = False

    def room(self, in_memory: int) -> int:
        return max(0, self.window - in_memory)

    def wants_refill(self, in_memory: int, *, tick: bool) -> bool:
        room = self.room(in_memory)
        if not self.on_disk or self.reading or room == 0:
            return False
        return tick or room >= max(1, self.window // REFILL_FRACTION)

    def forgot(self, class_name: str, key: Key) -> None:
        """A pending row of `class_name` at `key` is (or stays) only on disk."""
        self.on_disk = True
        self.classes.add(class_name)
        if class_name in self.cursors:
            self.cursors[class_name] = min(self.cursors[class_name], before(key))
        if self.reading:
            floor = self.floors.get(class_name)
            self.floors[class_name] = before(key) if floor is None else min(floor, before(key))

    def settled(self, delivery: int) -> None:
        """A row left memory (final or dropped) while a page is read: the page may hold its
        stale committed state, so it is skipped there."""
        if self.reading:
            self.unsettled.add(delivery)

    def begin(self) -> dict[str, Key]:
        self.reading = True
        self.unsettled = set()
        self.floors = {}
        return dict(self.cursors)

    def fresh(self, page: Page, live: Iterable[int]) -> list[spool.Delivery]:
        """End a read: move the cursors (never past a row forgotten meanwhile) and return the
        rows to add (those neither in memory nor settled meanwhile)."""
        known = set(live) | self.unsettled
        for name, key in page.cursors.items():
            floor = self.floors.get(name)
            self.cursors[name] = key if floor is None else min(key, floor)
        self.on_disk = not page.exhausted or bool(self.floors)
        self.reading = False
        self.unsettled = set()
        self.floors = {}
        return [row for row in page.rows if row.id not in known]


def read_page(
    store: spool.Spool, cursors: dict[str, Key], classes: Sequence[str], *, now: float,
    room: int,
) -> Page:
    """Blocking (run in a thread): up to `room` due rows after the cursors, classes in the given
    (priority) order; rows due later too when all of them fit (`exhausted`)."""
    rows: list[spool.Delivery] = []
    moved = dict(cursors)
    for name in classes:
        if len(rows) >= room:
            return Page(rows, moved, exhausted=False)
        got = store.load_page(name, moved.get(name), due_by=now, limit=room - len(rows))
        if got:
            rows.extend(got)
            moved[name] = key_of(got[-1])
    if len(rows) >= room:
        return Page(rows, moved, exhausted=False)
    later: list[spool.Delivery] = []
    later_cursors = dict(moved)
    for name in classes:
        limit = room - len(rows) - len(later)
        got = store.load_page(name, later_cursors.get(name), due_by=None, limit=limit + 1)
        if len(got) > limit:  # not everything fits: only due rows stay in the window
            return Page(rows, moved, exhausted=False)
        if got:
            later.extend(got)
            later_cursors[name] = key_of(got[-1])
    return Page(rows + later, later_cursors, exhausted=True)


def count_depth(store: spool.Spool) -> dict[str, tuple[int, float]]:
    """Blocking: the spool's own count per class (the true depth while paging)."""
    return store.pending_classes()
