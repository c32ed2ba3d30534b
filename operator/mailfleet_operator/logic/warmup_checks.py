"""Why an IPWarmup cannot run: its spec, its pool, its addresses and the other warm-ups of
the namespace, checked in the order a user should fix them (pure: no I/O).

The controller fetches the pool and lists the other warm-ups between these checks (only when
the previous ones passed), so a warm-up with a bad spec costs no API call. Each problem is a
Ready reason (`PROBLEM_REASONS`): the cycle holds the generation it cannot act on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from mailfleet_operator.api import ipwarmup as ipw
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import schedules, warmup_clock, warmup_holds, warmup_progress

PROBLEM_REASONS = frozenset(
    {
        "InvalidSpec",
        "PoolNotFound",
        "PoolInvalid",
        "AddressNotInPool",
        "NoAddresses",
        "ConflictingWarmup",
        "TimezoneConflict",
    }
)
"""Ready reasons of a warm-up that cannot run: an error event, and no observedGeneration."""


@dataclasses.dataclass(frozen=True)
class Pool:
    """The warm-up's SendingPool as far as the controller needs it."""

    spec: sp.SendingPoolSpec
    listed: dict[str, tuple[str, ...]]
    """address -> the DNSBLs the pool's status lists it on (a gate of the day's verdict)."""


def check_spec(spec: ipw.IPWarmupSpec) -> warmup_progress.Problem | None:
    """The checks beyond the schema: the schedule, and a timezone this host knows."""
    found = schedules.validate_spec(spec) + warmup_clock.validate_timezone(spec.timezone)
    if found:
        return warmup_progress.Problem("InvalidSpec", "; ".join(str(p) for p in found))
    return None


def check_pool(
    spec: ipw.IPWarmupSpec, raw_pool: Mapping[str, Any] | None, namespace: str
) -> tuple[warmup_progress.Problem | None, Pool | None]:
    """The pool exists, validates, and owns every address the spec names. The pool comes
    back with a problem too once it validates (its DNSBL listings still matter)."""
    pool_name = spec.pool_ref.name
    if raw_pool is None:
        return (
            warmup_progress.Problem(
                "PoolNotFound",
                f"spec.poolRef: SendingPool {pool_name!r} does not exist in namespace "
                f"{namespace}; the warm-up waits for it",
            ),
            None,
        )
    try:
        pool_spec = sp.SendingPoolSpec.model_validate(raw_pool.get("spec") or {})
    except ValidationError:
        return (
            warmup_progress.Problem(
                "PoolInvalid", f"SendingPool {pool_name!r} has an invalid spec"
            ),
            None,
        )
    listed = {
        entry["address"]: tuple(entry.get("listedOn") or ())
        for entry in (raw_pool.get("status") or {}).get("ips") or []
        if entry.get("address")
    }
    pool = Pool(spec=pool_spec, listed=listed)
    pool_ips = pool_addresses(pool)
    strangers = [a for a in spec.addresses if a not in pool_ips]
    if strangers:
        return (
            warmup_progress.Problem(
                "AddressNotInPool",
                f"spec.addresses: {', '.join(strangers)} "
                f"{'is not an egress IP' if len(strangers) == 1 else 'are not egress IPs'} "
                f"of SendingPool {pool_name!r} (its IPs: {', '.join(pool_ips) or 'none'})",
            ),
            pool,
        )
    return None, pool


def pool_addresses(pool: Pool) -> list[str]:
    return [ip.address for ip in pool.spec.egress.ips]


def pick_addresses(
    spec: ipw.IPWarmupSpec,
    old: ipw.IPWarmupStatus,
    pool: Pool,
    others: Sequence[Mapping[str, Any]],
) -> list[str]:
    """The spec's addresses; else those fixed when the warm-up started; else the pool's IPs
    that no completed warm-up of the pool has warmed already."""
    if spec.addresses:
        return list(spec.addresses)
    if old.ips:
        return [p.address for p in old.ips]
    pool_name = spec.pool_ref.name
    warm = set().union(
        *(_claimed(o) for o in others if _finished(o) and _pool_of(o) == pool_name)
    )
    return [a for a in pool_addresses(pool) if a not in warm]


def check_siblings(
    body: Mapping[str, Any],
    spec: ipw.IPWarmupSpec,
    addresses: Sequence[str],
    others: Sequence[Mapping[str, Any]],
) -> warmup_progress.Problem | None:
    """Something to warm, in the zone the pool's senders already count days in, and no IP
    that an older unfinished warm-up of the same pool holds."""
    pool_name = spec.pool_ref.name
    if not addresses:
        return warmup_progress.Problem(
            "NoAddresses", f"SendingPool {pool_name!r} has no IP left to warm up"
        )
    older = warmup_holds.zone_conflict(body, others)
    if older is not None:
        return warmup_progress.Problem(
            "TimezoneConflict",
            f"spec.timezone: {spec.timezone} differs from "
            f"{warmup_holds.timezone_of(older)} of IPWarmup "
            f"{older['metadata']['name']!r} on the same pool: the pool's senders count "
            "one quota day, in the older warm-up's zone; use the same timezone",
        )
    mine = _created(body)
    for other in sorted(others, key=_created):
        shared = sorted(_claimed(other) & set(addresses))
        same_pool = _pool_of(other) == pool_name
        if shared and same_pool and not _finished(other) and _created(other) < mine:
            return warmup_progress.Problem(
                "ConflictingWarmup",
                f"{', '.join(shared)} already warmed up by IPWarmup "
                f"{other['metadata']['name']!r}: an IP follows one warm-up at a time; "
                "delete one of them or remove the address",
            )
    return None


def explain_hold(
    problem: warmup_progress.Problem, body: Mapping[str, Any], old_status: Mapping[str, Any]
) -> warmup_progress.Problem:
    """A refused spec (`warmup_holds.REFUSED`) fails closed: the pool holds the IPs at the
    last published quota (0 if none), and the Ready message says at which."""
    if problem.reason not in warmup_holds.REFUSED:
        return problem
    refused = {"type": ipw.READY, "reason": problem.reason}
    held = warmup_holds.imposed_quotas(
        {**body, "status": {**old_status, "conditions": [refused]}}
    )
    return warmup_progress.Problem(
        problem.reason, f"{problem.message}; {warmup_holds.hold_message(held)}"
    )


def _created(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def _claimed(obj: Mapping[str, Any]) -> set[str]:
    """The IPs another IPWarmup warms: its spec's, or the pool IPs it picked when it started."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return set(spec.get("addresses") or []) or {
        entry.get("address", "") for entry in status.get("ips") or []
    }


def _pool_of(obj: Mapping[str, Any]) -> str:
    return str(((obj.get("spec") or {}).get("poolRef") or {}).get("name") or "")


def _finished(obj: Mapping[str, Any]) -> bool:
    return ((obj.get("status") or {}).get("phase")) == "Completed"
