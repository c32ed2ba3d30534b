"""IPWarmup (`ipw`): raising new IPs' daily volume safely, day by day (DESIGN.md §2).

Pure (no I/O). The schedule is exactly one of `linear`, `exponential` or `steps`; day 1 is the
first day. Days advance on time only while the previous day's feedback passed the `safety`
gates; the schedule maths lives in the logic layer, these models only describe it.
"""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import Field

from mailfleet_operator.api import common
from mailfleet_operator.api.common import (
    Conditions,
    DNSLabel,
    IPAddress,
    LocalObjectReference,
    Rule,
    SpecModel,
    StatusModel,
)

KIND = "IPWarmup"
PLURAL = "ipwarmups"
SINGULAR = "ipwarmup"
SHORT_NAMES = ("ipw",)

Phase = Literal["Pending", "WarmingUp", "Held", "RolledBack", "Paused", "Completed"]
OnViolation = Literal["Hold", "Rollback", "Pause"]
Decision = Literal["Advance", "Hold", "Rollback", "Pause", "Complete"]

READY = "Ready"
PROGRESSING = "Progressing"
HELD = "Held"
COMPLETED = "Completed"
CONDITION_TYPES = (READY, PROGRESSING, HELD, COMPLETED)

TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
MAX_STEPS = 365


def _known_timezone(name: str) -> bool:
    if name == "Local":  # Go's name for the server's own zone, not an IANA name
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


# CEL has no "is this a zone" test, but a timestamp function given an unknown zone fails, and
# kube-apiserver then refuses the object with "unknown time zone X evaluating rule: <message>".
TIMEZONE_RULE = Rule(
    cel="self != 'Local' && timestamp('2000-01-01T00:00:00Z').getFullYear(self) > 0",
    message="unknown time zone: expected an IANA name like UTC or Europe/Paris",
    holds=_known_timezone,
)


class LinearSchedule(SpecModel):
    """Day n allows start + (n - 1) * increment messages (the classic 500, 1000, 1500...)."""

    start: int = Field(ge=1, description="Messages allowed on day 1.")
    increment: int = Field(ge=1, description="Messages added each following day.")


class ExponentialSchedule(SpecModel):
    """Day n allows start * factor^(n - 1) messages, rounded down."""

    start: int = Field(ge=1, description="Messages allowed on day 1.")
    factor: float = Field(gt=1, le=10, description="Growth factor per day, e.g. 1.5.")


class Schedule(SpecModel):
    """How the daily quota grows; set exactly one of linear, exponential or steps."""

    linear: LinearSchedule | None = Field(default=None, description="Add a fixed amount per day.")
    exponential: ExponentialSchedule | None = Field(
        default=None, description="Multiply by a fixed factor per day."
    )
    steps: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_STEPS,
        description=(
            "Explicit daily quotas: day n allows steps[n-1]; the last step must reach the "
            "target (a list that ends below it is refused by the operator)."
        ),
    )

    rules = (
        Rule(
            cel="[has(self.linear), has(self.exponential), has(self.steps)]"
            ".filter(set, set).size() == 1",
            message="set exactly one of schedule.linear, schedule.exponential or schedule.steps",
            holds=lambda s: [s.linear, s.exponential, s.steps].count(None) == 2,
        ),
        Rule(
            cel="!has(self.steps) || self.steps.isSorted()",
            message="schedule.steps must not decrease",
            holds=lambda s: s.steps is None or s.steps == sorted(s.steps),
        ),
    )


class ProviderShare(SpecModel):
    """Caps the part of an IP's daily quota one provider may take."""

    provider: DNSLabel = Field(
        description="Provider name as in the pool's throttling table, e.g. gmail."
    )
    max_share: float = Field(
        ge=0, le=1, description="Largest fraction of the daily quota sent to this provider."
    )


class Safety(SpecModel):
    """Gates checked at the end of each day; a day advances only when all pass."""

    max_bounce_rate: float = Field(
        default=0.05, ge=0, le=1, description="Highest bounce rate of the day, 0 to 1."
    )
    max_complaint_rate: float = Field(
        default=0.001, ge=0, le=1, description="Highest complaint rate of the day, 0 to 1."
    )
    max_deferral_rate: float = Field(
        default=0.2, ge=0, le=1, description="Highest deferral (4xx) rate of the day, 0 to 1."
    )
    min_volume_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description=(
            "Fraction of the day's quota that must have been sent for the day to count; a "
            "quieter day repeats at the same quota instead of advancing."
        ),
    )
    on_violation: OnViolation = Field(
        default="Hold",
        description=(
            "What a failed safety gate does: Hold repeats the day's quota, Rollback goes "
            "back rollbackDays, Pause stops warm-up traffic until resumed. A DNSBL listing "
            "of the IP always holds."
        ),
    )
    rollback_days: int = Field(
        default=1, ge=1, description="Days to go back on a violation when onViolation is Rollback."
    )


def _first_quota(schedule: Schedule) -> int:
    if schedule.linear:
        return schedule.linear.start
    if schedule.exponential:
        return schedule.exponential.start
    return (schedule.steps or [0])[0]


