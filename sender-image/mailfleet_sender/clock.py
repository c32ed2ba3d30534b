"""Time as the sender sees it: wall-clock seconds for schedules and quota days, and
monotonic seconds for leases (a skewed or stepped wall clock must not stretch them), rates and
timeouts. Injectable so tests and the sandbox control it.

Quota days are `day_length` seconds long, counted from the Unix epoch: with the default 24 h a
day is a UTC day; the sandbox sets e.g. 60 s to run a warm-up schedule in minutes. It is a
setting (`clock.dayLength`), not a sandbox code path.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass
class Clock:
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    day_length: float = 86400.0

    def day(self, wall: float | None = None) -> int:
        return int((self.wall() if wall is None else wall) // self.day_length)
