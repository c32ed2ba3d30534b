"""Warm-up schedules: the daily volume an IP may send on each day of its warm-up.

Pure (no I/O). Kept apart from the controller so the maths that decides how much mail a young
IP sends can be table-tested and previewed (`mailfleet warmup plan`) without a cluster.

Days are 1-based: day 1 is the first day of the warm-up. Every schedule is capped at `target`;
the first day whose quota reaches `target` is the last day of the warm-up.

- linear {start, increment}: start + (day - 1) * increment (the classic 500, +500 a day).
- exponential {start, factor}: floor(start * factor ** (day - 1)).
- steps [a, b, c, ...]: the n-th step on day n. Past the last step the quota stays at the last
  step (capped at target); a valid steps schedule ends at or above target, so that is the
  target and the warm-up is complete by then.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from mailfleet_operator.api import ipwarmup

MAX_WARMUP_DAYS = 365
"""A schedule that needs longer than this to reach its target is refused: it is a typo
(an increment of 5 instead of 500), not a plan anyone means to run for years."""

_FLOAT_SLACK = 1e-9
"""Relative slack before flooring, so 1000 * 1.1**3 = 1330.9999999 counts as 1331."""


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """start on day 1, then `increment` more every day."""

    start: int
    increment: int


@dataclasses.dataclass(frozen=True)
class ExponentialSchedule:
    """start on day 1, then multiplied by `factor` every day."""

    start: int
    factor: float


@dataclasses.dataclass(frozen=True)
class StepsSchedule:
    """An explicit volume per day: steps[0] on day 1, steps[1] on day 2, ..."""

    steps: tuple[int, ...]


Schedule = LinearSchedule | ExponentialSchedule | StepsSchedule


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason a spec can never work, with the path of the field to fix."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def schedule_from_spec(spec: ipwarmup.Schedule) -> Schedule:
    """The typed schedule of a validated spec (the model guarantees exactly one kind)."""
    if spec.linear is not None:
        return LinearSchedule(start=spec.linear.start, increment=spec.linear.increment)
    if spec.exponential is not None:
        return ExponentialSchedule(start=spec.exponential.start, factor=spec.exponential.factor)
    return StepsSchedule(steps=tuple(spec.steps or ()))


def validate_spec(spec: ipwarmup.IPWarmupSpec, *, prefix: str = "spec") -> list[Problem]:
    """What the schema cannot say: the schedule reaches its target, in a sane number of days."""
    return validate_schedule(
        schedule_from_spec(spec.schedule), spec.target, prefix=prefix
    ) + validate_provider_shares(shares_from_spec(spec.provider_shares), prefix=prefix)


def describe_schedule(schedule: Schedule) -> str:
    """A one-line human description, for the plan header and events."""
    if isinstance(schedule, LinearSchedule):
        return f"linear: start {schedule.start}, +{schedule.increment} a day"
    if isinstance(schedule, ExponentialSchedule):
        return f"exponential: start {schedule.start}, x{schedule.factor:g} a day"
    return "steps: " + ", ".join(str(step) for step in schedule.steps)


def start_of(schedule: Schedule) -> int:
    """The day-1 volume (0 for an empty steps list, which validation refuses)."""
    if isinstance(schedule, StepsSchedule):
        return schedule.steps[0] if schedule.steps else 0
    return schedule.start


def quota_for_day(schedule: Schedule, day: int, target: int) -> int:
    """The number of messages the IP may send on `day` (1-based), never above `target`."""
    if day < 1:
        raise ValueError(f"warm-up days start at 1, got {day}")
    if isinstance(schedule, LinearSchedule):
        raw = schedule.start + (day - 1) * schedule.increment
    elif isinstance(schedule, ExponentialSchedule):
        raw = _exponential(schedule, day=day, target=target)
    else:
        if not schedule.steps:
            raise ValueError("a steps schedule needs at least one step")
        raw = schedule.steps[min(day, len(schedule.steps)) - 1]
    return max(0, min(raw, target))


def _exponential(schedule: ExponentialSchedule, *, day: int, target: int) -> int:
    try:
        value = schedule.start * float(schedule.factor) ** (day - 1)
    except OverflowError:
        return target
    if not math.isfinite(value):
        return target if value > 0 else 0
    return math.floor(value * (1 + _FLOAT_SLACK))


def days_to_target(schedule: Schedule, target: int) -> int | None:
    """The first day whose quota reaches `target` (the warm-up's last day); None if never."""
    start = start_of(schedule)
    if start >= target:
        return 1
    if isinstance(schedule, LinearSchedule):
        if schedule.increment <= 0:
            return None
        return 1 + -(-(target - start) // schedule.increment)
    if isinstance(schedule, ExponentialSchedule):
        if schedule.factor <= 1 or start <= 0 or not math.isfinite(schedule.factor):
            return None
        # The logarithm gives a first guess; floating error may be one day off either way.
        guess = 1 + max(0, math.ceil(math.log(target / start, schedule.factor)))
        while guess > 1 and quota_for_day(schedule, guess - 1, target) >= target:
            guess -= 1
        while quota_for_day(schedule, guess, target) < target:
            guess += 1
        return guess
    for index, step in enumerate(schedule.steps):
        if step >= target:
            return index + 1
    return None


def plan_quotas(schedule: Schedule, target: int) -> list[int]:
    """Every day's quota, day 1 to the day the target is reached (schedule must be valid)."""
    last = days_to_target(schedule, target)
    if last is None:
        raise ValueError("the schedule never reaches its target")
    return [quota_for_day(schedule, day, target) for day in range(1, last + 1)]


def validate_schedule(schedule: Schedule, target: int, *, prefix: str = "spec") -> list[Problem]:
    """Every reason this schedule cannot warm an IP up to `target`; empty when it can."""
    problems: list[Problem] = []
    base = f"{prefix}.schedule"
    if target <= 0:
        problems.append(Problem(f"{prefix}.target", f"must be positive, got {target}"))
    if isinstance(schedule, LinearSchedule):
        path = f"{base}.linear"
        problems.extend(_check_start(schedule.start, f"{path}.start"))
        if schedule.increment <= 0 and 0 < schedule.start < target:
            problems.append(
                Problem(
                    f"{path}.increment",
                    f"must be positive: with an increment of {schedule.increment} the quota "
                    f"stays at {schedule.start} and never reaches the target {target}",
                )
            )
    elif isinstance(schedule, ExponentialSchedule):
        path = f"{base}.exponential"
        problems.extend(_check_start(schedule.start, f"{path}.start"))
        if not math.isfinite(schedule.factor):
            problems.append(Problem(f"{path}.factor", f"must be a number, got {schedule.factor}"))
        elif schedule.factor <= 1 and 0 < schedule.start < target:
            problems.append(
                Problem(
                    f"{path}.factor",
                    f"must be greater than 1: with a factor of {schedule.factor:g} the quota "
                    f"never grows from {schedule.start} to the target {target}",
                )
            )
    else:
        problems.extend(_check_steps(schedule.steps, target=target, path=f"{base}.steps"))
    start = start_of(schedule)
    if target > 0 and start > target:
        problems.append(
            Problem(
                f"{prefix}.target",
                f"{target} is below the schedule's first day ({start}): "
                "the target must be at least the starting volume",
            )
        )
    if not problems:
        days = days_to_target(schedule, target)
        if days is not None and days > MAX_WARMUP_DAYS:
            problems.append(
                Problem(
                    base,
                    f"takes {days} days to reach the target {target}, more than the "
                    f"{MAX_WARMUP_DAYS} allowed: raise the increment or factor",
                )
            )
    return problems


def _check_start(start: int, path: str) -> list[Problem]:
    if start <= 0:
        return [Problem(path, f"must be positive, got {start}")]
    return []


def _check_steps(steps: Sequence[int], *, target: int, path: str) -> list[Problem]:
    if not steps:
        return [Problem(path, "needs at least one step")]
    problems: list[Problem] = []
    for index, step in enumerate(steps):
        if step <= 0:
            problems.append(Problem(f"{path}[{index}]", f"must be positive, got {step}"))
        elif index and step < steps[index - 1]:
            problems.append(
                Problem(
                    f"{path}[{index}]",
                    f"{step} is below the step before it ({steps[index - 1]}): steps must not "
                    "decrease (a bad day is handled by the safety gates, not the schedule)",
                )
            )
    if steps[-1] < target:
        problems.append(
            Problem(
                path,
                f"the last step ({steps[-1]}) is below the target {target}, so the warm-up "
                "would never complete: add steps up to the target or lower the target",
            )
        )
    return problems


# --- per-provider shares -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProviderShare:
    """No more than `max_share` (0 to 1) of a day's quota to this mailbox provider.

    A share of 0 keeps the provider off the IP entirely while it warms up.
    """

    provider: str
    max_share: float


def shares_from_spec(shares: Iterable[ipwarmup.ProviderShare]) -> list[ProviderShare]:
    return [ProviderShare(provider=share.provider, max_share=share.max_share) for share in shares]


def provider_caps(quota: int, shares: Iterable[ProviderShare]) -> dict[str, int]:
    """The most each provider may receive from an IP in a day with this quota (rounded down)."""
    return {
        share.provider: math.floor(quota * share.max_share * (1 + _FLOAT_SLACK)) for share in shares
    }


def provider_shares(quota: int, shares: Mapping[str, float]) -> dict[str, int]:
    """`provider_caps` for a plain {provider: share} mapping (CLI flags, tests)."""
    return provider_caps(
        quota, [ProviderShare(provider=name, max_share=share) for name, share in shares.items()]
    )


def validate_provider_shares(
    shares: Sequence[ProviderShare], *, prefix: str = "spec"
) -> list[Problem]:
    """Shares must lie in [0, 1] and name each provider once."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, share in enumerate(shares):
        path = f"{prefix}.providerShares[{index}]"
        if not share.provider:
            problems.append(Problem(f"{path}.provider", "must not be empty"))
        elif share.provider in seen:
            problems.append(
                Problem(f"{path}.provider", f"{share.provider!r} appears more than once")
            )
        seen.add(share.provider)
        if not (0 <= share.max_share <= 1):
            problems.append(
                Problem(
                    f"{path}.maxShare",
                    f"must be a fraction from 0 to 1 (0.4 = 40 %), got {share.max_share:g}",
                )
            )
    return problems
