"""Rolling-window delivery counters per source IP and per class, and the rates derived from
them. Pure (no I/O): the caller passes `now`, so tests and the sandbox's scaled clock drive it.

Why here and not in Prometheus: the operator's reputation circuit breaker and the warm-up
gates read `/v1/stats` from each pod and need ready-made rates over fixed windows (1 h, 24 h)
without a Prometheus server in the loop.

Counts live in fixed buckets (default one minute), so a window is exact to one bucket: a
"1h" window covers the last 60 whole-or-current buckets. Memory is bounded by
(keys x longest window / bucket) small integer arrays.

Rate definitions (SES-like, documented in docs/deliverability.md):
- bounce rate: hard bounces / final outcomes (delivered + hard + soft + blocked);
- soft bounce rate and block rate: same denominator;
- complaint rate: complaints / delivered;
- deferral rate: (deferred + throttled) / attempts (every reply, final or not).
A rate is None when its denominator is zero, so "no data" never reads as "0 %".
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any, Literal

from mailfleet_sender import bounces

__all__ = [
    "DEFAULT_WINDOWS",
    "Counts",
    "Outcome",
    "RollingCounters",
    "outcome_for",
]


class Outcome(enum.StrEnum):
    """What is counted: every SMTP reply's category, plus later feedback and local decisions."""

    DELIVERED = "delivered"
    HARD_BOUNCE = "hardBounce"
    SOFT_BOUNCE = "softBounce"
    BLOCKED = "blocked"
    DEFERRED = "deferred"
    THROTTLED = "throttled"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    SUPPRESSED = "suppressed"


_ORDER = tuple(Outcome)
_INDEX = {outcome: i for i, outcome in enumerate(_ORDER)}

_BY_CATEGORY = {
    bounces.Category.DELIVERED: Outcome.DELIVERED,
    bounces.Category.HARD_BOUNCE: Outcome.HARD_BOUNCE,
    bounces.Category.SOFT_BOUNCE: Outcome.SOFT_BOUNCE,
    bounces.Category.BLOCKED: Outcome.BLOCKED,
    bounces.Category.DEFERRED: Outcome.DEFERRED,
    bounces.Category.THROTTLED: Outcome.THROTTLED,
}


def outcome_for(classification: bounces.Classification) -> Outcome:
    """The counter a classified reply goes to.

    A temporary soft bounce or block (4xx) is a deferral for rate purposes: the message will be
    retried, and counting it as a bounce would double count when the final reply comes.
    """
    if classification.temporary and classification.category in (
        bounces.Category.SOFT_BOUNCE,
        bounces.Category.BLOCKED,
    ):
        return Outcome.DEFERRED
    return _BY_CATEGORY[classification.category]


DEFAULT_WINDOWS: Mapping[str, float] = {"1h": 3600.0, "24h": 86400.0}

Dimension = Literal["ip", "class"]


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclasses.dataclass(frozen=True)
class Counts:
    """Totals of one key over one window, with the derived rates."""

    values: tuple[int, ...]

    def __getitem__(self, outcome: Outcome) -> int:
        return self.values[_INDEX[outcome]]

    @property
    def final(self) -> int:
        """Messages that reached a final reply (the denominator of bounce rates)."""
        return sum(
            self[o]
            for o in (Outcome.DELIVERED, Outcome.HARD_BOUNCE, Outcome.SOFT_BOUNCE, Outcome.BLOCKED)
        )

    @property
    def attempts(self) -> int:
        return self.final + self[Outcome.DEFERRED] + self[Outcome.THROTTLED]

    @property
    def bounce_rate(self) -> float | None:
        return _ratio(self[Outcome.HARD_BOUNCE], self.final)

    @property
    def soft_bounce_rate(self) -> float | None:
        return _ratio(self[Outcome.SOFT_BOUNCE], self.final)

    @property
    def block_rate(self) -> float | None:
        return _ratio(self[Outcome.BLOCKED], self.final)

    @property
    def complaint_rate(self) -> float | None:
        return _ratio(self[Outcome.COMPLAINT], self[Outcome.DELIVERED])

    @property
    def deferral_rate(self) -> float | None:
        return _ratio(self[Outcome.DEFERRED] + self[Outcome.THROTTLED], self.attempts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts and rates, camelCase like the rest of /v1/stats."""
        body: dict[str, Any] = {outcome.value: self[outcome] for outcome in _ORDER}
        body.update(
            attempts=self.attempts,
            final=self.final,
            bounceRate=self.bounce_rate,
            softBounceRate=self.soft_bounce_rate,
            blockRate=self.block_rate,
            complaintRate=self.complaint_rate,
            deferralRate=self.deferral_rate,
        )
        return body


class RollingCounters:
    """Bucketed counts per source IP and per class over rolling windows."""

    def __init__(
        self,
        *,
        windows: Mapping[str, float] = DEFAULT_WINDOWS,
        bucket_seconds: float = 60.0,
    ) -> None:
        if bucket_seconds <= 0 or not windows:
            raise ValueError("need a positive bucket size and at least one window")
        if any(seconds < bucket_seconds for seconds in windows.values()):
            raise ValueError("every window must be at least one bucket long")
        self._windows = dict(windows)
        self._bucket = bucket_seconds
        self._keep = max(math.ceil(s / bucket_seconds) for s in windows.values())
        self._data: dict[tuple[Dimension, str], dict[int, list[int]]] = {}

    def _index(self, now: float) -> int:
        return math.floor(now / self._bucket)

    def record(
        self, *, ip: str | None, klass: str, outcome: Outcome, now: float, count: int = 1
    ) -> None:
        """Count `count` outcomes for a source IP and a class at time `now` (`ip` None: the
        class only, for events no IP caused: suppressed recipients, unsubscribes)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        index = self._index(now)
        keys: list[tuple[Dimension, str]] = [("class", klass)]
        if ip is not None:
            keys.append(("ip", ip))
        for key in keys:
            buckets = self._data.setdefault(key, {})
            buckets.setdefault(index, [0] * len(_ORDER))[_INDEX[outcome]] += count
            self._prune(buckets, index)

    def _prune(self, buckets: dict[int, list[int]], index: int) -> None:
        oldest = index - self._keep
        for stale in [i for i in buckets if i <= oldest]:
            del buckets[stale]

    def counts(self, dimension: Dimension, key: str, window: str, now: float) -> Counts:
        """Totals for one IP or class over a named window ending now."""
        span = math.ceil(self._windows[window] / self._bucket)
        newest = self._index(now)
        totals = [0] * len(_ORDER)
        for index, values in self._data.get((dimension, key), {}).items():
            if newest - span < index <= newest:
                totals = [a + b for a, b in zip(totals, values, strict=True)]
        return Counts(values=tuple(totals))

    def keys(self, dimension: Dimension) -> list[str]:
        return sorted(key for dim, key in self._data if dim == dimension)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The /v1/stats section: {"byIp": {ip: {"1h": {...}, "24h": {...}}}, "byClass": ...}."""
        for buckets in self._data.values():
            self._prune(buckets, self._index(now))
        return {
            "byIp": {
                ip: {w: self.counts("ip", ip, w, now).to_dict() for w in self._windows}
                for ip in self.keys("ip")
            },
            "byClass": {
                klass: {w: self.counts("class", klass, w, now).to_dict() for w in self._windows}
                for klass in self.keys("class")
            },
        }
