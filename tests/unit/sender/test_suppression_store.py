"""The suppression list's store on one pod: what it promises the sending path (a suppressed
address stays suppressed, case-insensitively, across restarts), replication (last writer wins
on a total order, the future is refused, cursors page through every change) and a lost list
(held until restored). Over a real SQLite file in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from mailfleet_sender import suppression
from mailfleet_sender.suppression import Entry, SuppressionList

NOW = 1_700_000_000.0
NOW_US = int(NOW * 1_000_000)


class Clock:
    """A settable wall clock (seconds)."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_list(tmp_path: Path, clock: Clock | None = None, name: str = "s.db") -> SuppressionList:
    return SuppressionList(tmp_path / name, node_id="pod-0", clock=clock or Clock())


def entry(address: str, *, suppressed: bool = True, ts: int = NOW_US - 10,
          origin: str = "pod-1", reason: str = "hard_bounce") -> Entry:
    return Entry(address, suppressed, reason, "peer", ts, origin)


async def test_an_added_address_is_suppressed_in_any_case_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    store = open_list(tmp_path)
    added = await store.add("Someone@Example.COM", "complaint", "fbl")
    assert added == Entry("Someone@example.com", True, "complaint", "fbl", NOW_US, "pod-0")
    assert store.is_suppressed("someone@EXAMPLE.com")
    assert not store.is_suppressed("other@example.com")
    assert not store.is_suppressed("not an address")
    assert len(store) == 1 and store.metrics.added == 1
    store.close()
    again = open_list(tmp_path)
    assert again.is_suppressed("SOMEONE@example.com") and len(again) == 1
    assert again.get("someone@example.com") == added
    assert again.cursor == 1


