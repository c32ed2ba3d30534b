"""Campaign KPIs (kpis.KpiBook): what the people sending campaigns read in /v1/stats and the
dashboard. Events are built as the event contract writes them (docs/events.md)."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailfleet_sender import kpis
from unit.sender.kpi_events import T0, Wall, campaign_of_ten, event


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def book(wall: Wall) -> kpis.KpiBook:
    return kpis.KpiBook(tag_keys=["campaign"], wall=wall)


def test_a_campaign_reads_as_counts_rates_and_delivery_times(
    book: kpis.KpiBook, wall: Wall
) -> None:
    campaign_of_ten(book, T0)
    hour = book.snapshot(wall.moment())["windows"]["1h"]
    total = hour["total"]
    assert {k: total[k] for k in ("sent", "delivered", "hard_bounced", "soft_bounced",
                                  "complained", "unsubscribed")} == {
        "sent": 10, "delivered": 7, "hard_bounced": 1, "soft_bounced": 1, "complained": 1,
        "unsubscribed": 1}
    assert total["delivery_rate"] == 0.7
    assert total["hard_bounce_rate"] == total["soft_bounce_rate"] == round(1 / 9, 6)
    assert total["complaint_rate"] == total["unsubscribe_rate"] == round(1 / 7, 6)
    # unique (message, recipient) human opens: m0 and m1; the proxy fetches are apart
    assert (total["opened_human"], total["opens_human_total"]) == (2, 4)
    assert (total["opened_machine"], total["opens_machine_total"]) == (2, 2)
    assert total["open_rate"] == round(2 / 7, 6)
    assert (total["clicked_human"], total["clicks_human_total"], total["click_rate"]) == (
        1, 2, round(1 / 7, 6))
    assert total["deliver_p50_s"] == pytest.approx(4, rel=0.1)
    assert total["deliver_p95_s"] == pytest.approx(7, rel=0.1)
    # every breakout the event names carries the same figures; the segment tag is not allowed
    assert set(hour["by"]) == {"class", "provider", "ip", "tag:campaign"}
    for dim, value in (("class", "bulk"), ("provider", "gmail"), ("ip", "192.0.2.10"),
                       ("tag:campaign", "spring")):
        assert hour["by"][dim] == {value: total}


def test_no_denominator_gives_null_never_zero(book: kpis.KpiBook, wall: Wall) -> None:
    empty = book.snapshot(wall.moment())
    assert empty["days"] == {}
    figures = empty["windows"]["24h"]["total"]
    assert figures["sent"] == 0
    assert all(figures[k] is None for k in figures if k.endswith(("_rate", "_s")))
    book.observe(event("accepted", T0))
    accepted_only = book.snapshot(wall.moment())["windows"]["1h"]["total"]
    assert accepted_only["delivery_rate"] == 0.0  # 0 of 1 delivered: a real zero
    for rate in ("hard_bounce_rate", "complaint_rate", "open_rate", "click_rate",
                 "deliver_p50_s", "deliver_p95_s"):
        assert accepted_only[rate] is None, rate


def test_an_event_without_a_class_provider_or_tag_counts_in_the_total_only(
    book: kpis.KpiBook, wall: Wall
) -> None:
    book.observe(event("accepted", T0, **{"class": None, "provider": None, "ip": None,
                                          "tags": {}}))
    hour = book.snapshot(wall.moment())["windows"]["1h"]
    assert hour["total"]["sent"] == 1
    assert hour["by"] == {"class": {}, "provider": {}, "ip": {}, "tag:campaign": {}}


def test_the_windows_roll_and_the_days_stay(book: kpis.KpiBook, wall: Wall) -> None:
    book.observe(event("accepted", T0))

    def sent(after: float) -> tuple[int, int, dict[str, int]]:
        wall.at = T0 + after
        snap = book.snapshot(wall.moment())
        return (snap["windows"]["1h"]["total"]["sent"], snap["windows"]["24h"]["total"]["sent"],
                {day: s["total"]["sent"] for day, s in snap["days"].items()})

    assert sent(50 * 60) == (1, 1, {"2026-12-05": 1})
    assert sent(70 * 60) == (0, 1, {"2026-12-05": 1})  # out of the last hour
    assert sent(23 * 3600) == (0, 1, {"2026-12-05": 1})
    assert sent(25 * 3600) == (0, 0, {"2026-12-05": 1})  # out of 24 h, its day still listed
    book.observe(event("accepted", wall.at, "m2"))
    assert sent(25 * 3600)[2] == {"2026-12-05": 1, "2026-12-06": 1}
    assert sent(8 * 86400)[2] == {"2026-12-06": 1}  # 8 days kept, today (12-13) included
    assert sent(9 * 86400)[2] == {}


def test_days_are_utc_dates(book: kpis.KpiBook, wall: Wall) -> None:
    midnight = datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC).timestamp()
    wall.at = midnight + 10
    book.observe(event("accepted", midnight - 1, "m1"))
    book.observe(event("accepted", midnight, "m2"))
    days = book.snapshot(wall.moment())["days"]
    assert list(days) == ["2026-12-05", "2026-12-06"]
    assert [d["total"]["sent"] for d in days.values()] == [1, 1]


def test_an_event_stamped_ahead_of_our_clock_counts_now(book: kpis.KpiBook, wall: Wall) -> None:
    book.observe(event("accepted", T0 + 3 * 86400))
    snap = book.snapshot(wall.moment())
    assert snap["windows"]["1h"]["total"]["sent"] == 1
    assert list(snap["days"]) == ["2026-12-05"]


def test_unusable_events_are_ignored_not_raised(book: kpis.KpiBook, wall: Wall) -> None:
    for bad in ({"type": "accepted"}, {"type": "accepted", "time": "yesterday"},
                {"type": "teleported", "time": "2026-12-05T10:00:00Z"}, {}):
        book.observe(bad)
    assert book.ignored == 4
    assert book.snapshot(wall.moment())["windows"]["1h"]["total"]["sent"] == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=86400 * 20), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.95]))
def test_delivery_time_percentiles_are_within_ten_percent(
    delays: list[float], q: float
) -> None:
    wall = Wall()
    book = kpis.KpiBook(wall=wall)
    for i, delay in enumerate(delays):
        book.observe(event("delivered", T0, f"m{i}", delay_s=delay))
    figures = book.snapshot(wall.moment())["days"]["2026-12-05"]["total"]
    exact = sorted(delays)[max(1, math.ceil(q * len(delays))) - 1]  # nearest rank
    got = figures["deliver_p50_s" if q == 0.5 else "deliver_p95_s"]
    assert got == pytest.approx(exact, rel=0.1)


def test_ten_thousand_campaign_values_keep_a_hundred_and_other(wall: Wall) -> None:
    book = kpis.KpiBook(tag_keys=["campaign"], max_values=100, wall=wall)
    for i in range(10_000):
        book.observe(event("accepted", T0, f"m{i}", tags={"campaign": f"c{i}", "x": f"{i}"}))
    by = book.snapshot(wall.moment())["windows"]["1h"]["by"]["tag:campaign"]
    assert len(by) == 101
    assert by["c0"]["sent"] == 1 and by[kpis.OTHER]["sent"] == 9900
    assert sum(f["sent"] for f in by.values()) == 10_000  # nothing lost, only pooled
    assert len(book.lifetime()) == 1 + 3 + 101  # total, class/provider/ip, capped tags


def test_a_campaign_silent_for_the_whole_retention_frees_its_place(wall: Wall) -> None:
    book = kpis.KpiBook(tag_keys=["campaign"], max_values=2, days=2, wall=wall)
    for name in ("old", "kept"):
        book.observe(event("accepted", T0, tags={"campaign": name}))
    wall.at = T0 + 86400
    book.observe(event("accepted", wall.at, tags={"campaign": "early"}))  # full: _other
    assert set(book.snapshot(wall.moment())["windows"]["1h"]["by"]["tag:campaign"]) == {
        kpis.OTHER}
    wall.at = T0 + 2 * 86400 + 60
    book.observe(event("accepted", wall.at, tags={"campaign": "kept"}))
    book.observe(event("accepted", wall.at, tags={"campaign": "new"}))
    assert set(book.snapshot(wall.moment())["windows"]["1h"]["by"]["tag:campaign"]) == {
        "kept", "new"}
    assert ("tag:campaign", "old") not in book.lifetime()


def test_a_tag_key_taken_off_the_allow_list_loses_its_breakout(
    book: kpis.KpiBook, wall: Wall
) -> None:
    book.observe(event("accepted", T0))
    book.configure(tag_keys=["segment"])
    by = book.snapshot(wall.moment())["windows"]["1h"]["by"]
    assert "tag:campaign" not in by and by["tag:segment"] == {}
    assert not any(dim == "tag:campaign" for dim, _ in book.lifetime())


def test_the_state_survives_a_round_trip_through_json(book: kpis.KpiBook, wall: Wall) -> None:
    campaign_of_ten(book, T0)
    book.observe(event("accepted", T0 - 86400, "y1"))
    saved = json.loads(json.dumps(book.export()))
    restarted = kpis.KpiBook(tag_keys=["campaign"], wall=wall)
    restarted.restore(saved)
    assert restarted.snapshot(wall.moment()) == book.snapshot(wall.moment())
    assert _lifetime(restarted) == _lifetime(book)
    # the unique pairs came along: a repeat open after the restart is not a new open
    restarted.observe(event("opened", T0, "m0", machine=False))
    total = restarted.snapshot(wall.moment())["windows"]["1h"]["total"]
    assert (total["opened_human"], total["opens_human_total"]) == (2, 5)


@pytest.mark.parametrize(
    "corrupt",
    [lambda s: {**s, "v": 2}, lambda s: {**s, "resolutions": {"7": []}},
     lambda s: {**s, "lifetime": [["total", "", {}, [1, 2], 0.0]]}, lambda s: {"v": 1}],
    ids=["a newer version", "an unknown resolution", "changed histogram buckets",
         "missing parts"],
)
def test_a_state_this_version_did_not_write_is_refused_and_changes_nothing(
    book: kpis.KpiBook, wall: Wall, corrupt: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    campaign_of_ten(book, T0)
    before = book.snapshot(wall.moment())
    with pytest.raises(ValueError, match="not a KPI state"):
        book.restore(corrupt(book.export()))
    assert book.snapshot(wall.moment()) == before


def test_unique_pairs_are_remembered_up_to_the_bound(wall: Wall) -> None:
    book = kpis.KpiBook(unique_keys=1000, wall=wall)
    for i in range(1001):
        book.observe(event("opened", T0, f"m{i}", machine=False))
    book.observe(event("opened", T0, "m1000", machine=False))  # recent: still known
    book.observe(event("opened", T0, "m0", machine=False))  # forgotten: counted again
    total = book.snapshot(wall.moment())["windows"]["1h"]["total"]
    assert (total["opened_human"], total["opens_human_total"]) == (1002, 1003)


def _lifetime(book: kpis.KpiBook) -> dict[kpis.Key, tuple[list[int], list[int], float]]:
    return {k: (v.counts, v.buckets, v.delay_sum) for k, v in book.lifetime().items()}
