"""The warm-up day clock: days end at midnight in the spec's timezone (DST included), or
every N seconds under the sandbox time scale; pauses freeze the day and resume it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from mailfleet_operator.logic import warmup_clock
from mailfleet_operator.logic.warmup_clock import CalendarDays, ScaledDays


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timezone", "instant", "start", "end", "key"),
    [
        pytest.param(
            "UTC", utc(2025, 3, 10, 15, 0), utc(2025, 3, 10), utc(2025, 3, 11), "2025-03-10",
            id="a UTC day runs from midnight to midnight UTC",
        ),
        pytest.param(
            "Europe/Paris", utc(2025, 1, 10, 23, 30), utc(2025, 1, 10, 23), utc(2025, 1, 11, 23),
            "2025-01-11",
            id="in Paris a new day starts at 23:00 UTC in winter",
        ),
        pytest.param(
            "Europe/Paris", utc(2025, 3, 29, 12), utc(2025, 3, 28, 23), utc(2025, 3, 29, 23),
            "2025-03-29",
            id="the day before the spring DST change is 24 hours long",
        ),
        pytest.param(
            "Europe/Paris", utc(2025, 3, 30, 12), utc(2025, 3, 29, 23), utc(2025, 3, 30, 22),
            "2025-03-30",
            id="the spring DST day in Paris is 23 hours long",
        ),
        pytest.param(
            "America/New_York", utc(2025, 11, 2, 12), utc(2025, 11, 2, 4), utc(2025, 11, 3, 5),
            "2025-11-02",
            id="the autumn DST day in New York is 25 hours long",
        ),
        pytest.param(
            "America/Sao_Paulo", utc(2018, 11, 4, 12), utc(2018, 11, 4, 3), utc(2018, 11, 5, 2),
            "2018-11-04",
            id="a day whose local midnight was skipped by DST starts at its first instant",
        ),
    ],
)
def test_calendar_days(
    timezone: str, instant: datetime, start: datetime, end: datetime, key: str
) -> None:
    clock = CalendarDays(timezone=timezone)
    assert clock.day_start(instant) == start
    assert clock.day_end(instant) == end
    assert clock.day_key(instant) == key


T0 = utc(2025, 6, 1, 12)


@pytest.mark.parametrize(
    ("offset", "start", "end"),
    [
        pytest.param(0, 0, 60, id="the warm-up's start is the start of scaled day one"),
        pytest.param(59.9, 0, 60, id="a scaled day lasts exactly the configured seconds"),
        pytest.param(60, 60, 120, id="the second scaled day starts when the first ends"),
        pytest.param(
            -1, -60, 0, id="an instant before the start belongs to the day before it"
        ),
    ],
)
def test_scaled_days_last_the_configured_seconds(offset: float, start: float, end: float) -> None:
    clock = ScaledDays(origin=T0, seconds_per_day=60)
    instant = T0 + timedelta(seconds=offset)
    assert clock.day_start(instant) == T0 + timedelta(seconds=start)
    assert clock.day_end(instant) == T0 + timedelta(seconds=end)


def test_a_time_scale_setting_builds_a_scaled_clock_and_none_builds_calendar_days() -> None:
    scaled = warmup_clock.make_clock(timezone="Europe/Paris", seconds_per_day=30, origin=T0)
    assert scaled.day_end(T0) == T0 + timedelta(seconds=30)
    real = warmup_clock.make_clock(timezone=None, seconds_per_day=None, origin=T0)
    assert real == CalendarDays("UTC")


@pytest.mark.parametrize(
    "seconds", [0, -5, float("inf")], ids=lambda s: f"a day of {s} seconds is refused"
)
def test_scaled_days_need_a_positive_length(seconds: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        ScaledDays(origin=T0, seconds_per_day=seconds)


def test_naive_instants_are_refused_so_no_day_is_silently_read_in_local_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        CalendarDays().day_end(datetime(2025, 1, 1, 12))


@pytest.mark.parametrize(
    ("name", "paths"),
    [
        pytest.param("Europe/Paris", [], id="an IANA timezone is accepted"),
        pytest.param(None, [], id="no timezone means UTC"),
        pytest.param("Mars/Olympus", ["spec.timezone"], id="an unknown timezone is a spec error"),
    ],
)
def test_validate_timezone(name: str | None, paths: list[str]) -> None:
    assert [p.path for p in warmup_clock.validate_timezone(name)] == paths


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(utc(2025, 6, 1, 23, 59), 1, id="the start day is day one"),
        pytest.param(utc(2025, 6, 2, 0, 0), 2, id="midnight starts day two"),
        pytest.param(utc(2025, 6, 11, 8), 11, id="ten midnights later it is day eleven"),
    ],
)
def test_elapsed_days_counts_midnights_since_the_start(now: datetime, expected: int) -> None:
    assert warmup_clock.elapsed_days(CalendarDays(), started_at=T0, now=now) == expected


DAY_END = utc(2025, 6, 2)


@pytest.mark.parametrize(
    ("now", "current", "paused", "expected"),
    [
        pytest.param(T0, None, False, DAY_END, id="a new warm-up ends its first day at midnight"),
        pytest.param(
            T0, DAY_END, False, DAY_END, id="a stored boundary still ahead is kept after a restart"
        ),
        pytest.param(T0, DAY_END, True, None, id="pausing clears the boundary so no day ends"),
        pytest.param(
            utc(2025, 6, 1, 20), None, False, DAY_END,
            id="resuming the same day continues that day to its own midnight",
        ),
        pytest.param(
            utc(2025, 6, 4, 9), None, False, utc(2025, 6, 5),
            id="resuming days later runs the frozen day again in full on the new calendar day",
        ),
        pytest.param(
            utc(2025, 6, 2, 0, 5), DAY_END, False, utc(2025, 6, 3),
            id="a boundary in the past moves to the end of the current day after evaluation",
        ),
        pytest.param(
            T0, utc(2025, 6, 9), False, DAY_END,
            id="a boundary beyond today's end (the clock got faster) is pulled in",
        ),
    ],
)
def test_next_advance_at(
    now: datetime, current: datetime | None, paused: bool, expected: datetime | None
) -> None:
    got = warmup_clock.next_advance_at(CalendarDays(), now=now, current=current, paused=paused)
    assert got == expected


@pytest.mark.parametrize(
    ("now", "boundary", "expected"),
    [
        pytest.param(utc(2025, 6, 1, 23), DAY_END, False, id="before midnight the day runs on"),
        pytest.param(DAY_END, DAY_END, True, id="at midnight the day is over"),
        pytest.param(utc(2025, 6, 9), None, False, id="a paused warm-up never ends a day"),
    ],
)
def test_is_day_over(now: datetime, boundary: datetime | None, expected: bool) -> None:
    assert warmup_clock.is_day_over(now=now, next_advance=boundary) is expected


def test_a_pause_spanning_midnights_freezes_the_day_count_through_status_alone() -> None:
    """Walk a warm-up through pause and resume the way the controller would, keeping only
    what status holds (schedule day, nextAdvanceAt) between reconciles."""
    clock = CalendarDays("UTC")
    day, boundary = 1, None
    evaluated: list[int] = []

    def reconcile(now: datetime, *, paused: bool) -> None:
        nonlocal day, boundary
        if not paused and warmup_clock.is_day_over(now=now, next_advance=boundary):
            evaluated.append(day)
            day += 1  # every day passes its gates in this walk
        boundary = warmup_clock.next_advance_at(clock, now=now, current=boundary, paused=paused)

    reconcile(utc(2025, 6, 1, 9), paused=False)
    reconcile(utc(2025, 6, 2, 0, 1), paused=False)  # day 1 ends
    reconcile(utc(2025, 6, 2, 14), paused=True)  # paused during day 2
    for later in (utc(2025, 6, 3, 0, 1), utc(2025, 6, 4, 0, 1), utc(2025, 6, 5, 12)):
        reconcile(later, paused=True)
    assert (day, evaluated) == (2, [1])
    reconcile(utc(2025, 6, 5, 13), paused=False)  # resumed on a later day
    assert (day, boundary) == (2, utc(2025, 6, 6))
    reconcile(utc(2025, 6, 6, 0, 1), paused=False)
    assert (day, evaluated) == (3, [1, 2])


def test_the_senders_day_index_is_the_warmups_local_date() -> None:
    import datetime as dt

    from mailfleet_operator.logic import warmup_clock as wc

    auckland = wc.CalendarDays("Pacific/Auckland")
    before = dt.datetime(2026, 12, 5, 10, 59, tzinfo=dt.UTC)
    after = dt.datetime(2026, 12, 5, 11, 0, tzinfo=dt.UTC)  # local midnight
    assert wc.sender_day(auckland, after) == wc.sender_day(auckland, before) + 1
    assert wc.sender_day(auckland, after) == (dt.date(2026, 12, 6) - dt.date(1970, 1, 1)).days
    assert wc.sender_day(wc.CalendarDays("UTC"), after) == int(after.timestamp() // 86400)
    scaled = wc.ScaledDays(origin=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), seconds_per_day=100)
    assert wc.sender_day(scaled, after) == int(after.timestamp() // 100)