async def test_adding_a_suppressed_address_again_keeps_the_first_entry(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    first = await store.add("a@example.com", "hard_bounce", "delivery")
    seen: list[list[Entry]] = []
    store.add_listener(lambda batch: seen.append(list(batch)))
    assert await store.add("A@example.com", "complaint", "fbl") == first
    assert (store.cursor, store.metrics.added, seen) == (1, 1, [])


async def test_local_changes_reach_the_listeners_and_merges_do_not(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    seen: list[list[Entry]] = []
    store.add_listener(lambda batch: seen.append(list(batch)))
    added = await store.add("a@example.com", "hard_bounce", "delivery")
    await store.merge([entry("b@example.com")])
    assert seen == [[added]]


async def test_a_still_clock_still_gives_every_change_a_later_timestamp(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    first = await store.add("a@example.com", "hard_bounce", "delivery")
    second = await store.add("b@example.com", "hard_bounce", "delivery")
    removed = await store.remove("a@example.com")
    assert removed is not None
    assert first.ts < second.ts < removed.ts


async def test_a_bulk_add_counts_only_the_new_addresses(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    await store.add("a@example.com", "manual", "api")
    new = await store.add_many(
        [("a@example.com", "import"), ("b@example.com", "import"), ("C@Example.com", "import")],
        "import",
    )
    assert new == 2 and store.metrics.added == 3 and len(store) == 3
    imported = store.get("c@example.com")
    assert imported is not None
    assert (imported.address, imported.reason, imported.source) == ("C@example.com", "import",
                                                                      "import")
    with pytest.raises(suppression.InvalidAddress):
        await store.add_many([("d@example.com", "import"), ("nobody", "import")], "import")
    assert not store.is_suppressed("d@example.com")


async def test_a_removal_lifts_the_suppression_and_is_remembered(tmp_path: Path) -> None:
    clock = Clock()
    store = open_list(tmp_path, clock)
    assert await store.remove("never@example.com") is None
    await store.add("a@example.com", "hard_bounce", "delivery")
    clock.now += 60
    removed = await store.remove("A@example.com", source="admin")
    assert removed == Entry("a@example.com", False, "removed", "admin", NOW_US + 60_000_000,
                            "pod-0")
    assert not store.is_suppressed("a@example.com") and len(store) == 0
    assert store.last_removed_at("a@example.com") == NOW + 60
    assert store.metrics.removed == 1
    assert await store.remove("a@example.com") == removed  # already lifted: unchanged
    assert store.metrics.removed == 1
    assert store.last_removed_at("never@example.com") is None
    await store.add("b@example.com", "hard_bounce", "delivery")
    assert store.last_removed_at("b@example.com") is None


async def test_a_peer_version_wins_only_when_it_is_later(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    await store.add("a@example.com", "hard_bounce", "delivery")  # ts NOW_US
    older = entry("a@example.com", suppressed=False, ts=NOW_US - 1)
    newer = entry("a@example.com", suppressed=False, ts=NOW_US + 1)
    assert await store.merge([older]) == []
    assert store.is_suppressed("a@example.com")
    assert await store.merge([newer]) == [newer]
    assert not store.is_suppressed("a@example.com")
    assert store.metrics.merged == 1
    assert await store.merge([newer]) == []  # the same version again changes nothing
    # A later local write is stamped after what the peer wrote, even with a clock behind.
    again = await store.add("a@example.com", "complaint", "fbl")
    assert again.ts > newer.ts


async def test_versions_with_the_same_timestamp_are_ordered_by_origin(tmp_path: Path) -> None:
    first, second = open_list(tmp_path, name="1.db"), open_list(tmp_path, name="2.db")
    low = entry("a@example.com", suppressed=True, ts=NOW_US, origin="pod-1")
    high = entry("a@example.com", suppressed=False, ts=NOW_US, origin="pod-2")
    await first.merge([low, high])
    await second.merge([high, low])
    assert first.get("a@example.com") == second.get("a@example.com") == high


async def test_entries_from_beyond_the_allowed_skew_are_refused(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    limit = NOW_US + suppression.MAX_SKEW_US
    at_limit = entry("a@example.com", ts=limit)
    beyond = entry("b@example.com", ts=limit + 1)
    assert await store.merge([at_limit, beyond]) == [at_limit]
    assert store.metrics.merge_rejected == 1
    assert not store.is_suppressed("b@example.com")


async def test_entries_page_through_every_change_including_removals(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    for name in ("c", "a", "b"):
        await store.add(f"{name}@example.com", "hard_bounce", "delivery")
    await store.remove("c@example.com")
    # The removal moved "c" to the end: a change is listed once, at its latest sequence.
    page, cursor = store.entries(since=0, limit=2)
    assert [e.address for e in page] == ["a@example.com", "b@example.com"] and cursor == 3
    page, cursor = store.entries(since=cursor, limit=2)
    assert [(e.address, e.suppressed) for e in page] == [("c@example.com", False)]
    assert cursor == 4
    assert store.entries(since=cursor) == ([], 4)
    assert store.entries(since=9) == ([], 9)
    assert store.entries(since=-5, limit=1)[1] == 2
    assert store.entries(since=-5, limit=0) == ([], 0)


async def test_the_active_listing_is_sorted_and_pages_by_offset(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    for name in ("d", "b", "a", "c"):
        await store.add(f"{name}@example.com", "hard_bounce", "delivery")
    await store.remove("c@example.com")
    assert [e.address for e in store.active()] == ["a@example.com", "b@example.com",
                                                   "d@example.com"]
    assert [e.address for e in store.active(offset=1, limit=1)] == ["b@example.com"]


def test_a_lost_list_holds_mail_until_restored_even_across_a_restart(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    restored: list[str] = []
    store.resync_listeners.append(lambda: restored.append("now"))
    store.resynced("peer")  # nothing pending: no news
    assert restored == [] and not store.resync_pending
    store.require_resync()
    store.close()
    store = open_list(tmp_path)
    assert store.resync_pending
    store.resync_listeners.append(lambda: restored.append("now"))
    store.resynced("peer")
    assert restored == ["now"] and not store.resync_pending
    store.close()
    assert not open_list(tmp_path).resync_pending


def test_a_file_keeps_its_epoch_and_a_new_file_starts_a_new_one(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    epoch = store.epoch
    store.close()
    assert open_list(tmp_path).epoch == epoch
    assert open_list(tmp_path, name="other.db").epoch != epoch


def test_peer_cursors_are_kept_per_peer(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    assert store.peer_cursor("http://pod-1") is None
    store.set_peer_cursor("http://pod-1", "e1", 5)
    store.set_peer_cursor("http://pod-1", "e2", 7)
    store.set_peer_cursor("http://pod-2", "e1", 1)
    store.close()
    store = open_list(tmp_path)
    assert store.peer_cursor("http://pod-1") == ("e2", 7)
    assert store.peer_cursor("http://pod-2") == ("e1", 1)


async def test_entries_stamped_in_the_future_are_restamped_at_start(tmp_path: Path) -> None:
    ahead = Clock(NOW + 3600)  # written by a clock an hour fast
    store = open_list(tmp_path, ahead)
    await store.add("a@example.com", "hard_bounce", "delivery")
    await store.add("b@example.com", "hard_bounce", "delivery")
    store.close()
    store = open_list(tmp_path, Clock(NOW))
    healed = store.get("a@example.com")
    assert healed is not None and healed.ts == NOW_US and healed.suppressed
    assert store.cursor == 4  # re-stamped entries replicate again
    later = await store.add("c@example.com", "hard_bounce", "delivery")
    assert later.ts > NOW_US


def test_an_entry_travels_as_json_and_back() -> None:
    sent = Entry("Some.One@example.com", True, "complaint", "fbl", NOW_US, "pod-1")
    body = sent.to_json()
    assert body == {
        "address": "Some.One@example.com", "suppressed": True, "reason": "complaint",
        "source": "fbl", "ts": NOW_US, "at": "2023-11-14T22:13:20Z", "origin": "pod-1",
    }
    assert Entry.from_json(body) == sent
    assert Entry.from_json({**body, "address": "<Some.One@EXAMPLE.com>"}) == sent


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"suppressed": 1}, "bad 'suppressed' or 'ts'", id="suppressed not a bool"),
        pytest.param({"ts": "1"}, "bad 'suppressed' or 'ts'", id="ts not an int"),
        pytest.param({"ts": 0}, "bad 'suppressed' or 'ts'", id="ts zero"),
        pytest.param({"reason": ""}, "bad 'reason'", id="empty reason"),
        pytest.param({"source": 5}, "bad 'source'", id="source not a string"),
        pytest.param({"origin": "x" * 201}, "bad 'origin'", id="origin too long"),
        pytest.param({"address": "nobody"}, "no local part", id="no address"),
    ],
)
def test_a_bad_entry_from_a_peer_is_refused_with_the_reason(
    change: dict[str, object], message: str
) -> None:
    body = {**entry("a@example.com").to_json(), **change}
    with pytest.raises(ValueError, match=message):
        Entry.from_json(body)


def test_an_entry_lacking_a_field_or_not_an_object_is_refused() -> None:
    body = entry("a@example.com").to_json()
    for field in ("address", "suppressed", "ts", "reason", "source", "origin"):
        with pytest.raises(ValueError, match=f"entry lacks '{field}'"):
            Entry.from_json({k: v for k, v in body.items() if k != field})
    with pytest.raises(ValueError, match="must be an object"):
        Entry.from_json([body])
    longest = {**body, "reason": "r" * 200, "source": "s", "origin": "o"}
    assert Entry.from_json(longest).reason == "r" * 200


@pytest.mark.parametrize(
    ("address", "message"),
    [
        pytest.param(42, "^an address must be a string$", id="not a string"),
        pytest.param("@example.com", "has no local part and domain$", id="no local part"),
        pytest.param("someone", "has no local part and domain$", id="no at sign"),
        pytest.param("<a@example.com", r"^'<a@example\.com': invalid local part$",
                     id="an unclosed angle bracket"),
        pytest.param("a@b@example.com", r"^'a@b@example\.com': invalid local part$",
                     id="two at signs: the last one splits"),
        pytest.param("a b@example.com", "^'a b@example.com': invalid local part$",
                     id="a space in the local part"),
        pytest.param("a@localhost", "^'a@localhost': invalid domain$", id="a bare host name"),
        pytest.param("a@" + "x" * 64 + ".com", r"^'a@x+\.com': invalid domain$",
                     id="a label longer than 63"),
    ],
)
def test_an_address_that_cannot_be_suppressed_says_why(address: object, message: str) -> None:
    with pytest.raises(suppression.InvalidAddress, match=message):
        suppression.normalize_address(address)  # type: ignore[arg-type]


def test_an_address_of_254_characters_is_the_longest_accepted() -> None:
    domain = ".".join(["d" * 62] * 3) + ".example"  # 194 characters
    longest = "l" * (254 - 1 - len(domain)) + "@" + domain
    assert len(longest) == 254
    assert suppression.normalize_address(f" <{longest}> ")[0] == longest
    too_long = "l" + longest
    with pytest.raises(suppression.InvalidAddress) as refused:
        suppression.normalize_address(too_long)
    assert str(refused.value) == f"{too_long[:40]!r}... is longer than 254 characters"


def test_bad_entries_are_refused_with_exactly_the_reason() -> None:
    body = entry("a@example.com").to_json()
    with pytest.raises(ValueError, match=r"^an entry must be an object$"):
        Entry.from_json("a@example.com")
    with pytest.raises(ValueError, match=r"^entry has a bad 'suppressed' or 'ts'$"):
        Entry.from_json({**body, "ts": -1})
    assert Entry.from_json({**body, "ts": 1}).ts == 1


async def test_a_lost_list_is_held_at_once_and_restored_at_once(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    assert store.resync_pending is False
    store.require_resync()
    assert store.resync_pending is True
    store.resynced("import")
    assert store.resync_pending is False


async def test_counters_add_up_over_many_changes(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    first = await store.add("a@example.com", "hard_bounce", "delivery")
    second = await store.add("b@example.com", "hard_bounce", "delivery")
    assert second.ts == first.ts + 1  # the clock stood still: one microsecond later
    removed = await store.remove("a@example.com")
    await store.remove("b@example.com")
    assert removed is not None and removed.source == "api"
    limit = NOW_US + suppression.MAX_SKEW_US
    late = [entry(f"f{n}@example.com", ts=limit + 1) for n in range(2)]
    applied = await store.merge([*late, entry("c@example.com"), entry("d@example.com")])
    assert [e.address for e in applied] == ["c@example.com", "d@example.com"]
    await store.merge([entry("f@example.com", ts=limit + 5)])
    await store.merge([entry("e@example.com")])
    metrics = store.metrics
    assert (metrics.added, metrics.removed, metrics.merged, metrics.merge_rejected) == (2, 2, 3, 3)


async def test_the_first_change_is_listed_from_the_start(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    added = await store.add("a@example.com", "hard_bounce", "delivery")
    assert store.entries() == ([added], 1)


async def test_a_write_that_fails_leaves_the_sequence_as_it_was(tmp_path: Path) -> None:
    store = open_list(tmp_path)
    await store.add("a@example.com", "hard_bounce", "delivery")
    unstorable = Entry("b@example.com", True, "hard_bounce", "peer", NOW_US,
                       object())  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - whatever SQLite raises for the bad value
        await store.merge([unstorable])
    assert store.cursor == 1 and not store.is_suppressed("b@example.com")
    later = await store.add("c@example.com", "hard_bounce", "delivery")
    assert store.cursor == 2 and store.entries(since=1) == ([later], 2)
