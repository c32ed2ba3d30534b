"""Time as the sender sees it: wall-clock seconds for schedules and quota days, and
monotonic seconds for leases (a skewed or stepped wall clock must not stretch them), rates and
timeouts. Injectable so tests and the sandbox control it.

Quota days with the default 24 h `day_length` are calendar days in `timezone` (the warm-up's,
rendered by the operator; UTC by default), local midnight to local midnight, DST included: the
day index is the local date's number of days since 1970-01-01 (with UTC, `wall // 86400`).
Another `day_length` gives days of that many seconds counted from the Unix epoch, whatever
the zone: the sandbox sets e.g. 60 s to run a warm-up schedule in minutes. Both are settings
(`clock.dayLength`, `clock.timezone`), not sandbox code paths.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import zoneinfo
from collections.abc import Callable

CALENDAR_DAY = 86400.0
_EPOCH_DATE = datetime.date(1970, 1, 1)


@dataclasses.dataclass
class Clock:
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    day_length: float = CALENDAR_DAY
    timezone: str = "UTC"

    def day(self, wall: float | None = None) -> int:
        """Index of the quota day containing `wall` (now when None)."""
        at = self.wall() if wall is None else wall
        if self.day_length != CALENDAR_DAY or self.timezone == "UTC":
            return int(at // self.day_length)
        local = datetime.datetime.fromtimestamp(at, zoneinfo.ZoneInfo(self.timezone))
        return (local.date() - _EPOCH_DATE).days
