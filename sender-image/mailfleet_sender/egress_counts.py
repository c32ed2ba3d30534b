"""Outbound SMTP activity per source IP and lease epoch since the process started:
connections opened, transactions begun, messages written, and attempts the lease fence
refused, with when the last of each began. No I/O: time comes from the injected `clock.Clock`.

Which side of the fence: the dispatcher checks the lease right before opening a connection
and before each write of a transaction (MAIL, RCPT, DATA, the message; `dispatching`), and
counts a connection, a transaction (at MAIL) or a message (the message and its final dot)
only once that check passed, just before the socket is opened or the bytes written. What the
check refuses never reached the network: it counts in `fenced` only. So the counters of an
IP whose lease ended here stay where they were at that moment (until a new grant): what an
observer, such as the sandbox's failover scenes, reads from a healed pod to see its fence
held, from the pod itself rather than from timing at the receivers. They are kept per epoch
of the lease the attempt ran under, so that the IP granted back to the pod later (a higher
epoch) is told apart from its old lease.

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
    messages: int = 0
    """Messages written with their final dot (each may have been delivered)."""
    fenced: int = 0
    """Connections or writes the lease check refused at the last moment (the lease had less
    than the margin left); most mail for an ended lease never gets that far."""
    last_connection_at: float | None = None
    last_transaction_at: float | None = None
    last_message_at: float | None = None


Key = tuple[str, int]
"""(source address, lease epoch)."""


class EgressCounts:
    def __init__(self, clock_: clock.Clock | None = None) -> None:
        self.clock = clock_ or clock.Clock()
        self._counts: collections.defaultdict[Key, Count] = collections.defaultdict(Count)

    def connecting(self, address: str, epoch: int) -> None:
        """A connection from `address` is about to be opened (the fence let it through)."""
        count = self._counts[address, epoch]
        count.connections += 1
        count.last_connection_at = self.clock.wall()

    def transacting(self, address: str, epoch: int) -> None:
        """A transaction from `address` is about to begin (the fence let it through)."""
        count = self._counts[address, epoch]
        count.transactions += 1
        count.last_transaction_at = self.clock.wall()

    def writing(self, address: str, epoch: int) -> None:
        """A message and its final dot are about to be written from `address` (the fence let
        it through)."""
        count = self._counts[address, epoch]
        count.messages += 1
        count.last_message_at = self.clock.wall()

    def refused(self, address: str, epoch: int) -> None:
        """The fence refused a connection or a write of a transaction from `address`."""
        self._counts[address, epoch].fenced += 1

    def snapshot(self) -> dict[Key, Count]:
        return {key: dataclasses.replace(c) for key, c in sorted(self._counts.items())}
