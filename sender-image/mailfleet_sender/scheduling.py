"""Queue logic of the sender, pure (no I/O, times passed in): the order of ready mail, retry
times, message ages, and which source IP a message leaves from.

The two tiers follow KumoMTA. The *scheduled* tier holds mail per class and destination domain
until it is due (first attempt, or the retry schedule after a 4xx), and bounces it as expired
past the class's max age. Due mail is resolved to its site and handed to a *ready* tier: one
`ReadyQueue` per (source IP, site), drained by that lane's connections under its connection
limit and the token buckets.

Order inside a ready queue is strict: class priority first (transactional takes the next free
slot before any marketing message), then engagement tier (under a warm-up quota the most
engaged recipients use it first), then arrival. Marketing still progresses whenever no higher
class is waiting for the same lane, and the token gate keeps other lanes flowing.

Source choice (warm-up): warming IPs with quota left take mail first, so warm-up reaches its
daily volume, and round-robin among equals. Past their quota, mail overflows to warm IPs when
`warmup.overflow` is WarmIPs; with Defer it waits for quota (the warming IPs carry the stream
alone). Warm IPs carry everything when no warming IP can take a class at all.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Iterable, Sequence

from mailfleet_sender import config, leases, spool, units


def tier_rank(tier: str | None, order: Sequence[str]) -> int:
    """Position of a tier in the configured order; unknown or missing tiers come last."""
    if tier is None:
        return len(order)
    try:
        return list(order).index(tier)
    except ValueError:
        return len(order)


def retry_delay(attempts: int, schedule: Sequence[float]) -> float:
    """Wait after the `attempts`-th failed attempt (1-based); the last step repeats."""
    if not schedule:
        return 300.0
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def max_age_seconds(class_name: str, cfg: config.SenderConfig) -> float:
    cls = cfg.class_named(class_name)
    text = cls.max_age if cls is not None and cls.max_age else cfg.retry.max_age
    return units.duration_seconds(text)


def is_expired(delivery: spool.Delivery, *, now: float, max_age: float) -> bool:
    return now - delivery.created >= max_age


def class_priority(class_name: str, cfg: config.SenderConfig) -> int:
    cls = cfg.class_named(class_name)
    return cls.priority if cls is not None else 0


@dataclasses.dataclass(frozen=True)
class Pick:
    """One ready delivery and the key it is ordered by."""

    priority: int
    rank: int
    seq: int
    delivery: spool.Delivery


class ReadyQueue:
    """Ready deliveries of one lane, best first: priority, then tier rank, then arrival."""

    _seq = itertools.count()

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, spool.Delivery]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, delivery: spool.Delivery, *, priority: int, rank: int) -> None:
        heapq.heappush(self._heap, (-priority, rank, next(self._seq), delivery))

    def peek_priority(self) -> int | None:
        return -self._heap[0][0] if self._heap else None

    def pop(self) -> spool.Delivery | None:
        return heapq.heappop(self._heap)[3] if self._heap else None

    def drain(self) -> list[spool.Delivery]:
        """Take everything out (lease lost, quota gone), best first."""
        items = [entry[3] for entry in sorted(self._heap)]
        self._heap.clear()
        return items

    def items(self) -> Iterable[spool.Delivery]:
        return (entry[3] for entry in self._heap)


@dataclasses.dataclass
class SourceLoad:
    """What is already queued on a source, so quota is not promised twice."""

    queued: int = 0


def choose_source(
    class_name: str,
    sources: Sequence[leases.Source],
    *,
    overflow: str,
    queued: dict[str, int],
    turn: int,
) -> leases.Source | None:
    """The source IP for one message, or None when it must wait (no lease, no quota).

    `queued` counts deliveries already waiting in each source's lanes: a warming IP takes
    new mail only while its quota covers them too. `turn` rotates among equal candidates.
    """
    eligible = [s for s in sources if s.allows(class_name)]
    if not eligible:
        return None
    warming = [s for s in eligible if s.warmup]
    warm = [s for s in eligible if not s.warmup and _has_room(s, queued)]
    warming_room = [s for s in warming if _has_room(s, queued)]
    if warming_room:
        return _rotate(warming_room, turn)
    if warming and overflow != "WarmIPs":
        return None
    return _rotate(warm, turn) if warm else None


def _has_room(source: leases.Source, queued: dict[str, int]) -> bool:
    left = source.quota_left()
    return left is None or left > queued.get(source.address, 0)


def _rotate(candidates: Sequence[leases.Source], turn: int) -> leases.Source:
    ordered = sorted(candidates, key=lambda s: s.address)
    return ordered[turn % len(ordered)]


def sort_for_dispatch(
    deliveries: Iterable[spool.Delivery], cfg: config.SenderConfig
) -> list[spool.Delivery]:
    """Best first, so a batch hands scarce quota to high classes and engaged tiers first."""
    order = cfg.warmup.tier_order
    return sorted(
        deliveries,
        key=lambda d: (-class_priority(d.class_name, cfg), tier_rank(d.tier, order), d.id),
    )
