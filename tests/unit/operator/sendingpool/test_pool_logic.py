"""Throttle division, autoscaling decisions and the reputation circuit breaker (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from mailfleet_operator.logic import autoscaling, reputation, throttle_division

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rate", "pods", "share"),
    [
        pytest.param("100/s", 4, "25/s", id="a pool-wide 100 msg/s over 4 active pods is 25 each"),
        pytest.param("100/s", 3, "33.333/s", id="uneven shares round down to a thousandth"),
        pytest.param("5000/h", 1, "5000/h", id="a single pod gets the whole limit"),
        pytest.param("300/5m", 2, "150/5m", id="the period of the rate is kept"),
        pytest.param("1/s", 3000, "0.001/s", id="a share never drops to zero"),
    ],
)
def test_rates_are_divided_among_active_pods(rate: str, pods: int, share: str) -> None:
    assert throttle_division.divide_rate_text(rate, pods) == share


def test_shares_never_add_up_to_more_than_the_pool_limit_except_the_one_connection_floor() -> None:
    for pods in range(1, 40):
        limits = throttle_division.divide_limits(
            throttle_division.Limits(
                messages_per_second=20, messages_per_hour=50000, max_connections=10
            ),
            pods,
        )
        assert limits.messages_per_second is not None and limits.messages_per_hour is not None
        assert limits.messages_per_second * pods <= 20
        assert limits.messages_per_hour * pods <= 50000
        assert limits.max_connections == max(1, 10 // pods)


def test_the_divisor_is_the_ip_holders_or_in_relay_mode_the_ready_pods() -> None:
    assert throttle_division.count_active_pods(holders=3, ready_active=5, relay=False) == 3
    assert throttle_division.count_active_pods(holders=0, ready_active=5, relay=True) == 5
    assert throttle_division.count_active_pods(holders=0, ready_active=0, relay=False) == 1
    with pytest.raises(ValueError, match="at least one"):
        throttle_division.divide_count(10, 0)


def decide(
    current: int,
    depth: int,
    history: tuple[autoscaling.Recommendation, ...] = (),
    *,
    at: float = 0,
    complete: bool = True,
) -> autoscaling.ScaleDecision:
    return autoscaling.decide_replicas(
        current=current,
        queue_depth=depth,
        complete=complete,
        target_per_replica=1000,
        min_replicas=1,
        max_replicas=10,
        history=history,
        now=T0 + timedelta(seconds=at),
        window=timedelta(minutes=5),
    )


@pytest.mark.parametrize(
    ("current", "depth", "want", "reason"),
    [
        pytest.param(2, 4500, 5, "QueueAboveTarget", id="a backlog scales up at once"),
        pytest.param(2, 50_000, 10, "QueueAboveTarget", id="never above maxReplicas"),
        pytest.param(
            3,
            0,
            1,
            "QueueBelowTarget",
            id="an empty queue with no history goes down to minReplicas",
        ),
        pytest.param(3, 2500, 3, "Steady", id="a queue on target keeps the count"),
    ],
)
def test_replicas_follow_the_queue(current: int, depth: int, want: int, reason: str) -> None:
    result = decide(current, depth)
    assert (result.replicas, result.reason) == (want, reason)


def test_scale_down_waits_for_the_stabilization_window() -> None:
    first = decide(5, 4800)
    dip = decide(5, 100, first.history, at=60)
    assert (dip.replicas, dip.reason) == (5, "StabilizationWindow")
    later = decide(5, 100, dip.history, at=301)
    assert later.replicas == 1


def test_missing_stats_never_scale_down() -> None:
    assert decide(4, 0, complete=False).replicas == 4
    assert decide(4, 9000, complete=False).replicas == 9


WARN = reputation.Thresholds(bounce_rate=0.05, complaint_rate=0.001)
PAUSE = reputation.Thresholds(bounce_rate=0.10, complaint_rate=0.005)


def sample(
    at: float, scope: str, sent: int, bounced: int = 0, complained: int = 0, source: str = "uid-a"
) -> reputation.Sample:
    return reputation.Sample(
        T0 + timedelta(seconds=at), source, scope, reputation.Counts(sent, bounced, complained)
    )


def test_window_counts_sum_increases_and_survive_counter_resets() -> None:
    samples = [
        sample(0, "*", 1000, 10),
        sample(60, "*", 1500, 20),
        sample(120, "*", 200, 5),  # the pod restarted: its counters began again
        sample(60, "*", 100, 1, source="uid-b"),
        sample(120, "*", 300, 2, source="uid-b"),
    ]
    counts = reputation.window_counts(
        samples, now=T0 + timedelta(seconds=120), window=timedelta(hours=1)
    )
    assert counts["*"] == reputation.Counts(500 + 200 + 200, 10 + 5 + 1, 0)
    recent = reputation.window_counts(
        samples, now=T0 + timedelta(seconds=120), window=timedelta(seconds=50)
    )
    assert recent["*"].sent == 200 + 200


@pytest.mark.parametrize(
    ("counts", "level", "reason"),
    [
        pytest.param(
            reputation.Counts(100, 50, 0),
            reputation.Level.OK,
            "NotEnoughData",
            id="too few messages are never judged",
        ),
        pytest.param(
            reputation.Counts(1000, 20, 0),
            reputation.Level.OK,
            "WithinLimits",
            id="two percent bounces are fine",
        ),
        pytest.param(
            reputation.Counts(1000, 60, 0),
            reputation.Level.WARN,
            "BounceRateWarning",
            id="six percent bounces warn",
        ),
        pytest.param(
            reputation.Counts(1000, 100, 0),
            reputation.Level.PAUSE,
            "BounceRatePaused",
            id="ten percent bounces pause",
        ),
        pytest.param(
            reputation.Counts(1000, 0, 5),
            reputation.Level.PAUSE,
            "ComplaintRatePaused",
            id="half a percent of complaints pause",
        ),
        pytest.param(
            reputation.Counts(1000, 0, 2),
            reputation.Level.WARN,
            "ComplaintRateWarning",
            id="0.2 percent of complaints warn",
        ),
    ],
)
def test_scope_verdicts(counts: reputation.Counts, level: reputation.Level, reason: str) -> None:
    verdict = reputation.judge_scope(
        "marketing", counts, warn_at=WARN, pause_at=PAUSE, min_messages=500
    )
    assert (verdict.level, verdict.reason) == (level, reason)


def run(
    state: reputation.BreakerState, counts: dict[str, reputation.Counts], token: str = ""
) -> reputation.BreakerOutcome:
    return reputation.run_breaker(
        state, counts, warn_at=WARN, pause_at=PAUSE, min_messages=500, resume_token=token, now=T0
    )


def test_a_tripped_class_stays_paused_until_resumed_and_counting_restarts() -> None:
    bad = {
        "*": reputation.Counts(5000, 150, 0),
        "marketing": reputation.Counts(1000, 150, 0),
        "transactional": reputation.Counts(4000, 0, 0),
    }
    tripped = run(reputation.BreakerState(), bad)
    assert tripped.newly_paused == ("marketing",)
    assert tripped.paused_classes == ("marketing",) and not tripped.pool_paused
    better = run(tripped.state, {"marketing": reputation.Counts(1000, 0, 0)})
    assert better.paused_classes == ("marketing",) and better.newly_paused == ()
    resumed = run(better.state, bad, token="ops-1")
    assert resumed.resumed and resumed.state.paused == () and resumed.state.since == T0
    again = run(resumed.state, {}, token="ops-1")
    assert not again.resumed
