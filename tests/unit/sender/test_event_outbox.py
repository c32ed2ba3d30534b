"""The event outbox in the spool: events commit with the change that causes them (never one
without the other, also across failed commits), an existing spool file is migrated in place,
message ids are never reused, webhook cursors see only their types and pruning keeps what a
cursor has not passed, tags follow the message (events, hand-off) and expire after it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from mailfleet_sender import (
    bounces,
    clock,
    config,
    event_builders,
    event_publishing,
    events,
    feedback,
    metrics,
    outbox,
    spool,
)
from sandbox_fixtures.waiting import eventually as _until

BUILDER = event_builders.Builder(pool="p")
NOW = 1_780_000_000.0

OLD_SCHEMA = """
CREATE TABLE messages (id INTEGER PRIMARY KEY, created REAL NOT NULL, sender TEXT NOT NULL,
    from_domain TEXT NOT NULL, message_id TEXT NOT NULL, data BLOB NOT NULL,
    remaining INTEGER NOT NULL);
CREATE TABLE deliveries (id INTEGER PRIMARY KEY, message INTEGER NOT NULL REFERENCES messages(id),
    recipient TEXT NOT NULL, domain TEXT NOT NULL, class TEXT NOT NULL, tier TEXT,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL,
    created REAL NOT NULL, last_response TEXT);
