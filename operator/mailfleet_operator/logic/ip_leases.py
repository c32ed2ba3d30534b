"""Egress-IP leases as Kubernetes `coordination.k8s.io/v1` Leases (pure: no I/O).

The truth of "who may send from this IP" is one Lease per IP in the pool's namespace:
`holderIdentity` is `<pod>/<pod uid>` (absent once the holder released it),
`leaseDurationSeconds` how long a holder may keep sending after the last renewal was sent
(the pod's TTL plus the longest a request may take to arrive), and `leaseTransitions` the
fencing epoch: it grows with every grant, and a pod refuses a grant older than one it has
seen. The operator writes a Lease only with a resourceVersion precondition, so two writers
never both succeed.

Nobody compares another writer's `renewTime` with their own wall clock: a reader that did
not write the current version waits `leaseDurationSeconds` plus the skew allowance from the
moment *it* first saw that version (on its monotonic clock), as client-go's leader election
does. So clock skew and NTP steps on any machine never shorten a wait.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
NAME_PREFIX = "mailfleet-ip-"
POOL_LABEL = "mailfleet.io/pool"
ADDRESS_ANNOTATION = "mailfleet.io/egress-ip"
MANAGED_BY = {"app.kubernetes.io/managed-by": "mailfleet-operator"}


def lease_name(address: str) -> str:
    """`mailfleet-ip-192.0.2.10`, `mailfleet-ip-2001-0db8-...-0001` (a DNS subdomain)."""
    ip = ipaddress.ip_address(address)
    text = ip.exploded.replace(":", "-") if ip.version == 6 else str(ip)
    return NAME_PREFIX + text


def holder_identity(pod: str, uid: str) -> str:
    return f"{pod}/{uid}"


def parse_holder(identity: str | None) -> tuple[str, str] | None:
    if not identity or "/" not in identity:
        return None
    pod, _, uid = identity.partition("/")
    return pod, uid


@dataclasses.dataclass(frozen=True)
class IPLease:
    """What a Lease object says, read back."""

    address: str
    pool: str | None
    holder: tuple[str, str] | None  # (pod, uid)
    duration: float
    epoch: int
    resource_version: str


def read_lease(obj: Mapping[str, Any]) -> IPLease | None:
    """Parse a Lease the operator wrote; None for anything else (not ours, or mangled)."""
    meta = obj.get("metadata") or {}
    address = (meta.get("annotations") or {}).get(ADDRESS_ANNOTATION)
    if not address:
        return None
    try:
        if lease_name(address) != meta.get("name"):
            return None
    except ValueError:
        return None
    spec = obj.get("spec") or {}
    try:
        duration = float(spec.get("leaseDurationSeconds") or 0)
        epoch = int(spec.get("leaseTransitions") or 0)
    except (TypeError, ValueError):
        return None
    return IPLease(
        address=address,
        pool=(meta.get("labels") or {}).get(POOL_LABEL),
        holder=parse_holder(spec.get("holderIdentity")),
        duration=duration,
        epoch=epoch,
        resource_version=str(meta.get("resourceVersion") or ""),
    )


def micro_time(moment: datetime) -> str:
    """A MicroTime as the API server wants it: RFC 3339 with microseconds, in UTC."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_duration_seconds(ttl: float, request_timeout: float) -> int:
    """How long a holder may send after a renewal was sent: its TTL counts from receipt,
    which is at most a request timeout later."""
    return max(1, math.ceil(ttl + request_timeout))


def build_lease(
    *,
    address: str,
    namespace: str,
    pool: str,
    holder: tuple[str, str] | None,
    duration: int,
    epoch: int,
    now: datetime,
    acquired: datetime | None,
    resource_version: str | None,
) -> dict[str, Any]:
    """The full Lease to create or replace (with `resource_version` as the precondition)."""
    metadata: dict[str, Any] = {
        "name": lease_name(address),
        "namespace": namespace,
        "labels": {POOL_LABEL: pool, **MANAGED_BY},
        "annotations": {ADDRESS_ANNOTATION: address},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    spec: dict[str, Any] = {"leaseDurationSeconds": duration, "leaseTransitions": epoch}
    if holder is not None:
        spec["holderIdentity"] = holder_identity(*holder)
        spec["renewTime"] = micro_time(now)
        spec["acquireTime"] = micro_time(acquired or now)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


@dataclasses.dataclass(frozen=True)
class Observation:
    """When this process first saw a Lease version it did not write (monotonic seconds)."""

    resource_version: str
    seen_at: float


def wait_deadline(lease: IPLease, observation: Observation, *, skew: float) -> float:
    """Until when (monotonic) the holder of a Lease we did not write may still send."""
    return observation.seen_at + lease.duration + skew


def ip_owners(pools: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """address -> (namespace, name) of the pool that owns it: the oldest pool naming it
    (ties by namespace/name). A later pool naming the same IP does not get it."""
    owners: dict[str, tuple[str, str, str]] = {}
    for pool in pools:
        meta = pool.get("metadata") or {}
        key = (
            str(meta.get("creationTimestamp") or ""),
            meta.get("namespace") or "default",
            meta.get("name") or "",
        )
        for ip in ((pool.get("spec") or {}).get("egress") or {}).get("ips") or []:
            address = ip.get("address") if isinstance(ip, Mapping) else None
            if not isinstance(address, str):
                continue
            if address not in owners or key < owners[address]:
                owners[address] = key
    return {address: (ns, name) for address, (_, ns, name) in owners.items()}
