"""The lease table with an injected clock: TTLs counted on the monotonic clock from receipt
(wall-clock steps change nothing), fencing epochs remembered per address across revocations,
generations, and the quota counters a renewal keeps."""

from __future__ import annotations

import dataclasses

import pytest
from mailfleet_sender import clock, leases, wire

IP = "10.0.0.1"


@dataclasses.dataclass
class ManualTime:
    """Wall and monotonic seconds the test moves by hand."""

    wall_now: float = 1_700_000_000.0
    mono_now: float = 500.0

    def clock(self) -> clock.Clock:
        return clock.Clock(wall=lambda: self.wall_now, monotonic=lambda: self.mono_now)


def _assignment(generation: int, *items: dict[str, object]) -> wire.Assignment:
    defaults: dict[str, object] = {"address": IP, "heloName": "h", "ttlSeconds": 30, "epoch": 0}
    return wire.Assignment.model_validate(
        {"generation": generation, "leases": [{**defaults, **item} for item in items]}
    )


def _table() -> tuple[ManualTime, leases.LeaseTable]:
    time = ManualTime()
    return time, leases.LeaseTable(time.clock())


def test_a_lease_lasts_its_ttl_from_receipt_on_the_monotonic_clock() -> None:
    time, table = _table()
    table.apply(_assignment(1, {"ttlSeconds": 30}), sent_today={})
    time.mono_now += 29.9
    assert [s.address for s in table.valid()] == [IP]
    assert table.get(IP).remaining(time.mono_now) == pytest.approx(0.1)  # type: ignore[union-attr]
    time.mono_now += 0.1
    assert table.valid() == []
    assert table.get(IP).remaining(time.mono_now) == 0.0  # type: ignore[union-attr]


@pytest.mark.parametrize("step", [3600.0, -3600.0], ids=["wall clock stepped 1 h forward",
                                                         "wall clock stepped 1 h back"])
def test_a_stepped_wall_clock_neither_shortens_nor_stretches_a_lease(step: float) -> None:
    time, table = _table()
    table.apply(_assignment(1, {"ttlSeconds": 30}), sent_today={})
    time.wall_now += step
    time.mono_now += 10
    assert [s.address for s in table.valid()] == [IP]
    assert table.get(IP).remaining(time.mono_now) == pytest.approx(20)  # type: ignore[union-attr]
    time.wall_now -= 2 * step
    time.mono_now += 20
    assert table.valid() == []


def test_usable_sources_keep_more_than_the_margin_left() -> None:
    time, table = _table()
    table.apply(_assignment(1, {"ttlSeconds": 5}), sent_today={})
    time.mono_now += 3.9
    assert [s.address for s in table.usable(1.0)] == [IP]
    time.mono_now += 0.1
    assert table.usable(1.0) == [] and [s.address for s in table.valid()] == [IP]


def test_a_renewal_counts_its_ttl_from_its_own_receipt() -> None:
    time, table = _table()
    table.apply(_assignment(1, {"ttlSeconds": 10, "leaseId": "a"}), sent_today={})
    held = table.get(IP)
    time.mono_now += 8
    table.apply(_assignment(2, {"ttlSeconds": 10, "leaseId": "a"}), sent_today={})
    assert table.get(IP) is held  # updated in place: running attempts see the new deadline
    time.mono_now += 9
    assert [s.address for s in table.valid()] == [IP]


def test_an_older_epoch_for_an_address_is_refused_whole() -> None:
    _, table = _table()
    table.apply(_assignment(1, {"epoch": 4}, {"address": "10.0.0.2", "epoch": 0}),
                sent_today={})
    with pytest.raises(leases.StaleEpoch, match=r"10\.0\.0\.1 has epoch 3, older than epoch 4"):
        table.apply(_assignment(2, {"address": "10.0.0.2", "epoch": 1}, {"epoch": 3}),
                    sent_today={})
    # Refused whole: nothing changed, not even the generation.
    assert table.generation == 1
    assert {s.address: s.epoch for s in table.valid()} == {IP: 4, "10.0.0.2": 0}
    assert table.epoch_of("10.0.0.2") == 0


def test_an_older_epoch_is_refused_even_after_the_ip_was_revoked_and_regranted() -> None:
    _, table = _table()
    table.apply(_assignment(1, {"epoch": 2}), sent_today={})
    table.apply(wire.Assignment(generation=2, leases=[]), sent_today={})
    assert table.valid() == []
    with pytest.raises(leases.StaleEpoch) as refused:
        table.apply(_assignment(3, {"epoch": 1}), sent_today={})
    assert refused.value.code == "staleEpoch" and isinstance(refused.value,
                                                             leases.StaleAssignment)
    assert table.valid() == []
    change = table.apply(_assignment(4, {"epoch": 3}), sent_today={})
    assert change.granted == (IP,) and table.get(IP).epoch == 3  # type: ignore[union-attr]
    with pytest.raises(leases.StaleEpoch):
        table.apply(_assignment(5, {"epoch": 2}), sent_today={})