CREATE INDEX deliveries_due ON deliveries (class, next_attempt);
CREATE TABLE soft_bounces (address TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE handoffs (key TEXT PRIMARY KEY, message INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE counters (day INTEGER NOT NULL, address TEXT NOT NULL, kind TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (day, address, kind));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
"""The spool as the version before events wrote it."""


class Collected:
    """Stands in for the publisher: what the writer handed over after each commit."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, published: list[outbox.Published]) -> None:
        for body, line in published:
            assert json.loads(line) == body
            self.bodies.append(body)

    def types(self) -> list[str]:
        return [b["type"] for b in self.bodies]


def _message(recipients: tuple[str, ...], *, tags: dict[str, str] | None = None,
             accepted: bool = True) -> spool.NewMessage:
    return spool.NewMessage(
        sender="s@x.test", recipients=recipients, data=b"m", from_domain="x.test",
        message_id="<m>", class_name="c", tier=None, created=NOW, tags=tags or {},
        accepted=BUILDER.accepted(class_name="c", now=NOW) if accepted else None,
    )


def _open(path: Path, *, outbox_enabled: bool = True) -> tuple[spool.Spool, Collected]:
    store = spool.Spool.open(path)
    collected = Collected()
    store.on_events = collected
    store.outbox_enabled = outbox_enabled
    store.start()
    return store, collected


def _rows(path: Path) -> list[tuple[int, str, dict[str, Any]]]:
    with sqlite3.connect(path / spool.SPOOL_FILE) as db:
        return [(int(s), str(t), json.loads(b)) for s, t, b in
                db.execute("SELECT seq, type, body FROM event_outbox ORDER BY seq")]


def _delivered(d: spool.Delivery) -> spool.Update:
    event = BUILDER.outcome(d, event_builders.hooks.Verdict.DELIVERED,
                            event_builders.hooks.Reply(250, "ok"), None, source="192.0.2.1",
                            provider="other", now=NOW + 1)
    return spool.Update(d.id, d.message, "delivered", d.attempts, 0.0, "250 ok", event)


async def test_accepted_events_are_written_with_the_message_and_carry_its_tags(
    tmp_path: Path,
) -> None:
    store, collected = _open(tmp_path)
    rows = await store.submit(_message(("a@y.test", "b@y.test"), tags={"campaign": "s"}))
    assert isinstance(rows, list)
    await store.flush()
    assert collected.types() == ["accepted", "accepted"]
    assert [b["recipient"] for b in collected.bodies] == ["a@y.test", "b@y.test"]
    assert {b["message_id"] for b in collected.bodies} == {str(rows[0].message)}
    assert all(b["tags"] == {"campaign": "s"} for b in collected.bodies)
    assert len({b["id"] for b in collected.bodies}) == 2
    store.update([_delivered(rows[0])])
    await store.flush()
    store.close()
    assert collected.bodies[-1]["type"] == "delivered"
    assert collected.bodies[-1]["tags"] == {"campaign": "s"}  # filled in by the writer
    assert [t for _, t, _ in _rows(tmp_path)] == ["accepted", "accepted", "delivered"]


async def test_a_hand_off_writes_no_accepted_event_and_no_outbox_without_webhooks(
    tmp_path: Path,
) -> None:
    store, collected = _open(tmp_path, outbox_enabled=False)
    await store.submit(_message(("a@y.test",), accepted=False))
    await store.submit(_message(("b@y.test",)))
    await store.flush()
    store.close()
    assert collected.types() == ["accepted"]  # stdout and listeners still get it
    assert _rows(tmp_path) == []


class FlakyVolume(spool.Spool):
    """Writer handles opened read-only while `read_only` is set (every write fails)."""

    read_only = False

    def _connect(self) -> sqlite3.Connection:
        db = super()._connect()
        if self.read_only:
            db.execute("PRAGMA query_only = ON")
        return db


async def test_an_event_commits_with_its_update_or_not_at_all(tmp_path: Path) -> None:
    store, _ = _open(tmp_path)
    (row,) = await store.submit(_message(("a@y.test",)))  # type: ignore[misc]
    store.close()
    flaky = FlakyVolume(tmp_path / spool.SPOOL_FILE)
    collected = Collected()
    flaky.on_events, flaky.outbox_enabled = collected, True
    flaky.read_only = True
    flaky.start()
    flaky.update([_delivered(row)])
    flaky.record_event(BUILDER.complained(message_id="1", recipient="a@y.test",
                                          class_name="c", ip=None, now=NOW + 2))
    await _until(lambda: flaky.commit_failures > 0 and flaky.unrecorded == 2, "a failed commit")
    assert collected.bodies == []  # nothing published that is not on disk
    assert [t for _, t, _ in _rows(tmp_path)] == ["accepted"]
    flaky.read_only = False
    await _until(lambda: flaky.unrecorded == 0, "the retry")
    await flaky.flush()
    flaky.close()
    assert collected.types() == ["delivered", "complained"]
    assert [t for _, t, _ in _rows(tmp_path)] == ["accepted", "delivered", "complained"]
    assert spool.Spool.open(tmp_path).load_pending() == []  # and the row is final with it


async def test_an_existing_spool_is_migrated_in_place(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / spool.SPOOL_FILE) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO messages VALUES (5, ?, 's@x.test', 'x.test', '<old>', x'6d', 1)",
                   (NOW,))
        db.execute("INSERT INTO deliveries (id, message, recipient, domain, class, state,"
                   " next_attempt, created) VALUES (9, 5, 'old@y.test', 'y.test', 'c', 'queued',"
                   " ?, ?)", (NOW, NOW))
    store, collected = _open(tmp_path)
    (old,) = store.load_pending()
    assert (old.id, old.message, old.recipient) == (9, 5, "old@y.test")
    (new,) = await store.submit(_message(("new@y.test",), tags={"campaign": "s"}))  # type: ignore[misc]
    assert new.message == 6
    store.update([_delivered(old)])  # a message from before: its event has no tags
    await store.flush()
    store.close()
    assert collected.bodies[-1]["message_id"] == "5" and collected.bodies[-1]["tags"] == {}
    with sqlite3.connect(tmp_path / spool.SPOOL_FILE) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
    reopened, _ = _open(tmp_path)  # a second open changes nothing
    assert [d.recipient for d in reopened.load_pending()] == ["new@y.test"]
    reopened.close()


async def test_message_ids_are_never_reused(tmp_path: Path) -> None:
    """SQLite hands out the largest rowid + 1: once the newest message left, its id came back
    and an event, a tracking link or a complaint naming it would mean two messages."""
    store, _ = _open(tmp_path)
    (first,) = await store.submit(_message(("a@y.test",)))  # type: ignore[misc]
    (second,) = await store.submit(_message(("b@y.test",)))  # type: ignore[misc]
    store.update([_delivered(second)])
    await store.flush()
    store.close()
    store, _ = _open(tmp_path)  # across a restart too
    (third,) = await store.submit(_message(("c@y.test",)))  # type: ignore[misc]
    store.close()
    assert (first.message, second.message, third.message) == (1, 2, 3)


async def _outbox_with(tmp_path: Path, kinds: list[str]) -> spool.Spool:
    store, _ = _open(tmp_path)
    await store.in_writer(lambda db: outbox.sync_cursors(db, ["all", "bounces"]))
    for i, kind in enumerate(kinds):
        store.record_event(events.Event(type=events.EventType(kind), message_id=str(i),
                                        recipient="a@y.test", pool="p", time=NOW + i))
    await store.flush()
    return store


async def test_a_cursor_reads_its_types_in_order_and_pruning_waits_for_every_cursor(
    tmp_path: Path,
) -> None:
    store = await _outbox_with(tmp_path, ["accepted", "complained", "accepted", "complained"])
    reader = store.reader()
    everything = outbox.read_batch(reader, cursor=0, types=[], limit=3)
    assert [r.seq for r in everything.rows] == [1, 2, 3] and everything.scanned == 3
    mine = outbox.read_batch(reader, cursor=0, types=["complained"], limit=10)
    assert [json.loads(r.body)["message_id"] for r in mine.rows] == ["1", "3"]
    assert mine.scanned == 4  # the rest up to here is not its business
    assert outbox.count_after(reader, cursor=1, types=["accepted"]) == 1

    await store.in_writer(lambda db: outbox.advance(db, "all", 4))
    assert len(_rows(tmp_path)) == 4  # "bounces" has not passed them
    await store.in_writer(lambda db: outbox.advance(db, "bounces", 2))
    assert [s for s, _, _ in _rows(tmp_path)] == [3, 4]
    await store.in_writer(lambda db: outbox.advance(db, "bounces", 1))  # never backwards
    assert outbox.load_cursors(reader) == {"all": 4, "bounces": 2}
    await store.in_writer(lambda db: outbox.sync_cursors(db, ["all"]))  # a webhook removed
    assert _rows(tmp_path) == []
    reader.close()
    store.close()


async def test_a_new_webhook_starts_at_the_end_and_sequence_numbers_never_go_back(
    tmp_path: Path,
) -> None:
    store = await _outbox_with(tmp_path, ["accepted", "accepted"])
    await store.in_writer(lambda db: outbox.sync_cursors(db, []))  # nobody reads: all pruned
    await store.in_writer(lambda db: outbox.sync_cursors(db, ["late"]))
    store.record_event(events.Event(type=events.EventType.DELIVERED, message_id="9",
                                    recipient="a@y.test", pool="p", time=NOW))
    await store.flush()
    reader = store.reader()
    batch = outbox.read_batch(reader, cursor=outbox.load_cursors(reader)["late"], types=[],
                              limit=10)
    assert [r.seq for r in batch.rows] == [3]
    reader.close()
    store.close()


async def test_tags_live_with_the_message_then_expire(tmp_path: Path) -> None:
    store, collected = _open(tmp_path)
    (gone,) = await store.submit(_message(("a@y.test",), tags={"campaign": "a"}))  # type: ignore[misc]
    (queued,) = await store.submit(_message(("b@y.test",), tags={"campaign": "b"}))  # type: ignore[misc]
    store.update([_delivered(gone)])
    complaint = BUILDER.complained(message_id=str(gone.message), recipient="a@y.test",
                                   class_name=None, ip=None, now=NOW + 5)
    store.record_event(complaint, tags_from=gone.message)  # after the message left
    store.record_event(complaint)  # a message of another pod: no lookup
    await store.flush()
    assert [b["tags"] for b in collected.bodies[-2:]] == [{"campaign": "a"}, {}]
    removed = await store.in_writer(lambda db: outbox.prune_tags(db, NOW + 1))
    assert removed == 1  # the queued message keeps its tags, however old
    reader = store.reader()
    assert outbox.tags_of(reader, gone.message) == {}
    assert outbox.tags_of(reader, queued.message) == {"campaign": "b"}
    reader.close()
    await store.mark_handoff()
    (item,) = store.load_handoff()
    assert item.tags == {"campaign": "b"}  # handed to the next pod with the message
    store.close()


def _publisher(tmp_path: Path, **events_cfg: Any) -> tuple[event_publishing.Publisher,
                                                           spool.Spool]:
    cfg = config.SenderConfig.model_validate(
        {"pool": "p", "namespace": "ns", "spoolDir": str(tmp_path), "events": events_cfg})
    store = spool.Spool.open(tmp_path)
    publisher = event_publishing.Publisher(cfg, spool_=store, metric_set=metrics.Metrics(),
                                           clock_=clock.Clock(), pod_ip="10.0.0.9")
    return publisher, store


async def test_committed_events_go_to_stdout_and_listeners_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    publisher, store = _publisher(tmp_path)
    heard: list[str] = []
    publisher.listeners.append(lambda body: heard.append(body["recipient"]))
    store.start()
    await publisher.start()
    await store.submit(_message(("a@y.test", "b@y.test")))
    publisher.record(publisher.builder.unsubscribed(recipient="c@y.test", class_name="c",
                                                    now=NOW))
    await publisher.flush()
    await _until(lambda: len(heard) == 3, "the listener")
    await publisher.stop()
    store.close()
    publisher.close()  # the stdout thread writes what is queued, then ends
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["recipient"] for e in lines] == heard == ["a@y.test", "b@y.test", "c@y.test"]
    assert all(e["schema"] == events.SCHEMA for e in lines)
    assert not store.outbox_enabled and _rows(tmp_path) == []  # no webhook: no outbox rows


async def test_stdout_can_be_turned_off(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    publisher, store = _publisher(tmp_path, stdout=False)
    store.start()
    await publisher.start()
    await store.submit(_message(("a@y.test",)))
    await publisher.flush()
    await publisher.stop()
    store.close()
    assert capsys.readouterr().out == ""


async def test_a_report_about_this_pods_message_takes_its_tags(tmp_path: Path) -> None:
    publisher, store = _publisher(tmp_path, stdout=False)
    heard: list[dict[str, Any]] = []
    publisher.listeners.append(heard.append)
    store.start()
    await publisher.start()
    (row,) = await store.submit(_message(("a@y.test",), tags={"campaign": "s"}))  # type: ignore[misc]
    mine = f"pod_0.{row.message}"
    publisher.reported(feedback.Event(feedback.Kind.COMPLAINT, "a@y.test", class_name="c",
                                      source_ip="192.0.2.1", message_ref=mine), own_ref="pod_0")
    publisher.reported(feedback.Event(feedback.Kind.BOUNCE, "a@y.test",
                                      bounces.Category.HARD_BOUNCE, "user unknown",
                                      message_ref=f"pod_1.{row.message}", status="5.1.1"),
                       own_ref="pod_0")
    await publisher.flush()
    await _until(lambda: len(heard) == 3, "the events")
    await publisher.stop()
    store.close()
    complaint, bounce = heard[1], heard[2]
    assert (complaint["type"], complaint["tags"], complaint["ip"]) == (
        "complained", {"campaign": "s"}, "192.0.2.1")
    assert bounce["type"] == "bounced" and bounce["tags"] == {}  # another pod's message 1
    assert bounce["bounce"] == {"kind": "hard", "code": "5.1.1", "reason": "user unknown"}
    assert bounce["message_id"] == str(row.message) and bounce["namespace"] == "ns"
