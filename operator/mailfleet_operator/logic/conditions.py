"""Status conditions with Kubernetes semantics, shared by every controller.

Pure (no I/O). `lastTransitionTime` moves only when `status` flips (API conventions), so a
reconcile that re-derives the same verdict writes an identical list and no status patch is
needed; `changed_conditions` tells the reconciler which flips deserve an event.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pydantic

from mailfleet_operator.api import common

READY = "Ready"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What one controller part concluded about one condition type, before timestamps."""

    type: str
    status: bool | None
    """True, False, or None for Unknown."""
    reason: str
    message: str = ""

    @property
    def status_text(self) -> common.ConditionStatus:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def parse_conditions(raw: Iterable[Mapping[str, Any]] | None) -> list[common.Condition]:
    """The conditions of a stored status; an entry that does not parse is dropped (someone
    else's hand edit must not stop the controller from writing its own verdicts)."""
    parsed = []
    for entry in raw or ():
        try:
            parsed.append(common.Condition.model_validate(entry))
        except pydantic.ValidationError:
            continue
    return parsed


def set_conditions(
    existing: Sequence[common.Condition],
    verdicts: Iterable[Verdict],
    *,
    now: datetime.datetime,
    observed_generation: int | None,
) -> list[common.Condition]:
    """Merge verdicts into the condition list, keeping unknown types and their order."""
    by_type = {c.type: c for c in existing}
    order = [c.type for c in existing]
    for verdict in verdicts:
        old = by_type.get(verdict.type)
        flipped = old is None or old.status != verdict.status_text
        by_type[verdict.type] = common.Condition(
            type=verdict.type,
            status=verdict.status_text,
            reason=verdict.reason,
            message=verdict.message,
            last_transition_time=now if flipped or old is None else old.last_transition_time,
            observed_generation=observed_generation,
        )
        if verdict.type not in order:
            order.append(verdict.type)
    return [by_type[t] for t in order]


def ready_verdict(
    verdicts: Sequence[Verdict], *, ready_reason: str = "AllChecksPassed"
) -> Verdict:
    """`Ready` is true when every given verdict is; otherwise it names the first that is not."""
    failing = [v for v in verdicts if v.status is not True]
    if not failing:
        return Verdict(type=READY, status=True, reason=ready_reason, message="")
    first = failing[0]
    names = ", ".join(v.type for v in failing)
    unknown = all(v.status is None for v in failing)
    return Verdict(
        type=READY,
        status=None if unknown else False,
        reason=first.reason,
        message=f"not ready: {names}" + (f" ({first.message})" if first.message else ""),
    )


@dataclasses.dataclass(frozen=True)
class ConditionChange:
    type: str
    old_status: str | None
    new: common.Condition

    @property
    def worsened(self) -> bool:
        return self.new.status != "True"


def changed_conditions(
    old: Sequence[common.Condition], new: Sequence[common.Condition]
) -> list[ConditionChange]:
    """Conditions whose status or reason differ (a new reason is news even without a flip)."""
    before = {c.type: c for c in old}
    changes = []
    for condition in new:
        previous = before.get(condition.type)
        if (
            previous is None
            or previous.status != condition.status
            or previous.reason != condition.reason
        ):
            changes.append(
                ConditionChange(
                    type=condition.type,
                    old_status=previous.status if previous else None,
                    new=condition,
                )
            )
    return changes
