"""Durations ("10m", "1h30m", "90d") and rates ("100/s", "5000/h") as written in specs and configs.

Pure (no I/O). Shared by the operator's API models and the sender, so both read the same
strings the same way. The annotated pydantic types (`Duration`, `RateStr`) validate the text
but keep it as written, so a model dumped back to YAML shows what the user typed; callers
convert with `parse_duration` / `parse_rate` where they need numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

# Unit suffix -> seconds. Longest suffix first in the regex so "ms" is not read as "m" + "s".
_UNIT_SECONDS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
UNIT_SECONDS = _UNIT_SECONDS
"""Public: the operator's CRD rules (CEL) spell the same table."""
_UNIT_NAMES = "ms, s, m, h, d, w"

# Also used, verbatim, as the OpenAPI `pattern` in the CRDs, so it must stay in the regex
# subset the API server understands (no look-arounds, no back-references).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$"
# A count and an optional period length, both greater than zero ("0/s" would never send).
_POSITIVE = r"([1-9][0-9]*(\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)"
RATE_PATTERN = rf"^{_POSITIVE}/{_POSITIVE}?(ms|s|m|h|d|w)$"

_SEGMENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_DURATION = re.compile(DURATION_PATTERN)
_RATE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)/((?:[0-9]+(?:\.[0-9]+)?)?)(ms|s|m|h|d|w)$")

DURATION_HELP = (
    f"expected a duration: numbers each followed by a unit ({_UNIT_NAMES}), "
    "e.g. '500ms', '30s', '10m', '1h30m', '90d'"
)
RATE_HELP = (
    "expected a rate '<count>/<period>' where the period is a unit or a duration "
    "(ms, s, m, h, d, w), e.g. '100/s', '5000/h', '20000/d', '300/5m'"
)


def parse_duration(text: str) -> datetime.timedelta:
    """Read "10m", "1h30m", "90d", "500ms" into a timedelta; raise ValueError naming the format."""
    if not isinstance(text, str):
        raise TypeError(f"duration must be a string, got {type(text).__name__}: {DURATION_HELP}")
    return _parse_duration(text)


@functools.lru_cache(maxsize=512)
def _parse_duration(text: str) -> datetime.timedelta:
    """Cached: the sender reads the same few config strings for every message it handles."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {text!r}: {DURATION_HELP}")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _SEGMENT.findall(text))
    return _timedelta(seconds, text)


def _timedelta(seconds: float, text: str) -> datetime.timedelta:
    try:
        return datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long: at most 999999999 days") from None


def duration_seconds(text: str) -> float:
    """The duration in seconds, for code that works with floats (timers, token buckets)."""
    return parse_duration(text).total_seconds()


def format_duration(value: datetime.timedelta | float) -> str:
    """The shortest canonical text for a duration: 5400 s -> "1h30m", 0.25 s -> "250ms".

    Days are the largest unit used (weeks read well only for round values, "14d" is clear).
    """
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {seconds} s")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


@dataclasses.dataclass(frozen=True)
class Rate:
    """`count` events per `per`; "100/s" is Rate(100, 1 s)."""

    count: float
    per: datetime.timedelta

    @property
    def per_second(self) -> float:
        """Events per second, the unit token buckets refill in."""
        return self.count / self.per.total_seconds()

    @property
    def interval(self) -> datetime.timedelta:
        """Average spacing between two events (the inverse rate)."""
        return self.per / self.count if self.count else datetime.timedelta.max

    def __str__(self) -> str:
        return format_rate(self)


def parse_rate(text: str) -> Rate:
    """Read "100/s", "5000/h", "10/m", "20000/d", "300/5m" into a Rate; ValueError otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"rate must be a string, got {type(text).__name__}: {RATE_HELP}")
    return _parse_rate(text)


@functools.lru_cache(maxsize=512)
def _parse_rate(text: str) -> Rate:
    """Cached like `_parse_duration` (the result is immutable)."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid rate {text!r}: {RATE_HELP}")
    count_text, period_number, unit = match.groups()
    period_seconds = float(period_number or "1") * _UNIT_SECONDS[unit]
    if period_seconds <= 0:
        raise ValueError(f"invalid rate {text!r}: the period must be longer than zero")
    count = float(count_text)
    if count <= 0:
        raise ValueError(f"invalid rate {text!r}: the count must be greater than zero")
    whole = int(count)
    per = _timedelta(period_seconds, text)
    if not per:  # below timedelta's microsecond: refused, never rounded to a zero period
        raise ValueError(f"invalid rate {text!r}: the period is too short (under 1us)")
    return Rate(count=whole if whole == count else count, per=per)


def format_rate(rate: Rate) -> str:
    """Canonical text of a Rate: Rate(100, 1 s) -> "100/s", Rate(300, 5 min) -> "300/5m"."""
    count = int(rate.count) if float(rate.count).is_integer() else rate.count
    period = format_duration(rate.per)
    match = re.fullmatch(r"1(ms|s|m|h|d)", period)
    return f"{count}/{match.group(1) if match else period}"


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_rate(value: str) -> str:
    parse_rate(value)
    return value


def _require_str(kind: str, help_text: str) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            # YAML turns `interval: 10` into an int; say which format is meant.
            raise ValueError(f"{kind} must be a string, got {value!r}: {help_text}")
        return value

    return check


Duration = Annotated[
    str,
    BeforeValidator(_require_str("a duration", DURATION_HELP)),
    AfterValidator(_check_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]
"""A duration string ("10m", "1h30m"), validated, kept as written."""

RateStr = Annotated[
    str,
    BeforeValidator(_require_str("a rate", RATE_HELP)),
    AfterValidator(_check_rate),
    WithJsonSchema({"type": "string", "pattern": RATE_PATTERN}),
]
"""A rate string ("100/s", "5000/h"), validated, kept as written."""