class IPWarmupSpec(SpecModel):
    """Desired warm-up of some or all IPs of one SendingPool."""

    rules = (
        Rule(
            cel=(
                "(has(self.schedule.linear) ? self.schedule.linear.start : "
                "has(self.schedule.exponential) ? self.schedule.exponential.start : "
                "has(self.schedule.steps) ? self.schedule.steps[0] : 0) <= self.target"
            ),
            message="the schedule starts above the target: day 1's quota must not exceed target",
            holds=lambda spec: _first_quota(spec.schedule) <= spec.target,
        ),
    )

    pool_ref: LocalObjectReference = Field(
        description="The SendingPool (same namespace) whose IPs are warmed up."
    )
    addresses: Annotated[list[IPAddress], common.unique_by("address")] = Field(
        default_factory=list,
        description="IPs to warm up; every IP of the pool not yet warm when empty.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    schedule: Schedule = Field(description="How the daily quota grows.")
    target: int = Field(
        ge=1, description="Daily volume at which the warm-up is complete, e.g. 100000."
    )
    provider_shares: Annotated[
        list[ProviderShare], common.unique_by("provider", lambda s: s.provider)
    ] = Field(
        default_factory=list,
        description="Optional per-provider caps on the share of the daily quota.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["provider"],
        },
    )
    timezone: Annotated[str, TIMEZONE_RULE] = Field(
        default="UTC",
        pattern=TIMEZONE_PATTERN,
        max_length=64,
        description="IANA time zone whose midnight starts a new day, e.g. Europe/Paris.",
    )
    safety: Safety = Field(default_factory=Safety, description="End-of-day gates.")
    paused: bool = Field(
        default=False,
        description="Stop advancing and send nothing from the warming IPs while true.",
    )


# --- status -------------------------------------------------------------------------------------


class DayRecord(StatusModel):
    """One finished day and what was decided at its end."""

    day: int = Field(ge=1, description="Day number (1 is the first day).")
    quota: int = Field(ge=0, description="Daily quota that applied.")
    sent: int = Field(ge=0, description="Messages sent.")
    bounce_rate: float = Field(default=0, ge=0, le=1, description="Bounce rate of the day.")
    complaint_rate: float = Field(default=0, ge=0, le=1, description="Complaint rate of the day.")
    deferral_rate: float = Field(default=0, ge=0, le=1, description="Deferral rate of the day.")
    decision: Decision = Field(
        description="Advance, Hold, Rollback, Pause or Complete, taken at the end of the day."
    )
    reason: str | None = Field(default=None, description="Why, when not Advance.")


class PodDayUsage(StatusModel):
    """What one pod reported sending from an IP on one sender quota day (persisted so an
    operator restart neither forgets it in the quota nor judges the day without it)."""

    day: int = Field(description="The senders' quota day (index, as in the pods' /v1/stats).")
    pod: str = Field(description="The pod that sent.")
    sent: int = Field(default=0, ge=0, description="Messages sent (reserved) that day.")
    delivered: int = Field(default=0, ge=0, description="Messages delivered.")
    hard_bounces: int = Field(default=0, ge=0, description="Hard bounces.")
    complaints: int = Field(default=0, ge=0, description="Complaints.")
    deferrals: int = Field(default=0, ge=0, description="Deferrals (4xx).")


class IPProgress(StatusModel):
    """Warm-up progress of one IP."""

    address: str = Field(description="The IP address.")
    day: int = Field(default=0, ge=0, description="Current day of this IP (0 before it starts).")
    daily_quota: int = Field(default=0, ge=0, description="Today's quota of this IP.")
    sent_today: int = Field(default=0, ge=0, description="Messages sent from this IP today.")
    usage: list[PodDayUsage] = Field(
        default_factory=list,
        description=(
            "Per pod and sender day (today's and the day before), the highest figures the pods "
            "reported; seeds the quota accounting and the day's judgement after a restart."
        ),
    )


class IPWarmupStatus(StatusModel):
    """Observed state of an IPWarmup."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status was computed from."
    )
    conditions: Conditions = Field(
        default_factory=list,
        description="Ready is True once the warm-up is Completed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: Phase = Field(
        default="Pending",
        description="Pending, WarmingUp, Held, RolledBack, Paused or Completed.",
    )
    day: int = Field(default=0, ge=0, description="Current day (1 is the first; 0 before start).")
    daily_quota: int = Field(default=0, ge=0, description="Messages allowed per IP today.")
    sent_today: int = Field(default=0, ge=0, description="Messages sent today over the IPs.")
    next_advance_at: datetime.datetime | None = Field(
        default=None, description="When the current day ends and the gates are evaluated."
    )
    started_at: datetime.datetime | None = Field(default=None, description="When day 1 began.")
    history: list[DayRecord] = Field(
        default_factory=list, description="Finished days, oldest first."
    )
    ips: list[IPProgress] = Field(
        default_factory=list,
        description="Per-IP progress when IPs started on different days.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["address"],
        },
    )


class IPWarmup(SpecModel):
    """The warm-up of new egress IPs of a SendingPool, with feedback-gated daily quotas."""

    api_version: Literal["mailfleet.io/v1alpha1"] = Field(
        default="mailfleet.io/v1alpha1", description="mailfleet.io/v1alpha1"
    )
    kind: Literal["IPWarmup"] = Field(default="IPWarmup", description="IPWarmup")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: IPWarmupSpec = Field(description="Desired warm-up.")
    status: IPWarmupStatus | None = Field(default=None, description="Observed progress.")
