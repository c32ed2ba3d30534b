"""Limits of the feedback port (`deliverability.reports` in the config), and the per-source
rate limiter. Pure (no I/O): time comes in as an argument.

The feedback port takes mail from the whole Internet without authentication. Its limits:
- per reporting source (the peer address of the SMTP session, never anything the report says):
  a token bucket of `perSourceRate`; a source over it is answered with a temporary refusal
  (`451 4.7.1`) at MAIL FROM, before its report is read;
- the table of sources is bounded (`maxSources`): when it is full, the least recently seen
  source is forgotten only if its bucket has refilled (forgetting it loses nothing); otherwise
  new sources share one overflow bucket, so rotating addresses cannot buy a fresh allowance;
- a report is at most `maxBytes` and `maxParts` MIME parts, and is parsed off the event loop,
  `parseConcurrency` at a time;
- a report is counted once per copy within `replayWindow` (`reported_copies`), the ledger
  holding at most `maxRemembered` identities.
"""

from __future__ import annotations

import collections

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from mailfleet_sender import throttles, units

__all__ = ["OVERFLOW", "ReportLimits", "SourceLimiter"]

OVERFLOW = "(overflow)"
"""The key of the bucket shared by new sources while the table is full."""


class ReportLimits(BaseModel):
    """`deliverability.reports`: the limits of the feedback port (module docstring)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    replay_window: units.Duration = Field(
        default="30d",
        description="A report about a copy counted within this window is not counted again.",
    )
    max_remembered: int = Field(
        default=1_000_000, ge=1,
        description="Report identities kept; when full, nothing more is counted (451).",
    )
    per_source_rate: units.RateStr = Field(
        default="600/m", description="Reports per reporting source (peer address)."
    )
    per_source_burst: int = Field(
        default=100, ge=1, description="Reports a source may send at once."
    )
    max_sources: int = Field(
        default=10_000, ge=1, description="Sources tracked by the rate limiter."
    )
    max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024,
        description="Size of one report (SMTP DATA).",
    )
    max_parts: int = Field(default=64, ge=3, le=1000, description="MIME parts in one report.")
    parse_concurrency: int = Field(
        default=2, ge=1, le=16, description="Reports parsed at once (off the event loop)."
    )


class SourceLimiter:
    """A token bucket per reporting source, in a table of at most `max_sources`."""

    def __init__(self, *, rate: float, burst: int, max_sources: int) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: collections.OrderedDict[str, throttles.TokenBucket] = (
            collections.OrderedDict()
        )
        self._overflow: throttles.TokenBucket | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    @classmethod
    def from_limits(cls, limits: ReportLimits) -> SourceLimiter:
        return cls(rate=units.parse_rate(limits.per_source_rate).per_second,
                   burst=limits.per_source_burst, max_sources=limits.max_sources)

    def allow(self, source: str, now: float) -> bool:
        """Take one token for `source`; False when it has none (refuse for now)."""
        bucket = self._bucket(source, now)
        if not bucket.available(now):
            return False
        bucket.take(now)
        return True

    def _bucket(self, source: str, now: float) -> throttles.TokenBucket:
        bucket = self._buckets.get(source)
        if bucket is not None:
            self._buckets.move_to_end(source)
            return bucket
        if len(self._buckets) >= self.max_sources:
            _, oldest = next(iter(self._buckets.items()))
            oldest.refill(now)
            if oldest.tokens < oldest.burst:
                if self._overflow is None:
                    self._overflow = throttles.TokenBucket(self.rate, self.burst, now=now)
                return self._overflow
            self._buckets.popitem(last=False)
        bucket = throttles.TokenBucket(self.rate, self.burst, now=now)
        self._buckets[source] = bucket
        return bucket
