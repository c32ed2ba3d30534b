"""Rolling-window counters and the rates the operator's reputation gates read."""

from __future__ import annotations

import pytest
from mailfleet_sender import bounces, rates

Out = rates.Outcome
IP = "203.0.113.7"
HOUR = 3600.0


def _counters() -> rates.RollingCounters:
    return rates.RollingCounters()


def _fill(counters: rates.RollingCounters, now: float, **counts: int) -> None:
    for name, count in counts.items():
        outcome = rates.Outcome[name.upper()]
        counters.record(ip=IP, klass="marketing", outcome=outcome, now=now, count=count)


def test_rates_follow_the_documented_definitions() -> None:
    counters = _counters()
    _fill(counters, 1000.0, delivered=90, hard_bounce=5, soft_bounce=3, blocked=2,
          deferred=8, throttled=2, complaint=1)
    counts = counters.counts("ip", IP, "1h", 1000.0)
    assert counts.final == 100
    assert counts.attempts == 110
    assert counts.bounce_rate == pytest.approx(0.05)
    assert counts.soft_bounce_rate == pytest.approx(0.03)
    assert counts.block_rate == pytest.approx(0.02)
    assert counts.complaint_rate == pytest.approx(1 / 90)
    assert counts.deferral_rate == pytest.approx(10 / 110)


def test_no_traffic_means_no_rate_rather_than_zero() -> None:
    counts = _counters().counts("ip", IP, "24h", 0.0)
    assert counts.bounce_rate is None and counts.complaint_rate is None
    assert counts.deferral_rate is None


@pytest.mark.parametrize(
    ("age", "in_1h", "in_24h"),
    [
        (0.0, 10, 10),
        (HOUR - 61, 10, 10),
        (HOUR + 60, 0, 10),
        (24 * HOUR + 60, 0, 0),
    ],
    ids=[
        "fresh events count in both windows",
        "events just under an hour old still count in the 1h window",
        "events over an hour old leave the 1h window but stay in the 24h one",
        "events over a day old leave every window",
    ],
)
def test_events_age_out_of_each_window(age: float, in_1h: int, in_24h: int) -> None:
    counters = _counters()
    start = 100_000.0
    _fill(counters, start, delivered=10)
    now = start + age
    assert counters.counts("ip", IP, "1h", now)[Out.DELIVERED] == in_1h
    assert counters.counts("ip", IP, "24h", now)[Out.DELIVERED] == in_24h


def test_counts_are_kept_per_ip_and_per_class() -> None:
    counters = _counters()
    counters.record(ip="a", klass="transactional", outcome=Out.DELIVERED, now=0.0)
    counters.record(ip="b", klass="transactional", outcome=Out.HARD_BOUNCE, now=0.0)
    counters.record(ip="b", klass="marketing", outcome=Out.DELIVERED, now=0.0)
    assert counters.keys("ip") == ["a", "b"]
    assert counters.counts("ip", "b", "1h", 0.0).bounce_rate == 0.5
    assert counters.counts("class", "transactional", "1h", 0.0).bounce_rate == 0.5
    assert counters.counts("class", "marketing", "1h", 0.0).bounce_rate == 0.0


def test_snapshot_is_json_ready_for_stats() -> None:
    counters = _counters()
    _fill(counters, 50.0, delivered=3, complaint=1)
    snap = counters.snapshot(60.0)
    body = snap["byIp"][IP]["1h"]
    assert body["delivered"] == 3 and body["complaint"] == 1
    assert body["complaintRate"] == pytest.approx(1 / 3)
    assert set(snap["byClass"]["marketing"]) == {"1h", "24h"}
    assert counters.snapshot(60.0 + 2 * 86400.0)["byIp"][IP]["24h"]["delivered"] == 0


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (250, "ok", Out.DELIVERED),
        (550, "5.1.1 user unknown", Out.HARD_BOUNCE),
        (552, "5.2.2 mailbox full", Out.SOFT_BOUNCE),
        (452, "4.2.2 over quota", Out.DEFERRED),
        (421, "4.7.0 rate limited", Out.THROTTLED),
        (451, "4.7.1 blocked using bl.spamcop.net", Out.DEFERRED),
        (554, "5.7.1 blocked using zen.spamhaus.org", Out.BLOCKED),
    ],
    ids=[
        "a delivery counts as delivered",
        "a hard bounce counts as a bounce",
        "a permanent soft bounce counts as a soft bounce",
        "a temporary soft bounce counts as a deferral, not a bounce",
        "a throttle counts as a throttle",
        "a temporary block counts as a deferral",
        "a permanent block counts as blocked",
    ],
)
def test_replies_map_to_counters(code: int, text: str, expected: rates.Outcome) -> None:
    assert rates.outcome_for(bounces.classify_reply(code, text)) is expected


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="bucket"):
        rates.RollingCounters(windows={"1m": 30.0}, bucket_seconds=60.0)
    with pytest.raises(ValueError, match="count"):
        _counters().record(ip=IP, klass="m", outcome=Out.DELIVERED, now=0.0, count=-1)
