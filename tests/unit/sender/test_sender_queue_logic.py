"""Pure queue logic: token buckets and the priority gate, source choice under warm-up,
ready-queue order, retries (leases: test_leases.py)."""

from __future__ import annotations

import pytest
from mailfleet_sender import config, leases, scheduling, spool, throttles


def test_bucket_refills_at_its_rate_and_caps_at_its_burst() -> None:
    bucket = throttles.TokenBucket(10, now=0.0)
    for _ in range(10):
        assert bucket.available(0.0)
        bucket.take(0.0)
    assert not bucket.available(0.0)
    assert bucket.wait_time(0.0) == pytest.approx(0.1)
    assert bucket.available(0.1)
    bucket.refill(100.0)
    assert bucket.tokens == 10


def test_gate_serves_higher_priority_first_and_blocks_only_shared_buckets() -> None:
    shared = throttles.TokenBucket(1, now=0.0)
    other = throttles.TokenBucket(1, now=0.0)
    shared.take(0.0)
    low = throttles.Waiter(priority=10, seq=0, buckets=(shared,))
    high = throttles.Waiter(priority=100, seq=1, buckets=(shared,))
    elsewhere = throttles.Waiter(priority=10, seq=2, buckets=(other,))
    assert throttles.grant_in_order([low, high, elsewhere], 0.0) == [elsewhere]
    assert throttles.grant_in_order([low, high], 1.0) == [high]
    assert throttles.next_wakeup([low], 1.0) == pytest.approx(1.0)


def _source(address: str, *, quota: int | None = None, warmup: bool = False,
            classes: frozenset[str] | None = None) -> leases.Source:
    return leases.Source(address=address, helo_name="h", deadline=1e12, lease_id="",
                         warmup=warmup, quota=quota, classes=classes)


@pytest.mark.parametrize(
    ("overflow", "queued", "expected"),
    [
        ("Defer", {}, "10.0.0.1"),
        ("Defer", {"10.0.0.1": 5}, None),
        ("WarmIPs", {"10.0.0.1": 5}, "10.0.0.2"),
    ],
    ids=["a warming IP with quota left takes mail first",
         "with Defer mail over the warming quota waits",
         "with WarmIPs mail over the warming quota goes to a warm IP"],
)
def test_source_choice_under_warmup(overflow: str, queued: dict[str, int],
                                    expected: str | None) -> None:
    sources = [_source("10.0.0.1", quota=5, warmup=True), _source("10.0.0.2")]
    chosen = scheduling.choose_source("marketing", sources, overflow=overflow, queued=queued,
                                      turn=0)
    assert (chosen.address if chosen else None) == expected


def test_class_restricted_ips_only_carry_their_classes() -> None:
    sources = [_source("10.0.0.1", classes=frozenset({"transactional"})), _source("10.0.0.2")]
    picks = {scheduling.choose_source("marketing", sources, overflow="Defer", queued={},
                                      turn=t).address for t in range(4)}  # type: ignore[union-attr]
    assert picks == {"10.0.0.2"}


def _delivery(n: int, cls: str, tier: str | None) -> spool.Delivery:
    return spool.Delivery(id=n, message=n, recipient=f"r{n}@x.test", domain="x.test",
                          class_name=cls, tier=tier, sender="s@y.test", from_domain="y.test",
                          attempts=0, next_attempt=0, created=0)


def test_ready_queue_orders_by_priority_then_tier_then_arrival() -> None:
    queue = scheduling.ReadyQueue()
    order = ["high", "low"]
    for n, (cls, prio, tier) in enumerate([("m", 10, "low"), ("m", 10, "high"),
                                            ("t", 100, None), ("m", 10, "high")]):
        queue.push(_delivery(n, cls, tier), priority=prio,
                   rank=scheduling.tier_rank(tier, order))
    assert [queue.pop().id for _ in range(4)] == [2, 1, 3, 0]  # type: ignore[union-attr]


def test_retry_delay_follows_the_schedule_and_repeats_its_last_step() -> None:
    schedule = [60.0, 300.0]
    assert [scheduling.retry_delay(n, schedule) for n in (1, 2, 3, 9)] == [60, 300, 300, 300]


def test_class_max_age_falls_back_to_the_retry_max_age() -> None:
    cfg = config.SenderConfig(classes=[{"name": "a", "maxAge": "1h"}, {"name": "b"}],
                              retry={"maxAge": "2d"})
    assert scheduling.max_age_seconds("a", cfg) == 3600
    assert scheduling.max_age_seconds("b", cfg) == 2 * 86400
