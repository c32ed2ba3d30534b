"""The rules of leader election over a coordination.k8s.io/v1 Lease, as client-go's
leaderelection applies them. Pure: no I/O; times are passed in.

Expiry is judged only by OUR monotonic clock: a Lease held by someone else is taken over once it
has not changed (same holder, renewTime and resourceVersion) for its leaseDurationSeconds since
WE first saw it that way. The other writer's renewTime is never compared with our wall clock,
so a writer whose clock is skewed (or a renewTime far in the past) cannot make us take over
early; it can only make us wait longer.

A leader counts itself leader only while its last successful renewal was sent less than the
renew deadline ago (by the monotonic clock, measured from before the request left, since the
write may land any time after that). With renew deadline < lease duration, it stops before any
other replica may take over: another replica waits a full lease duration from when it saw our
last write, which is after we sent it.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class ElectionSettings:
    """Seconds; controller-runtime's defaults are 15 / 10 / 2."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period} / {self.renew_deadline} / {self.lease_duration}"
            )


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """What a Lease object says, as far as the election reads it."""

    holder: str
    lease_duration_seconds: int | None
    acquire_time: str | None
    renew_time: str | None
    lease_transitions: int
    resource_version: str | None


@dataclasses.dataclass(frozen=True)
class Observation:
    """The Lease as we last saw it, and the monotonic time we first saw it that way."""

    holder: str
    renew_time: str | None
    resource_version: str | None
    observed_at: float


class Action(enum.Enum):
    ACQUIRE = "Acquire"
    RENEW = "Renew"
    WAIT = "Wait"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    """CamelCase: LeaseAbsent, LeaseReleased, LeaseExpired, Holding, HeldByOther."""
    wait: float = 0.0
    """For WAIT: seconds (our clock) until the Lease would count as expired, if unchanged."""


def read_lease(lease: Mapping[str, Any] | None) -> LeaseRecord | None:
    """The election's view of a Lease object (None when absent)."""
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_duration_seconds=int(duration) if duration is not None else None,
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
        lease_transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=(lease.get("metadata") or {}).get("resourceVersion"),
    )


def observe(
    previous: Observation | None, current: LeaseRecord | None, *, now: float
) -> Observation | None:
    """Our observation after reading `current` at monotonic `now`: unchanged Lease keeps the
    time we first saw it; any change (holder, renewTime, resourceVersion) restarts the count."""
    if current is None:
        return None
    if previous is not None and (
        previous.holder, previous.renew_time, previous.resource_version
    ) == (current.holder, current.renew_time, current.resource_version):
        return previous
    return Observation(
        holder=current.holder,
        renew_time=current.renew_time,
        resource_version=current.resource_version,
        observed_at=now,
    )


def decide(
    *,
    lease: LeaseRecord | None,
    identity: str,
    observation: Observation | None,
    now: float,
    settings: ElectionSettings,
) -> Decision:
    """Acquire, renew or wait, given the Lease just read and our observation of it.

    The duration waited is the longer of the Lease's own leaseDurationSeconds and ours: a
    holder configured with a longer lease is not cut short by a replica with a shorter one.
    """
    if lease is None:
        return Decision(Action.ACQUIRE, "LeaseAbsent")
    if lease.holder == identity:
        return Decision(Action.RENEW, "Holding")
    if not lease.holder:
        return Decision(Action.ACQUIRE, "LeaseReleased")
    duration = max(float(lease.lease_duration_seconds or 0), settings.lease_duration)
    if observation is None or (
        observation.holder, observation.renew_time, observation.resource_version
    ) != (lease.holder, lease.renew_time, lease.resource_version):
        # Not observed as it is now: its lease starts counting from now.
        return Decision(Action.WAIT, "HeldByOther", wait=duration)
    elapsed = now - observation.observed_at
    if elapsed >= duration:
        return Decision(Action.ACQUIRE, "LeaseExpired")
    return Decision(Action.WAIT, "HeldByOther", wait=duration - elapsed)


def is_leading(*, last_renew: float | None, now: float, renew_deadline: float) -> bool:
    """Leader only while the last successful renewal was sent less than the deadline ago."""
    return last_renew is not None and now - last_renew < renew_deadline


def format_micro_time(moment: datetime.datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds (2026-12-04T18:00:00.123456Z)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_lease_spec(
    *,
    current: LeaseRecord | None,
    identity: str,
    settings: ElectionSettings,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The spec to write to acquire or renew: a holder change sets acquireTime and increments
    leaseTransitions (the fencing epoch); a renewal only moves renewTime."""
    stamp = format_micro_time(now)
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": math.ceil(settings.lease_duration),
        "renewTime": stamp,
    }
    if current is not None and current.holder == identity:
        spec["acquireTime"] = current.acquire_time or stamp
        spec["leaseTransitions"] = current.lease_transitions
    else:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = (
            current.lease_transitions + 1 if current is not None else 0
        )
    return spec


def build_lease(
    *, name: str, namespace: str, spec: Mapping[str, Any], resource_version: str | None
) -> dict[str, Any]:
    """The Lease body to write; with `resource_version` the write is conditional on it (the API
    server answers 409 when the Lease changed since we read it)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {"metadata": metadata, "spec": dict(spec)}