def test_a_late_renewal_never_revives_a_lease_that_ran_out() -> None:
    """A renewal queued while the process was frozen arrives after its lease ran out (and the
    IP may already send from another pod): the same epoch does not come back; a new grant
    (a higher epoch) does."""
    time, table = _table()
    table.apply(_assignment(1, {"ttlSeconds": 5, "epoch": 4}), sent_today={})
    time.mono_now += 6  # frozen past the lease
    change = table.apply(_assignment(2, {"ttlSeconds": 5, "epoch": 4}), sent_today={})
    assert change.granted == () and table.valid() == []
    assert table.get(IP) is None
    change = table.apply(_assignment(3, {"ttlSeconds": 5, "epoch": 5}), sent_today={})
    assert change.granted == (IP,) and [s.address for s in table.valid()] == [IP]


def test_a_revoked_lease_is_not_revived_by_a_renewal_of_the_same_epoch() -> None:
    _, table = _table()
    table.apply(_assignment(1, {"epoch": 2}), sent_today={})
    table.apply(wire.Assignment(generation=2, leases=[]), sent_today={})
    table.apply(_assignment(3, {"epoch": 2}), sent_today={})
    assert table.valid() == []


def test_renewal_with_the_same_grant_and_epoch_keeps_the_usage_counters() -> None:
    _, table = _table()
    table.apply(_assignment(1, {"quotaRemaining": 10, "leaseId": "a", "epoch": 7}),
                sent_today={})
    source = table.get(IP)
    assert source is not None
    source.used = 4
    table.apply(_assignment(2, {"quotaRemaining": 10, "leaseId": "a", "epoch": 7}),
                sent_today={})
    assert source.quota_left() == 6
    # A higher epoch is a new grant (the IP moved and came back): the count starts again.
    table.apply(_assignment(3, {"quotaRemaining": 10, "leaseId": "a", "epoch": 8}),
                sent_today={}, in_flight={IP: 1})
    assert source.quota_left() == 9


@pytest.mark.parametrize(
    ("basis", "sent_today", "in_flight", "left"),
    [
        (None, {}, {IP: 3}, 7),
        (None, {IP: 50}, {}, 10),
        (40, {IP: 43}, {IP: 3}, 7),
    ],
    ids=[
        "without a basis the deliveries in flight at the grant count against it",
        "without a basis what was sent before the grant is already in the figure",
        "with a basis the in-flight ones are in sentToday and not counted twice",
    ],
)
def test_a_new_grant_starts_its_count_from_its_basis_or_from_the_deliveries_in_flight(
    basis: int | None, sent_today: dict[str, int], in_flight: dict[str, int], left: int,
) -> None:
    _, table = _table()
    table.apply(_assignment(1, {"quotaRemaining": 10, "leaseId": "a", "sentTodayBasis": basis}),
                sent_today=sent_today, in_flight=in_flight)
    source = table.get(IP)
    assert source is not None and source.quota_left() == left


def test_leases_revoke_missing_ips_refuse_stale_generations_and_count_quota() -> None:
    time, table = _table()
    change = table.apply(_assignment(1, {"quotaRemaining": 10, "leaseId": "a"}), sent_today={})
    assert change.granted == (IP,)
    source = table.get(IP)
    assert source is not None
    source.used = 4
    table.apply(_assignment(3, {"quotaRemaining": 10, "leaseId": "b", "sentTodayBasis": 90}),
                sent_today={IP: 93})
    assert source.quota_left() == 7  # stale read corrected
    with pytest.raises(leases.StaleAssignment, match="generation 2 is older than 3") as refused:
        table.apply(_assignment(2), sent_today={})
    assert refused.value.code == "stale"
    change = table.apply(wire.Assignment(generation=4, leases=[]), sent_today={})
    assert change.revoked == (IP,) and table.valid() == []
    assert not source.valid(time.mono_now) and source.remaining(time.mono_now) == 0.0


