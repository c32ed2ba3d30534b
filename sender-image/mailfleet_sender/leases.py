"""Source-IP leases granted by the operator (`PUT /v1/assignment`). No I/O: time comes from
the injected `clock.Clock`, and only its monotonic side.

Self-fencing: a lease lasts `ttlSeconds` from the moment the pod received it, counted on the
monotonic clock, so neither clock skew between operator and pod nor an NTP step of the pod's
wall clock can stretch it. The sender uses an IP only while its deadline lies ahead (the engine
also keeps a safety margin, see `dispatching`), whatever happens to the operator or the
network, so an operator that moves an IP to another pod only has to wait for the old lease's
TTL (counted from before it sent the grant) to run out. Leases live in memory only: after a
restart the pod holds none until the operator grants them again.

Fencing epochs: every lease carries its IP's epoch (the Kubernetes Lease's leaseTransitions,
raised on each transfer). The table remembers the highest epoch it ever accepted per address,
also across revocations, for the life of the process; an assignment with an older epoch for
any address comes from an operator that has not seen the transfer (a delayed request, a
deposed leader) and is refused whole.

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

from mailfleet_sender import clock, wire


class StaleAssignment(ValueError):
    """An assignment older than the one already applied (HTTP 409, code `stale`)."""

    code = "stale"


class StaleEpoch(StaleAssignment):
    """An assignment with a lease whose epoch is older than one already accepted for its
    address (HTTP 409, code `staleEpoch`)."""

    code = "staleEpoch"


@dataclasses.dataclass
class Source:
    """An egress source held under a lease: the IP, its HELO name and its quota."""

    address: str
    helo_name: str
    deadline: float
    """End of the lease on the monotonic clock (receipt time + TTL)."""
    lease_id: str
    warmup: bool
    quota: int | None
    classes: frozenset[str] | None
    epoch: int = 0
    used: int = 0
    """Messages counted against `quota` since the grant (including the basis correction)."""
    revoked: bool = False

    def valid(self, now: float) -> bool:
        """`now` is monotonic."""
        return not self.revoked and now < self.deadline

    def remaining(self, now: float) -> float:
        """Seconds of lease left at monotonic `now`; 0 when expired or revoked."""
        return 0.0 if self.revoked else max(0.0, self.deadline - now)

    def quota_left(self) -> int | None:
        return None if self.quota is None else max(0, self.quota - self.used)

    def allows(self, class_name: str) -> bool:
        return self.classes is None or class_name in self.classes


@dataclasses.dataclass(frozen=True)
class Change:
    """What an assignment changed: addresses granted anew and addresses taken away."""

    granted: tuple[str, ...]
    revoked: tuple[str, ...]


_GrantKey = tuple[str, int, int | None, int | None]
"""(leaseId, epoch, quotaRemaining, sentTodayBasis): the same key is a renewal."""


class LeaseTable:
    def __init__(self, clock_: clock.Clock | None = None) -> None:
        self.clock = clock_ or clock.Clock()
        self.sources: dict[str, Source] = {}
        self.generation = 0
        self._grants: dict[str, _GrantKey] = {}
        self._epochs: dict[str, int] = {}
        """Highest epoch ever accepted per address, kept after revocation."""
        self._ended: dict[str, int] = {}
        """Highest epoch whose lease ended here per address (ran out or revoked): not revived."""

    def apply(
        self,
        assignment: wire.Assignment,
        *,
        sent_today: dict[str, int],
        in_flight: dict[str, int] | None = None,
    ) -> Change:
        """Replace the lease set; IPs not in the new set are revoked at once. `sent_today`
        counts reservations (attempts started today); `in_flight` the ones not answered yet.
        Raises `StaleAssignment` (or its `StaleEpoch`) before changing anything."""
        received = self.clock.monotonic()
        self._check(assignment)
        self.generation = assignment.generation
        granted: list[str] = []
        kept: dict[str, Source] = {}
        grants: dict[str, _GrantKey] = {}
        for address, source in self.sources.items():
            if not source.valid(received):
                self._ended[address] = max(source.epoch, self._ended.get(address, -1))
        for lease in assignment.leases:
            if lease.epoch <= self._ended.get(lease.address, -1):
                # A lease of this epoch already ended here (it ran out, or was revoked): a
                # renewal of it that arrives now was sent before that (e.g. queued while the
                # process was frozen) and must not bring it back; only a new grant (a higher
                # epoch) can. The answer shows the IP as not held.
                continue
            key = (lease.lease_id, lease.epoch, lease.quota_remaining, lease.sent_today_basis)
            self._epochs[lease.address] = max(lease.epoch, self._epochs.get(lease.address, 0))
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
                deadline=received + lease.ttl_seconds,
                lease_id=lease.lease_id,
                warmup=lease.warmup,
                quota=lease.quota_remaining,
                classes=frozenset(lease.classes) if lease.classes is not None else None,
                epoch=lease.epoch,
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
            self._ended[address] = max(self.sources[address].epoch, self._ended.get(address, -1))
        self.sources = kept
        self._grants = grants
        return Change(granted=tuple(granted), revoked=tuple(revoked))

    def _check(self, assignment: wire.Assignment) -> None:
        if assignment.generation < self.generation:
            raise StaleAssignment(
                f"generation {assignment.generation} is older than {self.generation}"
            )
        for lease in assignment.leases:
            known = self._epochs.get(lease.address)
            if known is not None and lease.epoch < known:
                raise StaleEpoch(
                    f"lease for {lease.address} has epoch {lease.epoch}, older than epoch "
                    f"{known} already accepted for it"
                )

    def valid(self) -> list[Source]:
        now = self.clock.monotonic()
        return [s for s in self.sources.values() if s.valid(now)]

    def usable(self, margin: float) -> list[Source]:
        """Sources with more than `margin` seconds of lease left: the ones a new connection
        or transaction may start on."""
        now = self.clock.monotonic()
        return [s for s in self.sources.values() if s.remaining(now) > margin]

    def get(self, address: str) -> Source | None:
        return self.sources.get(address)

    def epoch_of(self, address: str) -> int | None:
        """Highest epoch ever accepted for `address` (None: never leased here)."""
        return self._epochs.get(address)
