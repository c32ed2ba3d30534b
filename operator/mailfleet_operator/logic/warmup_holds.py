"""What quota an IPWarmup imposes on its pool's IPs, read from the stored object even when it
no longer validates (pure: no I/O).

Fail closed: a warm-up whose spec (or status) fails validation keeps its IPs at the last quota
it published (`status.ips[].dailyQuota`, else `status.dailyQuota`), and at 0 when it never
published one. A typo must never lift a warm-up's limit. Only a Completed warm-up, or a valid
one that has not started (it waits for its pool, or another warm-up holds its IPs), leaves its
IPs to others.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from mailfleet_operator.api import ipwarmup as ipw

REFUSED = frozenset({"InvalidSpec", "TimezoneConflict"})
"""Ready reasons of a spec the controller refused: its IPs are held like an invalid one's."""


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _or_zero(quota: int | None, group: int | None) -> int:
    if quota is not None:
        return quota
    return group or 0


def pool_of(raw: Mapping[str, Any]) -> str:
    """`spec.poolRef.name`, read leniently ("" when missing or malformed)."""
    name = _mapping(_mapping(raw.get("spec")).get("poolRef")).get("name")
    return name if isinstance(name, str) else ""


def is_valid(raw: Mapping[str, Any]) -> bool:
    """The object validates, and the controller did not refuse its spec (`REFUSED`: the
    checks beyond the schema, such as a schedule too long, or a timezone other than the one
    the pool's senders already follow)."""
    try:
        ipw.IPWarmup.model_validate(raw)
    except ValidationError:
        return False
    for entry in _mapping(raw.get("status")).get("conditions") or []:
        if isinstance(entry, Mapping) and entry.get("type") == ipw.READY:
            return entry.get("reason") not in REFUSED
    return True


def imposed_quotas(raw: Mapping[str, Any]) -> dict[str, int | None]:
    """address -> the daily quota this IPWarmup imposes (None: no limit from it)."""
    status = _mapping(raw.get("status"))
    if status.get("phase") == "Completed":
        return {}
    ips = [entry for entry in status.get("ips") or [] if isinstance(entry, Mapping)]
    started = bool(ips) or (_int(status.get("day")) or 0) >= 1
    valid = is_valid(raw)
    if valid and not started:
        return {}  # waits for its pool or for another warm-up: it limits nothing yet
    group = _int(status.get("dailyQuota")) if started else None
    per_ip: dict[str, int | None] = {}
    for entry in ips:
        address = entry.get("address")
        if isinstance(address, str) and address:
            quota = _int(entry.get("dailyQuota"))
            per_ip[address] = quota if quota is not None else group
    spec_addresses = _mapping(raw.get("spec")).get("addresses")
    named = (
        [a for a in spec_addresses if isinstance(a, str)]
        if isinstance(spec_addresses, list)
        else []
    )
    if valid:
        # A valid running warm-up limits the IPs its spec names, or those it started with.
        return {a: _or_zero(per_ip.get(a), group) for a in (named or list(per_ip))}
    return {a: _or_zero(per_ip.get(a), group) for a in dict.fromkeys([*named, *per_ip])}


def merge_quotas(found: Iterable[Mapping[str, int | None]]) -> dict[str, int | None]:
    """Several warm-ups naming one IP (a conflict, a broken one): the smallest quota wins."""
    merged: dict[str, int | None] = {}
    for quotas in found:
        for address, quota in quotas.items():
            if quota is None:
                continue
            known = merged.get(address)
            merged[address] = quota if known is None else min(known, quota)
    return merged


def hold_message(quotas: Mapping[str, int | None]) -> str:
    """How the IPs of a warm-up that cannot run are held (for its Ready condition)."""
    held = {a: q for a, q in quotas.items() if q is not None}
    if not held:
        return "its IPs get no warm-up quota until it is fixed"
    described = ", ".join(f"{a} at {q}/day" for a, q in sorted(held.items()))
    return f"its IPs are held at their last quota until it is fixed ({described})"


Recorded = dict[str, dict[int, dict[str, int]]]
"""address -> sender day -> pod -> the highest `sentToday` the warm-up controller saw."""


def recorded_usage(found: Iterable[Mapping[str, Any]]) -> Recorded:
    """What the pool's warm-ups persisted of their IPs' sends (`status.ips[].usage`), read
    leniently: after an operator restart it seeds the quota accounting (`usage_book`)."""
    recorded: Recorded = {}
    for raw in found:
        status = _mapping(raw.get("status"))
        if status.get("phase") == "Completed":
            continue
        for entry in status.get("ips") or []:
            address = _mapping(entry).get("address")
            if not isinstance(address, str):
                continue
            for usage in _mapping(entry).get("usage") or []:
                usage = _mapping(usage)
                day, pod, sent = _int(usage.get("day")), usage.get("pod"), _int(usage.get("sent"))
                if day is None or not isinstance(pod, str) or sent is None:
                    continue
                pods = recorded.setdefault(address, {}).setdefault(day, {})
                pods[pod] = max(pods.get(pod, 0), sent)
    return recorded


def timezone_of(raw: Mapping[str, Any]) -> str:
    """`spec.timezone` when it names a known zone, else UTC (the default)."""
    name = _mapping(raw.get("spec")).get("timezone")
    if not isinstance(name, str) or not name:
        return "UTC"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return name


def _created(raw: Mapping[str, Any]) -> tuple[str, str]:
    meta = _mapping(raw.get("metadata"))
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def pool_timezone(found: Iterable[Mapping[str, Any]]) -> str:
    """The zone whose midnight starts the pool's senders' quota day: the oldest unfinished
    warm-up's (a pool's senders count one day; a later warm-up in another zone is refused
    with a condition, `zone_conflict`). UTC when nothing warms up."""
    running = sorted(
        (raw for raw in found if _mapping(raw.get("status")).get("phase") != "Completed"),
        key=_created,
    )
    return timezone_of(running[0]) if running else "UTC"


def zone_conflict(
    me: Mapping[str, Any], others: Iterable[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The older unfinished warm-up of the same pool whose timezone differs from `me`'s (the
    pool's senders follow it), or None."""
    mine = _created(me)
    older = [
        raw
        for raw in others
        if pool_of(raw) == pool_of(me)
        and _mapping(raw.get("status")).get("phase") != "Completed"
        and _created(raw) < mine
    ]
    if not older:
        return None
    first = min(older, key=_created)
    return first if timezone_of(first) != timezone_of(me) else None
