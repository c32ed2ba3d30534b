"""The reputation circuit breaker of a SendingPool: rolling bounce and complaint rates judged
against `reputation.warnAt` and `reputation.pauseAt` (pure, no I/O).

Pods report cumulative counters (they restart, and their day counters roll over), so the
operator keeps timestamped samples per pod and sums the *increases* inside the window; a
counter that went down was reset, and its new value is the increase. Rates are judged only
once the window holds `minMessages` sends, so three bounces out of ten messages do not stop a
pool. Scopes are the whole pool ("*") and each class the pods report separately.

A tripped breaker latches: the scope stays paused (mail held, not dropped) until a person
resumes it, and counting restarts from the resume so the old bad window does not trip it again
at once.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

POOL = "*"


@dataclass(frozen=True)
class Counts:
    sent: int = 0
    bounced: int = 0
    complained: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.sent + other.sent,
            self.bounced + other.bounced,
            self.complained + other.complained,
        )


@dataclass(frozen=True)
class Sample:
    """Cumulative counters of one scope on one pod at one time."""

    at: datetime
    source: str  # pod uid (a recreated pod starts a new series)
    scope: str
    counts: Counts


def _increase(before: int, after: int) -> int:
    return after if after < before else after - before


def window_counts(
    samples: Sequence[Sample], *, now: datetime, window: timedelta, since: datetime | None = None
) -> dict[str, Counts]:
    """Per scope: what happened within the window (and after `since`, the last resume).

    An interval between two samples that ends inside the window counts in full."""
    start = now - window if since is None else max(now - window, since)
    series: dict[tuple[str, str], list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.at):
        series.setdefault((sample.source, sample.scope), []).append(sample)
    totals: dict[str, Counts] = {}
    for (_, scope), points in series.items():
        total = totals.get(scope, Counts())
        for before, after in itertools.pairwise(points):
            if after.at <= start:
                continue
            total = total + Counts(
                _increase(before.counts.sent, after.counts.sent),
                _increase(before.counts.bounced, after.counts.bounced),
                _increase(before.counts.complained, after.counts.complained),
            )
        totals[scope] = total
    return totals


def prune_samples(samples: Iterable[Sample], *, now: datetime, window: timedelta) -> list[Sample]:
    """Keep the window, plus the last sample before it per series (the baseline)."""
    kept: list[Sample] = []
    baseline: dict[tuple[str, str], Sample] = {}
    for sample in sorted(samples, key=lambda s: s.at):
        if sample.at > now - window:
            kept.append(sample)
        else:
            baseline[(sample.source, sample.scope)] = sample
    return sorted([*baseline.values(), *kept], key=lambda s: s.at)


def pick_window(available: Mapping[str, timedelta], wanted: timedelta) -> str | None:
    """Which of the senders' rolling windows ("1h", "24h") stands for `reputation.window`:
    the same length, else the longest shorter one, else the shortest (None: none reported)."""
    if not available:
        return None
    shorter = [label for label, length in available.items() if length <= wanted]
    if shorter:
        return max(shorter, key=lambda label: available[label])
    return min(available, key=lambda label: available[label])


def class_window_counts(
    per_pod: Iterable[Mapping[str, Counts]],
    *,
    window: timedelta,
    now: datetime,
    since: datetime | None = None,
) -> dict[str, Counts]:
    """Per class: the senders' rolling-window counts summed over pods.

    The senders count per class in rolling windows, not cumulative counters, so a window
    cannot be cut at a resume: classes are judged again only once a whole window lies after
    it (until then the pool scope, from cumulative counters, still guards)."""
    if since is not None and now - since < window:
        return {}
    totals: dict[str, Counts] = {}
    for classes in per_pod:
        for name, counts in classes.items():
            totals[name] = totals.get(name, Counts()) + counts
    return totals


class Level(enum.IntEnum):
    OK = 0
    WARN = 1
    PAUSE = 2


@dataclass(frozen=True)
class Thresholds:
    bounce_rate: float
    complaint_rate: float


@dataclass(frozen=True)
class ScopeVerdict:
    scope: str
    level: Level
    counts: Counts
    reason: str  # CamelCase
    message: str

    @property
    def bounce_rate(self) -> float:
        return self.counts.bounced / self.counts.sent if self.counts.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.counts.complained / self.counts.sent if self.counts.sent else 0.0


def judge_scope(
    scope: str, counts: Counts, *, warn_at: Thresholds, pause_at: Thresholds, min_messages: int
) -> ScopeVerdict:
    """OK, WARN or PAUSE for one scope, with the rate that decided it."""
    what = "the pool" if scope == POOL else f"class {scope}"
    if counts.sent < min_messages:
        return ScopeVerdict(
            scope,
            Level.OK,
            counts,
            "NotEnoughData",
            f"{counts.sent} messages in the window, {min_messages} needed",
        )
    bounce = counts.bounced / counts.sent
    complaint = counts.complained / counts.sent
    for level, limits in ((Level.PAUSE, pause_at), (Level.WARN, warn_at)):
        word = "Paused" if level is Level.PAUSE else "Warning"
        if bounce >= limits.bounce_rate:
            return ScopeVerdict(
                scope,
                level,
                counts,
                f"BounceRate{word}",
                f"bounce rate of {what} {bounce:.2%} >= {limits.bounce_rate:.2%}",
            )
        if complaint >= limits.complaint_rate:
            return ScopeVerdict(
                scope,
                level,
                counts,
                f"ComplaintRate{word}",
                f"complaint rate of {what} {complaint:.3%} >= {limits.complaint_rate:.3%}",
            )
    return ScopeVerdict(
        scope, Level.OK, counts, "WithinLimits", f"bounce {bounce:.2%}, complaints {complaint:.3%}"
    )


@dataclass(frozen=True)
class BreakerState:
    """What the operator persists between cycles (in an annotation of the pool)."""

    paused: tuple[str, ...] = ()  # scopes tripped and latched: POOL or class names
    since: datetime | None = None  # counting restarts here after a resume
    resume_token: str = ""  # the last `mailfleet.io/resume` value acted on
    reasons: Mapping[str, str] = field(default_factory=dict)  # scope -> message when tripped


@dataclass(frozen=True)
class BreakerOutcome:
    state: BreakerState
    verdicts: tuple[ScopeVerdict, ...]
    newly_paused: tuple[str, ...]
    resumed: bool

    @property
    def warnings(self) -> tuple[ScopeVerdict, ...]:
        return tuple(v for v in self.verdicts if v.level is Level.WARN)

    @property
    def pool_paused(self) -> bool:
        return POOL in self.state.paused

    @property
    def paused_classes(self) -> tuple[str, ...]:
        return tuple(s for s in self.state.paused if s != POOL)


def run_breaker(
    state: BreakerState,
    counts: Mapping[str, Counts],
    *,
    warn_at: Thresholds,
    pause_at: Thresholds,
    min_messages: int,
    resume_token: str,
    now: datetime,
) -> BreakerOutcome:
    """Judge every scope, latch new pauses, and honour a new resume token."""
    resumed = bool(resume_token) and resume_token != state.resume_token
    if resumed:
        state = BreakerState(since=now, resume_token=resume_token)
        counts = {}  # the window restarts now
    verdicts = tuple(
        judge_scope(scope, value, warn_at=warn_at, pause_at=pause_at, min_messages=min_messages)
        for scope, value in sorted(counts.items())
    )
    newly = tuple(
        v.scope for v in verdicts if v.level is Level.PAUSE and v.scope not in state.paused
    )
    if newly:
        reasons = dict(state.reasons)
        reasons.update({v.scope: v.message for v in verdicts if v.scope in newly})
        state = BreakerState(
            paused=tuple(sorted({*state.paused, *newly})),
            since=state.since,
            resume_token=state.resume_token,
            reasons=reasons,
        )
    return BreakerOutcome(state=state, verdicts=verdicts, newly_paused=newly, resumed=resumed)
