"""Day-end evaluation of a warming IP: advance, hold, roll back, pause or complete.

Pure (no I/O): the controller gathers the day's figures from the pool's pods (`/v1/stats`,
summed per IP across every pod that held it) and the DNSBL check, calls `evaluate_day`, and
records the returned decision as a history row and an event.

The order of the checks, and why:
1. A DNSBL listing holds: the IP's reputation is in question for reasons the day's figures
   may not show; repeating the same quota neither worsens it nor loses ground.
2. The safety gates (bounce, complaint, deferral rates): a breach applies `onViolation`
   (Hold, Rollback by `rollbackDays`, or Pause). They are judged on any volume, because five
   complaints out of ten messages are a real signal, not noise.
3. Volume: fewer than `minVolumeRatio` x quota sent holds. Too little mail is not a
   reputation problem, so it never rolls back or pauses; it just proves nothing yet.
4. Otherwise the day passed: Complete when its quota was the target, else Advance.

Rates, with zero-safe denominators (a day with nothing sent has all rates 0):
- bounce rate = hard bounces / sent
- complaint rate = complaints / delivered (complaints can only come from delivered mail;
  falls back to sent when nothing was recorded as delivered)
- deferral rate = deferrals (4xx answers) / sent, capped at 1
A rate breaches its gate when strictly above the maximum.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from mailfleet_operator.api import ipwarmup

_EPS = 1e-12


class Action(enum.StrEnum):
    """What happens to an IP's warm-up after a day (the history row's `decision`)."""

    ADVANCE = "Advance"
    HOLD = "Hold"
    ROLLBACK = "Rollback"
    PAUSE = "Pause"
    COMPLETE = "Complete"


class OnViolation(enum.StrEnum):
    """What a safety-gate breach does (spec.safety.onViolation)."""

    HOLD = "Hold"
    ROLLBACK = "Rollback"
    PAUSE = "Pause"


@dataclasses.dataclass(frozen=True)
class SafetyPolicy:
    """spec.safety, as numbers. Rates are fractions: 0.02 = 2 %. Defaults match the API's."""

    max_bounce_rate: float = 0.05
    max_complaint_rate: float = 0.001
    max_deferral_rate: float = 0.2
    min_volume_ratio: float = 0.5
    on_violation: OnViolation = OnViolation.HOLD
    rollback_days: int = 1

    @classmethod
    def from_spec(cls, safety: ipwarmup.Safety) -> SafetyPolicy:
        return cls(
            max_bounce_rate=safety.max_bounce_rate,
            max_complaint_rate=safety.max_complaint_rate,
            max_deferral_rate=safety.max_deferral_rate,
            min_volume_ratio=safety.min_volume_ratio,
            on_violation=OnViolation(safety.on_violation),
            rollback_days=safety.rollback_days,
        )


@dataclasses.dataclass(frozen=True)
class DayFigures:
    """One IP's counts for one warm-up day, summed over every pod that sent from it."""

    sent: int = 0
    delivered: int = 0
    hard_bounces: int = 0
    complaints: int = 0
    deferrals: int = 0

    @property
    def bounce_rate(self) -> float:
        return _ratio(self.hard_bounces, self.sent)

    @property
    def complaint_rate(self) -> float:
        return _ratio(self.complaints, self.delivered if self.delivered > 0 else self.sent)

    @property
    def deferral_rate(self) -> float:
        return min(1.0, _ratio(self.deferrals, self.sent))


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Decision:
    """The verdict on one day: what to do, the schedule day to run next, and why.

    `reason` is a CamelCase word for conditions and events; `message` the sentence with the
    figures a human reads; `violations` lists every breached gate, not only the first.
    """

    action: Action
    day: int
    next_day: int
    quota: int
    figures: DayFigures
    reason: str
    message: str
    violations: tuple[str, ...] = ()

    def history_row(self) -> ipwarmup.DayRecord:
        """The status.history[] entry for this day."""
        return ipwarmup.DayRecord(
            day=self.day,
            quota=self.quota,
            sent=self.figures.sent,
            bounce_rate=round(self.figures.bounce_rate, 6),
            complaint_rate=round(self.figures.complaint_rate, 6),
            deferral_rate=round(self.figures.deferral_rate, 6),
            decision=self.action.value,
            reason=None if self.action is Action.ADVANCE else self.reason,
        )


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f} %"


