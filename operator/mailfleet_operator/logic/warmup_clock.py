"""The warm-up day clock: where a day begins and ends, at real time or sped up for the sandbox.

Pure (no I/O): "now" is always passed in, read by the caller from an injectable clock, so tests
and the sandbox drive time without sleeping.

Two clocks, one interface:
- `CalendarDays`: a warm-up day is a calendar day in the spec's timezone (UTC by default),
  midnight to midnight, DST included. This is production.
- `ScaledDays`: a day lasts `seconds_per_day` seconds from the warm-up's start. The operator
  builds it only when its time-scale setting is set (the sandbox sets it; production never
  does); nothing here knows about the sandbox.

How the day count survives pauses and restarts (everything lives in status):
- `status.day` is the schedule day. It moves only when a finished day is evaluated
  (Advance +1, Rollback -N, Hold/Pause 0), so it is frozen by construction while nothing
  is evaluated.
- `status.nextAdvanceAt` is the end of the day being run: the instant of the next evaluation.
  While paused it is cleared, so no day ends. On resume it becomes the end of the current
  clock day: resumed the same calendar day, the interrupted day simply continues (what was
  sent before the pause still counts); resumed on a later day, the same schedule day is run
  again in full on the new calendar day (the partial figures before the pause are not judged).
- After an operator restart the controller reads both fields back and carries on. A restart
  that missed one or more day ends evaluates once (the figures of the day that just ended),
  then aligns `nextAdvanceAt` on the current day: days are never "caught up" in a burst.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import zoneinfo
from typing import Protocol

from mailfleet_operator.logic import schedules

UTC = datetime.UTC


class DayClock(Protocol):
    """Where warm-up days begin and end."""

    def day_start(self, instant: datetime.datetime) -> datetime.datetime:
        """The start of the day containing `instant` (aware, UTC)."""
        ...

    def day_end(self, instant: datetime.datetime) -> datetime.datetime:
        """The end of the day containing `instant`: the next evaluation (aware, UTC)."""
        ...

    def day_key(self, instant: datetime.datetime) -> str:
        """A stable label of the day containing `instant`, for per-day counters and history."""
        ...


def _aware(instant: datetime.datetime) -> datetime.datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"instants must carry a timezone, got naive {instant.isoformat()}")
    return instant


@dataclasses.dataclass(frozen=True)
class CalendarDays:
    """Calendar days in a timezone (an IANA name such as "Europe/Paris"; "UTC" by default)."""

    timezone: str = "UTC"

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def _local_date(self, instant: datetime.datetime) -> datetime.date:
        return _aware(instant).astimezone(self.zone).date()

    def _midnight(self, date: datetime.date) -> datetime.datetime:
        # A midnight skipped by a DST jump resolves to the first instant of that date.
        local = datetime.datetime.combine(date, datetime.time(0), tzinfo=self.zone)
        return local.astimezone(UTC)

    def day_start(self, instant: datetime.datetime) -> datetime.datetime:
        return self._midnight(self._local_date(instant))

    def day_end(self, instant: datetime.datetime) -> datetime.datetime:
        return self._midnight(self._local_date(instant) + datetime.timedelta(days=1))

    def day_key(self, instant: datetime.datetime) -> str:
        return self._local_date(instant).isoformat()


@dataclasses.dataclass(frozen=True)
class ScaledDays:
    """Days of `seconds_per_day` seconds counted from `origin` (the sandbox's fast days)."""

    origin: datetime.datetime
    seconds_per_day: float

    def __post_init__(self) -> None:
        _aware(self.origin)
        if not (self.seconds_per_day > 0 and math.isfinite(self.seconds_per_day)):
            raise ValueError(f"a day must last a positive time, got {self.seconds_per_day}s")

    def _index(self, instant: datetime.datetime) -> int:
        elapsed = (_aware(instant) - self.origin).total_seconds()
        return math.floor(elapsed / self.seconds_per_day)

    def _at(self, index: int) -> datetime.datetime:
        return (self.origin + datetime.timedelta(seconds=index * self.seconds_per_day)).astimezone(
            UTC
        )

    def day_start(self, instant: datetime.datetime) -> datetime.datetime:
        return self._at(self._index(instant))

    def day_end(self, instant: datetime.datetime) -> datetime.datetime:
        return self._at(self._index(instant) + 1)

    def day_key(self, instant: datetime.datetime) -> str:
        return self.day_start(instant).isoformat()


def make_clock(
    *, timezone: str | None, seconds_per_day: float | None, origin: datetime.datetime
) -> CalendarDays | ScaledDays:
    """The clock for one warm-up: scaled when the operator's time-scale setting is set."""
    if seconds_per_day is not None:
        return ScaledDays(origin=origin, seconds_per_day=seconds_per_day)
    return CalendarDays(timezone=timezone or "UTC")


_EPOCH_DATE = datetime.date(1970, 1, 1)


def sender_day(clock: CalendarDays | ScaledDays, instant: datetime.datetime) -> int:
    """The senders' quota-day index holding `instant`. The operator renders the warm-up's
    timezone into their config (`clock.timezone`), so with calendar days they count the
    local date's days since 1970-01-01, the warm-up's own day; scaled days count from the
    epoch on both sides (the scaled clock's origin)."""
    if isinstance(clock, CalendarDays):
        return (clock._local_date(instant) - _EPOCH_DATE).days
    return clock._index(instant)


def validate_timezone(name: str | None, *, prefix: str = "spec") -> list[schedules.Problem]:
    """An unknown timezone is a spec error with a path, not a crash at the first day end."""
    if name is None:
        return []
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return [
            schedules.Problem(
                f"{prefix}.timezone",
                f"unknown timezone {name!r}: expected an IANA name such as 'UTC' or 'Europe/Paris'",
            )
        ]
    return []


def elapsed_days(clock: DayClock, *, started_at: datetime.datetime, now: datetime.datetime) -> int:
    """Clock days since the start, 1 on the first day (pauses and holds included)."""
    count = 1
    boundary = clock.day_end(started_at)
    # Day lengths vary with DST, so step boundary to boundary; a warm-up lasts months at most.
    while boundary <= now:
        count += 1
        boundary = clock.day_end(boundary)
    return count


def next_advance_at(
    clock: DayClock,
    *,
    now: datetime.datetime,
    current: datetime.datetime | None,
    paused: bool,
) -> datetime.datetime | None:
    """The `status.nextAdvanceAt` to keep: None while paused, else the end of the running day.

    Called every reconcile (level-based). A value from status is kept while it is still
    ahead and not beyond the current day's end (it can be beyond after the timezone or the
    time scale changed; then the sooner boundary wins). A missing or passed value is replaced
    by the end of the current day: that is resume, first start and after an evaluation.
    """
    if paused:
        return None
    end = clock.day_end(now)
    if current is None or current <= now or current > end:
        return end
    return current


def is_day_over(*, now: datetime.datetime, next_advance: datetime.datetime | None) -> bool:
    """True when the running day has ended and must be evaluated (never while paused)."""
    return next_advance is not None and now >= next_advance
