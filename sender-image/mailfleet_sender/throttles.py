"""Token buckets and a priority gate over them. The accounting is pure (time comes in as an
argument); only `TokenGate` touches asyncio, to park waiters until their tokens exist.

Why a gate and not "sleep until the bucket refills": a marketing delivery that sleeps on the
Gmail bucket would wake up first and take the token a transactional delivery is waiting for.
The gate grants tokens in priority order, and a waiter that cannot be served yet blocks lower
priority waiters on the *same* buckets only, so traffic to other providers keeps flowing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Sequence


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`. Starts full."""

    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = default_burst(rate) if burst is None else max(1.0, burst)
        self.tokens = self.burst
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= 1.0

    def wait_time(self, now: float) -> float:
        """Seconds until one token is there (0 when one is there now)."""
        self.refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self.refill(now)
        self.tokens -= 1.0

    def give_back(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1.0)

    def reconfigure(self, rate: float, burst: float | None, now: float) -> None:
        """New limits from a config reload; tokens already earned are kept (up to the burst)."""
        self.refill(now)
        self.rate = rate
        self.burst = default_burst(rate) if burst is None else max(1.0, burst)
        self.tokens = min(self.tokens, self.burst)


def default_burst(rate: float) -> float:
    """One second's worth of tokens, at least one: bursts stay short, slow rates stay paced."""
    return max(1.0, rate)


@dataclasses.dataclass
class Waiter:
    priority: int
    seq: int
    buckets: tuple[TokenBucket, ...]
    granted: bool = False


def grant_in_order(waiters: Sequence[Waiter], now: float) -> list[Waiter]:
    """Grant tokens to waiters by (priority high first, arrival). A waiter that cannot be served
    reserves its buckets against everyone behind it; returns the newly granted waiters."""
    granted: list[Waiter] = []
    blocked: set[int] = set()
    for waiter in sorted(waiters, key=lambda w: (-w.priority, w.seq)):
        ids = {id(b) for b in waiter.buckets}
        if ids & blocked:
            continue
        if all(b.available(now) for b in waiter.buckets):
            for bucket in waiter.buckets:
                bucket.take(now)
            waiter.granted = True
            granted.append(waiter)
        else:
            blocked |= ids
    return granted


def next_wakeup(waiters: Sequence[Waiter], now: float) -> float | None:
    """Seconds until some waiting bucket has a token again (None when nobody waits)."""
    waits = [max(b.wait_time(now) for b in w.buckets) for w in waiters if not w.granted]
    return min(waits) if waits else None


class TokenGate:
    """Async front of `grant_in_order`: `await acquire(buckets, priority)`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._waiters: dict[int, tuple[Waiter, asyncio.Future[None]]] = {}
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, buckets: Sequence[TokenBucket], *, priority: int) -> None:
        buckets = tuple(buckets)
        if not buckets:
            return
        now = self._clock()
        waiter = Waiter(priority=priority, seq=next(self._seq), buckets=buckets)
        if not self._waiters and grant_in_order([waiter], now):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter.seq] = (waiter, future)
        self._pump()
        try:
            await future
        except asyncio.CancelledError:
            entry = self._waiters.pop(waiter.seq, None)
            if waiter.granted and entry is None:
                for bucket in buckets:
                    bucket.give_back()
            raise

    def release(self, buckets: Sequence[TokenBucket]) -> None:
        """Return unused tokens (the delivery they were taken for did not happen)."""
        for bucket in buckets:
            bucket.give_back()
        self._pump()

    def _pump(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters = [w for w, _ in self._waiters.values()]
        now = self._clock()
        for waiter in grant_in_order(waiters, now):
            _, future = self._waiters.pop(waiter.seq)
            if not future.done():
                future.set_result(None)
        wake = next_wakeup([w for w, _ in self._waiters.values()], now)
        if wake is not None:
            self._timer = asyncio.get_running_loop().call_later(max(wake, 0.001), self._pump)
