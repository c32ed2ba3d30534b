"""Per-IP day figures across pods and sender days, and the decision over several IPs."""

from __future__ import annotations

import datetime

import pytest
from mailfleet_operator.logic import warmup_clock, warmup_gates, warmup_progress

F = warmup_gates.DayFigures
UTC = datetime.UTC


def reading(
    pod: str, day: int, sent: int, ip: str = "192.0.2.1", **more: int
) -> warmup_progress.PodReading:
    return warmup_progress.PodReading(pod, ip, day, F(sent=sent, **more))


def test_counts_keep_each_pods_highest_figure_and_sum_pods_that_held_the_ip() -> None:
    counts = warmup_progress.merge_readings(
        {}, [reading("a", 10, 40), reading("b", 10, 5)], keep_from_day=9
    )
    # a stopped answering (no reading), b sent more; a reset counter never lowers a figure.
    counts = warmup_progress.merge_readings(
        counts, [reading("b", 10, 30, hard_bounces=2), reading("b", 11, 1)], keep_from_day=9
    )
    assert warmup_progress.figures_for(counts, address="192.0.2.1", sender_day=10) == F(
        sent=70, hard_bounces=2
    )
    assert warmup_progress.figures_for(counts, address="192.0.2.1", sender_day=11).sent == 1
    dropped = warmup_progress.merge_readings(counts, [], keep_from_day=11)
    assert warmup_progress.figures_for(dropped, address="192.0.2.1", sender_day=10) == F()


@pytest.mark.parametrize(
    ("clock", "instant", "seconds", "expected"),
    [
        pytest.param(
            warmup_clock.ScaledDays(origin=warmup_progress.EPOCH, seconds_per_day=100),
            datetime.datetime.fromtimestamp(1_000_050, UTC),
            100.0,
            10_000,
            id="a scaled warm-up day is exactly one sender day of the same length",
        ),
        pytest.param(
            warmup_clock.CalendarDays("UTC"),
            datetime.datetime(2025, 3, 1, 23, 59, tzinfo=UTC),
            86400.0,
            (datetime.date(2025, 3, 1) - datetime.date(1970, 1, 1)).days,
            id="a UTC calendar day is the sender's UTC day",
        ),
        pytest.param(
            warmup_clock.CalendarDays("Europe/Paris"),
            datetime.datetime(2025, 3, 1, 23, 30, tzinfo=UTC),  # 00:30 on 2 March in Paris
            86400.0,
            (datetime.date(2025, 3, 2) - datetime.date(1970, 1, 1)).days,
            id="a Paris day is read from the UTC sender day that overlaps most of it",
        ),
    ],
)
def test_sender_day_of_a_warmup_day(
    clock: warmup_clock.DayClock, instant: datetime.datetime, seconds: float, expected: int
) -> None:
    start, end = clock.day_start(instant), clock.day_end(instant)
    assert warmup_progress.sender_day_of(start, end, sender_day_seconds=seconds) == expected


def test_one_bad_ip_holds_the_whole_warmup_and_the_event_names_every_ip() -> None:
    safety = warmup_gates.SafetyPolicy(on_violation=warmup_gates.OnViolation.ROLLBACK)

    def judge(figures: F) -> warmup_gates.Decision:
        return warmup_gates.evaluate_day(
            day=3, quota=100, target=1000, figures=figures, safety=safety
        )

    group = warmup_progress.decide_group(
        [
            ("192.0.2.1", judge(F(sent=100, delivered=100))),
            ("192.0.2.2", judge(F(sent=100, delivered=100, complaints=1))),
            ("192.0.2.3", judge(F(sent=10))),
        ]
    )
    assert (group.action, group.address, group.decisive.next_day) == (
        warmup_gates.Action.ROLLBACK,
        "192.0.2.2",
        2,
    )
    assert group.history_row().reason == "ComplaintRateExceeded"
    assert all(f"IP 192.0.2.{n}:" in group.message() for n in (1, 2, 3))


def test_a_gate_pause_lifted_by_a_person_runs_again_and_a_spec_pause_wins() -> None:
    phase = warmup_progress.phase_of
    pause = warmup_gates.Action.PAUSE
    assert phase(problem=None, started=True, paused=False, last_action=pause) == "WarmingUp"
    assert phase(problem=None, started=True, paused=True, last_action=None) == "Paused"
    complete = warmup_gates.Action.COMPLETE
    assert phase(problem=None, started=True, paused=True, last_action=complete) == "Completed"


def test_a_day_is_judged_only_once_every_pod_reported_its_figures() -> None:
    answer = warmup_progress.PodAnswer
    ended = 100
    past = frozenset(range(93, 100 + 1))
    assert warmup_progress.missing_figures(
        ["a", "b"], {"a": answer(101, past), "b": answer(101, past)}, day=ended
    ) == []
    # b did not answer; c's own day has not ended yet (clock skew).
    assert warmup_progress.missing_figures(
        ["a", "b", "c"], {"a": answer(101, past), "c": answer(100, frozenset())}, day=ended
    ) == ["b", "c"]
    # A sender without per-day counters, or a day older than it keeps: judged on what was seen.
    assert warmup_progress.missing_figures(["a"], {"a": answer(101, None)}, day=ended) == []
    assert warmup_progress.missing_figures(["a"], {"a": answer(120, past)}, day=ended) == []
    assert warmup_progress.missing_figures([], {}, day=ended) == []
