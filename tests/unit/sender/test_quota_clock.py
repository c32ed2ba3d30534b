"""The sender's quota day: calendar days of the warm-up's timezone (24 h days), fixed-length
days from the epoch otherwise (the sandbox's time scale)."""

from __future__ import annotations

import datetime

from mailfleet_sender import clock

UTC = datetime.UTC


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def test_utc_days_are_the_epoch_days() -> None:
    c = clock.Clock()
    assert (
        c.day(at("2026-12-05T23:59:59+00:00"))
        == (datetime.date(2026, 12, 5) - datetime.date(1970, 1, 1)).days
    )
    assert c.day(at("2026-12-06T00:00:00+00:00")) == c.day(at("2026-12-05T00:00:00+00:00")) + 1


def test_a_zone_ahead_of_utc_starts_its_day_at_local_midnight() -> None:
    c = clock.Clock(timezone="Pacific/Auckland")  # UTC+13 in December
    before, after = at("2026-12-05T10:59:00+00:00"), at("2026-12-05T11:00:00+00:00")
    assert c.day(after) == c.day(before) + 1  # local midnight, UTC midday
    assert clock.Clock().day(after) == clock.Clock().day(before)  # UTC: the same day


def test_a_dst_day_is_one_quota_day() -> None:
    c = clock.Clock(timezone="Europe/Paris")  # 2026-03-29 lasts 23 hours
    assert c.day(at("2026-03-29T00:30:00+01:00")) == c.day(at("2026-03-29T23:30:00+02:00"))
    assert c.day(at("2026-03-30T00:00:00+02:00")) == c.day(at("2026-03-29T12:00:00+02:00")) + 1


def test_scaled_days_ignore_the_zone() -> None:
    c = clock.Clock(day_length=100.0, timezone="Pacific/Auckland")
    assert (c.day(199.0), c.day(200.0)) == (1, 2)