@pytest.mark.parametrize(
    "lease",
    [
        {"address": IP, "heloName": "h", "ttlSeconds": 0, "epoch": 0},
        {"address": IP, "heloName": "h", "ttlSeconds": 30, "epoch": -1},
        {"address": IP, "heloName": "h", "epoch": 0},
        {"address": IP, "heloName": "h", "ttlSeconds": 30},
        {"address": IP, "heloName": "h", "ttlSeconds": 30, "epoch": 0,
         "expiresAt": "2030-01-01T00:00:00Z"},
    ],
    ids=["a zero TTL is refused", "a negative epoch is refused", "the TTL is required",
         "the epoch is required", "a wall-clock expiresAt is an unknown field"],
)
def test_lease_wire_validation(lease: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        wire.Assignment.model_validate({"generation": 1, "leases": [lease]})


def test_a_fresh_pod_takes_generation_zero_and_a_retried_put_of_the_same_generation() -> None:
    _, table = _table()
    table.apply(_assignment(0, {}), sent_today={})
    assert [s.address for s in table.valid()] == [IP]
    change = table.apply(_assignment(0, {}), sent_today={})  # the operator retried the same PUT
    assert change == leases.Change(granted=(), revoked=()) and table.generation == 0


def test_a_grant_carries_what_the_operator_sent() -> None:
    _, table = _table()
    table.apply(_assignment(1, {"heloName": "mta1.example.com", "leaseId": "g-7", "warmup": True,
                                "classes": ["bulk", "alerts"], "quotaRemaining": 50}),
                sent_today={})
    source = table.get(IP)
    assert source is not None
    assert (source.helo_name, source.lease_id, source.warmup, source.quota) == (
        "mta1.example.com", "g-7", True, 50)
    assert source.classes == frozenset({"bulk", "alerts"})
    assert source.allows("bulk") and not source.allows("transactional")
    table.apply(_assignment(2, {"leaseId": "g-8"}), sent_today={})
    assert source.classes is None and source.allows("transactional")
    assert (source.helo_name, source.warmup, source.quota) == ("h", False, None)


def test_a_spent_or_overdrawn_quota_leaves_nothing() -> None:
    _, table = _table()
    table.apply(_assignment(1, {"quotaRemaining": 5}), sent_today={})
    source = table.get(IP)
    assert source is not None
    source.used = 5
    assert source.quota_left() == 0
    source.used = 7
    assert source.quota_left() == 0


@pytest.mark.parametrize(
    ("basis", "sent_today", "in_flight", "left"),
    [
        pytest.param(90, {IP: 90}, None, 10, id="nothing sent since the basis: all of it"),
        pytest.param(90, {IP: 85}, None, 10, id="a basis above today's count takes nothing"),
        pytest.param(0, {}, None, 10, id="a basis of zero and nothing counted: all of it"),
        pytest.param(90, {"10.0.0.9": 500}, None, 10,
                     id="another IP's count is not this one's"),
        pytest.param(None, {IP: 40}, {"10.0.0.9": 3}, 10,
                     id="without a basis only this IP's deliveries in flight count"),
        pytest.param(None, {IP: 40}, {IP: 3}, 7, id="deliveries in flight at the grant count"),
    ],
)
def test_a_new_grant_counts_only_what_the_operator_could_not_see(
    basis: int | None, sent_today: dict[str, int], in_flight: dict[str, int] | None, left: int
) -> None:
    _, table = _table()
    lease: dict[str, object] = {"quotaRemaining": 10}
    if basis is not None:
        lease["sentTodayBasis"] = basis
    table.apply(_assignment(1, lease), sent_today=sent_today, in_flight=in_flight)
    source = table.get(IP)
    assert source is not None and source.quota_left() == left


@pytest.mark.parametrize("ends", ["runs out", "is revoked"])
def test_after_an_epoch_zero_lease_ends_the_next_epoch_is_granted(ends: str) -> None:
    time, table = _table()
    table.apply(_assignment(1, {"ttlSeconds": 5, "epoch": 0}), sent_today={})
    if ends == "runs out":
        time.mono_now += 6
    else:
        table.apply(wire.Assignment(generation=2, leases=[]), sent_today={})
    table.apply(_assignment(3, {"ttlSeconds": 5, "epoch": 1}), sent_today={})
    assert [s.address for s in table.valid()] == [IP]


def test_an_ended_lease_in_an_assignment_does_not_hide_the_leases_after_it() -> None:
    time, table = _table()
    table.apply(_assignment(1, {"ttlSeconds": 5, "epoch": 4}), sent_today={})
    time.mono_now += 6
    change = table.apply(
        _assignment(2, {"ttlSeconds": 5, "epoch": 4}, {"address": "10.0.0.2", "epoch": 1}),
        sent_today={},
    )
    assert change.granted == ("10.0.0.2",)
    assert [s.address for s in table.valid()] == ["10.0.0.2"]
