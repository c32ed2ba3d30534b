"""Warm-up quota in chunks across grants, stats reads and failovers: the pool's accounting
(`PoolMemory` and the reconciler's quota helpers) against senders that send everything their
lease allows. Whatever happens, what every pod has sent plus what its lease still allows
never exceeds the day's quota, and a lost holder blocks only its outstanding chunk."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from mailfleet_operator.logic import assigning, usage_book
from mailfleet_operator.reconcile import sendingpool as reconciler
from mailfleet_sender import wire

IP = "192.0.2.10"
DAY = 7
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@dataclasses.dataclass
class Sender:
    """The sender's quota rule (`mailfleet_sender.leases`): on applying a lease with
    (basis, quotaRemaining) it has `used = max(0, sent - basis)`, and may send while
    `used < quotaRemaining`."""

    name: str
    sent: int = 0
    left: int = 0  # what its applied lease still allows (0: none, or it expired)
    reachable: bool = True

    def apply(self, remaining: int, basis: int) -> None:
        self.left = max(0, remaining - max(0, self.sent - basis))

    def send(self, n: int) -> None:
        n = min(n, self.left)
        self.sent, self.left = self.sent + n, self.left - n


class World:
    def __init__(self, quota: int, chunk: int | None) -> None:
        self.quota, self.chunk = quota, chunk
        self.memory = reconciler.PoolMemory()
        self.pods = {f"mail-{i}": Sender(f"mail-{i}") for i in range(3)}
        self.holder: str | None = None
        self.clock = T0
        self.pending: tuple[dict[str, int], set[tuple[str, str]], int] | None = None

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def hold(self, pod: str, *, released: bool = False) -> None:
        self.memory.leases = {
            IP: assigning.Lease(
                address=IP, pod=pod, pod_uid=pod, expires_at=T0, released=released
            )
        }

    def worst_case(self) -> int:
        return sum(s.sent + s.left for s in self.pods.values())

    # --- actions -------------------------------------------------------------------------

    def renew(self, delivered: bool, answered: bool) -> None:
        """A renewal (or first grant) of the holder's lease; the PUT may be lost on the way
        there, or its answer on the way back."""
        if self.holder is None:
            return
        pod = self.pods[self.holder]
        day = self.memory.usage_day
        remaining, basis = usage_book.lease_quota(
            self.memory, IP, pod.name, self.quota, chunk=self.chunk
        )
        assert remaining is not None and basis is not None
        if not (delivered and pod.reachable):
            return
        pod.apply(remaining, basis)
        if answered:
            status = wire.AssignmentStatus(
                pod=pod.name, generation=1, day=DAY,
                leases=[wire.LeaseStatus(
                    address=IP, helo_name="h", valid=True, warmup=True,
                    sent_today=pod.sent,
                )],
            )
            usage_book.fold_answer(self.memory, pod.name, status, self.tick())
            usage_book.acknowledged(
                self.memory, pod.name, {IP: basis + remaining}, granted_day=day,
                answer_day=DAY,
            )

    def send(self, n: int) -> None:
        for pod in self.pods.values():
            pod.send(n)

    def stats_start(self) -> None:
        """A stats read leaves: the figures are taken now, folded in later."""
        counts = {n: s.sent for n, s in self.pods.items() if s.reachable}
        held = {(IP, lease.pod) for lease in (self.memory.leases or {}).values()
                if not lease.released}
        self.pending = (counts, held, self.memory.grant_seq)

    def stats_end(self) -> None:
        if self.pending is None:
            return
        counts, held, started = self.pending
        self.pending = None
        fresh = {n: wire.Stats(pod=n, day=DAY, ips=[wire.IPStats(address=IP, sent_today=c)])
                 for n, c in counts.items()}
        usage_book.merge_usage(self.memory, fresh, self.tick(), held, read_started=started)

    def lose(self) -> None:
        """The holder is cut off (partition, frozen node): it keeps sending what its lease
        allows until it expires, and answers nothing any more."""
        if self.holder is not None:
            self.pods[self.holder].reachable = False

    def fail_over(self, target: int) -> None:
        """The IP moves, as `assigning` allows: once the holder confirmed the release, or
        (lost) once its lease expired."""
        new = f"mail-{target}"
        old = self.holder
        if old == new or not self.pods[new].reachable:
            return
        if old is not None:
            sender = self.pods[old]
            if sender.reachable:
                self.hold(old, released=True)  # it answered the revoke: it stops at once
            else:
                sender.send(sender.left)  # the worst case: it used everything before expiry
            sender.left = 0
        self.holder = new
        self.hold(new)


ACTIONS = st.one_of(
    st.tuples(st.just("renew"), st.booleans(), st.booleans()),
    st.tuples(st.just("send"), st.integers(0, 60)),
    st.tuples(st.just("stats_start")),
    st.tuples(st.just("stats_end")),
    st.tuples(st.just("lose")),
    st.tuples(st.just("fail_over"), st.integers(0, 2)),
)


@settings(max_examples=1500, deadline=None)
@given(
    quota=st.integers(1, 300),
    chunk=st.one_of(st.none(), st.integers(1, 80)),
    steps=st.lists(ACTIONS, max_size=60),
)
def test_what_every_holder_could_send_never_exceeds_the_day_quota(
    quota: int, chunk: int | None, steps: list[tuple[object, ...]]
) -> None:
    world = World(quota, chunk)
    world.fail_over(0)
    for name, *args in steps:
        getattr(world, str(name))(*args)
        assert world.worst_case() <= quota, (name, args, world.pods)


def test_a_lost_holder_blocks_only_its_outstanding_chunk() -> None:
    world = World(quota=100, chunk=10)
    world.fail_over(0)
    world.stats_start()
    world.stats_end()
    world.renew(delivered=True, answered=True)
    world.send(4)  # mail-0 sent 4 of its chunk of 10, then its node froze
    world.lose()
    world.fail_over(1)
    world.renew(delivered=True, answered=True)
    # mail-0 may have sent its whole chunk: 100 - 10 left, the new holder gets a chunk now.
    assert world.pods["mail-1"].left == 10
    world.send(10)
    world.stats_start()
    world.stats_end()
    world.renew(delivered=True, answered=True)
    assert world.pods["mail-1"].left == 10
    assert world.worst_case() <= 100


def test_without_chunks_a_lost_holder_blocks_the_rest_of_the_day() -> None:
    world = World(quota=100, chunk=None)
    world.fail_over(0)
    world.renew(delivered=True, answered=True)
    world.send(4)
    world.lose()
    world.fail_over(1)
    world.renew(delivered=True, answered=True)
    assert world.pods["mail-1"].left == 0


def test_a_regained_ip_is_not_final_for_its_holder_until_it_releases_again() -> None:
    """mail-0 held the IP, released it (final count 5), got it back, then was lost before
    any stats read: it counts with its new allowance, not its old final figure."""
    world = World(quota=30, chunk=20)
    world.fail_over(0)
    world.renew(delivered=True, answered=True)
    world.send(5)
    world.fail_over(1)
    world.stats_start()
    world.stats_end()  # mail-0 final with 5
    world.fail_over(0)
    world.renew(delivered=True, answered=True)  # mail-0 may reach 25
    world.lose()
    world.fail_over(2)  # mail-0 sent up to 25 before its lease expired
    world.renew(delivered=True, answered=True)
    assert world.pods["mail-2"].left == 5
    assert world.worst_case() <= 30


def test_a_stats_read_begun_before_a_release_does_not_make_the_old_count_final() -> None:
    """The read left while mail-0 held the IP; mail-0 sent 5 more and released it before the
    answer was folded in: its 0 is not its final figure."""
    world = World(quota=100, chunk=None)
    world.fail_over(0)
    world.renew(delivered=True, answered=True)
    world.stats_start()
    world.send(5)
    world.fail_over(1)
    world.stats_end()
    world.renew(delivered=True, answered=True)
    assert world.worst_case() <= 100
