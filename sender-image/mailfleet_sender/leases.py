"""Source-IP leases granted by the operator (`PUT /v1/assignment`). Pure: times come in as
arguments (wall-clock epoch seconds), no I/O.

Self-fencing: the sender uses an IP only while `now < expiresAt`, whatever happens to the
operator or the network, so an operator that moves an IP to another pod only has to wait for
the old lease to run out. Leases live in memory only: after a restart the pod holds none until
the operator grants them again.

Quota: `quotaRemaining` is what the IP may still send today as of the grant. The sender counts
a message against it when its attempt *starts* (a reservation, returned if the attempt never
reached a receiver), so in-flight deliveries are covered. When the operator computed the figure
from a `sentToday` it read earlier, it passes that as `sentTodayBasis` and the sender also
subtracts what it counted since then; `sentToday` includes reservations in flight, so a renewal
racing with deliveries never grants the same messages twice. Without a basis the deliveries in
flight at the grant are counted against it. A new day does not refill a quota: only the
operator grants the next day's figure.
"""

from __future__ import annotations

import dataclasses

from mailfleet_sender import wire


class StaleAssignment(ValueError):
    """An assignment older than the one already applied (HTTP 409)."""


@dataclasses.dataclass
class Source:
    """An egress source held under a lease: the IP, its HELO name and its quota."""

    address: str
    helo_name: str
    expires_at: float
    lease_id: str
    warmup: bool
    quota: int | None
    classes: frozenset[str] | None
    used: int = 0
    """Messages counted against `quota` since the grant (including the basis correction)."""
    revoked: bool = False

    def valid(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at

    def quota_left(self) -> int | None:
        return None if self.quota is None else max(0, self.quota - self.used)

    def allows(self, class_name: str) -> bool:
        return self.classes is None or class_name in self.classes


@dataclasses.dataclass(frozen=True)
class Change:
    """What an assignment changed: addresses granted anew and addresses taken away."""

    granted: tuple[str, ...]
    revoked: tuple[str, ...]


class LeaseTable:
    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}
        self.generation = 0
        self._grants: dict[str, tuple[str, int | None, int | None]] = {}

    def apply(
        self,
        assignment: wire.Assignment,
        *,
        now: float,
        sent_today: dict[str, int],
        in_flight: dict[str, int] | None = None,
    ) -> Change:
        """Replace the lease set; IPs not in the new set are revoked at once. `sent_today`
        counts reservations (attempts started today); `in_flight` the ones not answered yet."""
        if assignment.generation < self.generation:
            raise StaleAssignment(
                f"generation {assignment.generation} is older than {self.generation}"
            )
        self.generation = assignment.generation
        granted: list[str] = []
        kept: dict[str, Source] = {}
        grants: dict[str, tuple[str, int | None, int | None]] = {}
        for lease in assignment.leases:
            key = (lease.lease_id, lease.quota_remaining, lease.sent_today_basis)
            old = self.sources.get(lease.address)
            if old is not None and self._grants.get(lease.address) == key and not old.revoked:
                used = old.used
            else:
                basis = lease.sent_today_basis
                if basis is not None:
                    used = max(0, sent_today.get(lease.address, 0) - basis)
                else:
                    used = (in_flight or {}).get(lease.address, 0)
                if old is None or old.revoked:
                    granted.append(lease.address)
            fresh = Source(
                address=lease.address,
                helo_name=lease.helo_name,
                expires_at=lease.expires_at.timestamp(),
                lease_id=lease.lease_id,
                warmup=lease.warmup,
                quota=lease.quota_remaining,
                classes=frozenset(lease.classes) if lease.classes is not None else None,
                used=used,
            )
            if old is not None and not old.revoked:
                # Update in place: whoever holds the object sees renewals and revocation.
                for field in dataclasses.fields(Source):
                    setattr(old, field.name, getattr(fresh, field.name))
                fresh = old
            kept[lease.address] = fresh
            grants[lease.address] = key
        revoked = [a for a in self.sources if a not in kept]
        for address in revoked:
            self.sources[address].revoked = True
        self.sources = kept
        self._grants = grants
        return Change(granted=tuple(granted), revoked=tuple(revoked))

    def valid(self, now: float) -> list[Source]:
        return [s for s in self.sources.values() if s.valid(now)]

    def get(self, address: str) -> Source | None:
        return self.sources.get(address)

    def next_expiry(self, now: float) -> float | None:
        times = [s.expires_at for s in self.sources.values() if s.valid(now)]
        return min(times) if times else None