def _summary(figures: DayFigures, quota: int) -> str:
    return (
        f"sent {figures.sent}/{quota}, delivered {figures.delivered}, "
        f"hard bounces {figures.hard_bounces} ({_pct(figures.bounce_rate)}), "
        f"complaints {figures.complaints} ({_pct(figures.complaint_rate)}), "
        f"deferrals {figures.deferrals} ({_pct(figures.deferral_rate)})"
    )


def _breaches(figures: DayFigures, safety: SafetyPolicy) -> list[tuple[str, str]]:
    """(reason, text) for every gate breached, most serious first."""
    checks = [
        ("ComplaintRateExceeded", "complaint rate", figures.complaint_rate,
         safety.max_complaint_rate),
        ("BounceRateExceeded", "bounce rate", figures.bounce_rate, safety.max_bounce_rate),
        ("DeferralRateExceeded", "deferral rate", figures.deferral_rate,
         safety.max_deferral_rate),
    ]  # fmt: skip
    return [
        (reason, f"{name} {_pct(rate)} above the maximum {_pct(limit)}")
        for reason, name, rate, limit in checks
        if rate > limit + _EPS
    ]


def evaluate_day(
    *,
    day: int,
    quota: int,
    target: int,
    figures: DayFigures,
    safety: SafetyPolicy,
    dnsbl_listed: tuple[str, ...] = (),
) -> Decision:
    """Judge the day that just ended (see the module docstring for the order of checks)."""
    if day < 1:
        raise ValueError(f"warm-up days start at 1, got {day}")
    summary = _summary(figures, quota)

    def decide(
        action: Action, next_day: int, reason: str, text: str, violations: tuple[str, ...] = ()
    ) -> Decision:
        return Decision(
            action=action,
            day=day,
            next_day=next_day,
            quota=quota,
            figures=figures,
            reason=reason,
            message=f"Day {day}: {text}; {summary}.",
            violations=violations,
        )

    if dnsbl_listed:
        zones = ", ".join(dnsbl_listed)
        return decide(Action.HOLD, day, "ListedOnDNSBL", f"holding, the IP is listed on {zones}")

    breaches = _breaches(figures, safety)
    if breaches:
        reason = breaches[0][0]
        texts = "; ".join(text for _, text in breaches)
        violations = tuple(r for r, _ in breaches)
        if safety.on_violation is OnViolation.ROLLBACK:
            back_to = max(1, day - max(0, safety.rollback_days))
            return decide(
                Action.ROLLBACK,
                back_to,
                reason,
                f"rolling back to day {back_to}, {texts}",
                violations,
            )
        if safety.on_violation is OnViolation.PAUSE:
            return decide(Action.PAUSE, day, reason, f"pausing, {texts}", violations)
        return decide(Action.HOLD, day, reason, f"holding, {texts}", violations)

    needed = math.ceil(quota * safety.min_volume_ratio - _EPS)
    if figures.sent < needed:
        return decide(
            Action.HOLD,
            day,
            "VolumeTooLow",
            f"holding, sent {figures.sent} but {needed} needed "
            f"({safety.min_volume_ratio:g} of the quota {quota}) to judge the day",
        )

    if quota >= target:
        return decide(
            Action.COMPLETE, day, "TargetReached", f"complete, the target {target} was sent cleanly"
        )
    return decide(Action.ADVANCE, day + 1, "GatesPassed", f"advancing to day {day + 1}")
