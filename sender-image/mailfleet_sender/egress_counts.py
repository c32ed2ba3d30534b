"""Outbound SMTP activity per source IP since the process started: connections opened,
transactions begun and attempts the lease fence refused, with when the last connection and
transaction began. No I/O: time comes from the injected `clock.Clock`.

Which side of the fence: the dispatcher counts a connection (or a transaction, MAIL FROM on a
connection already open) only after the lease check passed, right before the socket is
opened (the command written). An attempt the fence refuses never reached the network and is
not a connection: it counts in `fenced` only. So the counters of an IP whose lease ended here
stay where they were at that moment (until a new grant): what an observer, such as the
sandbox's failover scenes, reads from a healed pod to see its fence held, from the pod itself
rather than from timing at the receivers.

The times are the pod's wall clock, for an observer to compare with its own on the same host;
no lease is ever judged by them.
"""

from __future__ import annotations

import collections
import dataclasses

from mailfleet_sender import clock


@dataclasses.dataclass
class Count:
    connections: int = 0
    """Outbound connections begun from the IP (counted before the connect, so failed ones
    too)."""
    transactions: int = 0
    """MAIL FROM..end of DATA begun from the IP, on new and reused connections."""
    fenced: int = 0
    """Connections or transactions the lease check refused at the last moment (the lease had
    less than the margin left); most mail for an ended lease never gets that far."""
    last_connection_at: float | None = None
    last_transaction_at: float | None = None


class EgressCounts:
    def __init__(self, clock_: clock.Clock | None = None) -> None:
        self.clock = clock_ or clock.Clock()
        self._counts: collections.defaultdict[str, Count] = collections.defaultdict(Count)

    def connecting(self, address: str) -> None:
        """A connection from `address` is about to be opened (the fence let it through)."""
        count = self._counts[address]
        count.connections += 1
        count.last_connection_at = self.clock.wall()

    def transacting(self, address: str) -> None:
        """A transaction from `address` is about to begin (the fence let it through)."""
        count = self._counts[address]
        count.transactions += 1
        count.last_transaction_at = self.clock.wall()

    def refused(self, address: str) -> None:
        """The fence refused a connection or transaction from `address`."""
        self._counts[address].fenced += 1

    def snapshot(self) -> dict[str, Count]:
        return {address: dataclasses.replace(c) for address, c in self._counts.items()}
