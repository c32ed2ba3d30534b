"""The verdict on a warm-up day as the IPWarmup's status and events say it: the sentence a
user reads, the gates named, the history row, and the edges of each gate (a rate exactly at
its maximum passes). Also the quota arithmetic at its edges: chunks, carry-over, caps."""

from __future__ import annotations

import pytest
from mailfleet_operator.api import ipwarmup
from mailfleet_operator.logic import warmup_quotas
from mailfleet_operator.logic.warmup_gates import (
    Action,
    DayFigures,
    OnViolation,
    SafetyPolicy,
    evaluate_day,
)

CLEAN = DayFigures(sent=1000, delivered=1000)
SUMMARY = ("sent 1000/1000, delivered 1000, hard bounces 0 (0.00 %), complaints 0 (0.00 %), "
           "deferrals 0 (0.00 %)")
BAD = DayFigures(sent=1000, delivered=900, hard_bounces=100, complaints=10, deferrals=300)
BAD_SUMMARY = ("sent 1000/1000, delivered 900, hard bounces 100 (10.00 %), complaints 10 "
               "(1.11 %), deferrals 300 (30.00 %)")
BAD_TEXTS = ("complaint rate 1.11 % above the maximum 0.10 %; bounce rate 10.00 % above the "
             "maximum 5.00 %; deferral rate 30.00 % above the maximum 20.00 %")
ALL_GATES = ("ComplaintRateExceeded", "BounceRateExceeded", "DeferralRateExceeded")


def judge(figures: DayFigures = CLEAN, *, day: int = 3, quota: int = 1000, target: int = 5000,
          safety: SafetyPolicy = SafetyPolicy(), **extra: object):  # type: ignore[no-untyped-def]
    return evaluate_day(day=day, quota=quota, target=target, figures=figures, safety=safety,
                        **extra)  # type: ignore[arg-type]


def test_the_spec_safety_block_becomes_the_policy_field_by_field() -> None:
    spec = ipwarmup.Safety(max_bounce_rate=0.03, max_complaint_rate=0.002,
                           max_deferral_rate=0.4, min_volume_ratio=0.7,
                           on_violation="Rollback", rollback_days=2)
    assert SafetyPolicy.from_spec(spec) == SafetyPolicy(
        max_bounce_rate=0.03, max_complaint_rate=0.002, max_deferral_rate=0.4,
        min_volume_ratio=0.7, on_violation=OnViolation.ROLLBACK, rollback_days=2)


def test_a_clean_day_advances_and_says_to_which_day() -> None:
    verdict = judge()
    assert (verdict.action, verdict.next_day, verdict.reason) == (Action.ADVANCE, 4,
                                                                  "GatesPassed")
    assert verdict.message == f"Day 3: advancing to day 4; {SUMMARY}."
    assert verdict.history_row().reason is None


def test_the_first_day_is_day_one() -> None:
    assert judge(day=1).next_day == 2
    with pytest.raises(ValueError, match="warm-up days start at 1, got 0"):
        judge(day=0)


def test_a_listed_ip_holds_and_names_the_zones() -> None:
    verdict = judge(dnsbl_listed=("zen.example", "bl.example"))
    assert (verdict.action, verdict.next_day, verdict.reason) == (Action.HOLD, 3,
                                                                  "ListedOnDNSBL")
    assert verdict.message == (f"Day 3: holding, the IP is listed on zen.example, bl.example; "
                               f"{SUMMARY}.")


@pytest.mark.parametrize(
    ("on_violation", "rollback_days", "action", "next_day", "text"),
    [
        (OnViolation.HOLD, 1, Action.HOLD, 3, "holding"),
        (OnViolation.PAUSE, 1, Action.PAUSE, 3, "pausing"),
        (OnViolation.ROLLBACK, 1, Action.ROLLBACK, 2, "rolling back to day 2"),
        (OnViolation.ROLLBACK, 0, Action.ROLLBACK, 3, "rolling back to day 3"),
        (OnViolation.ROLLBACK, 5, Action.ROLLBACK, 1, "rolling back to day 1"),
    ],
)
def test_a_breach_names_every_gate_worst_first(
    on_violation: OnViolation, rollback_days: int, action: Action, next_day: int, text: str
) -> None:
    safety = SafetyPolicy(on_violation=on_violation, rollback_days=rollback_days)
    verdict = judge(BAD, safety=safety)
    assert (verdict.action, verdict.next_day) == (action, next_day)
    assert verdict.reason == "ComplaintRateExceeded" and verdict.violations == ALL_GATES
    assert verdict.message == f"Day 3: {text}, {BAD_TEXTS}; {BAD_SUMMARY}."
    assert verdict.history_row().reason == "ComplaintRateExceeded"


def test_a_rate_exactly_at_its_maximum_passes() -> None:
    at_limits = DayFigures(sent=1000, delivered=1000, hard_bounces=50, complaints=1,
                           deferrals=200)
    assert judge(at_limits).action is Action.ADVANCE
    over = DayFigures(sent=1000, delivered=1000, hard_bounces=51)
    assert judge(over).violations == ("BounceRateExceeded",)


def test_too_little_volume_holds_and_says_how_much_was_needed() -> None:
    verdict = judge(DayFigures(sent=499, delivered=499))
    assert (verdict.action, verdict.reason) == (Action.HOLD, "VolumeTooLow")
    assert verdict.message.startswith(
        "Day 3: holding, sent 499 but 500 needed (0.5 of the quota 1000) to judge the day; ")


def test_the_target_day_completes_the_warmup() -> None:
    verdict = judge(quota=5000, figures=DayFigures(sent=5000, delivered=5000))
    assert (verdict.action, verdict.reason) == (Action.COMPLETE, "TargetReached")
    assert verdict.message.startswith("Day 3: complete, the target 5000 was sent cleanly; ")


def test_the_history_row_keeps_six_decimals_of_each_rate() -> None:
    figures = DayFigures(sent=3, delivered=3, hard_bounces=1, complaints=1, deferrals=1)
    row = judge(figures, quota=3).history_row()
    assert (row.bounce_rate, row.complaint_rate, row.deferral_rate) == (0.333333, 0.333333,
                                                                         0.333333)
    assert (row.day, row.quota, row.sent, row.decision) == (3, 3, 3, "Hold")


def test_one_message_sent_and_bounced_is_a_full_bounce_rate() -> None:
    assert DayFigures(sent=1, hard_bounces=1).bounce_rate == 1.0
    assert DayFigures(sent=1, delivered=1, complaints=1).complaint_rate == 1.0


def test_a_chunk_follows_the_pace_or_the_observed_rate_whichever_is_faster() -> None:
    base = {"daily_quota": 86_400, "day_seconds": 86_400.0, "renew_interval": 10.0,
            "floor": 1, "renewals": 1.0}
    assert warmup_quotas.quota_chunk(**base) == 10  # 1/s for 10 s
    assert warmup_quotas.quota_chunk(**base, observed_rate=3.0) == 30
    assert warmup_quotas.quota_chunk(**{**base, "day_seconds": 0.0}) == 1
    assert warmup_quotas.quota_chunk(**{**base, "day_seconds": 1.0, "daily_quota": 1}) == 10
    assert warmup_quotas.quota_chunk(**{**base, "daily_quota": 0}) == 1
    assert warmup_quotas.quota_chunk(**{**base, "daily_quota": 0}, observed_rate=-5.0) == 1
    assert warmup_quotas.quota_chunk(**{**base, "daily_quota": 0, "floor": 0}) == 0
    assert warmup_quotas.quota_chunk(**base, fixed=1) == 1
    assert warmup_quotas.quota_chunk(**base, fixed=0) == 1


def test_only_unsent_grants_of_pods_without_a_final_count_carry_over() -> None:
    carried = warmup_quotas.carry_over(
        sent={"a": 9, "b": 10, "c": 2}, allowance={"a": 10, "b": 10, "c": 10, "d": 4},
        final=["c"],
    )
    assert carried == {"a": 1, "d": 4}


def test_provider_caps_left_today_never_go_negative() -> None:
    assert warmup_quotas.remaining_provider_caps(
        {"gmail": 100, "yahoo": 50, "outlook": 10}, {"gmail": 40, "outlook": 30}
    ) == {"gmail": 60, "yahoo": 50, "outlook": 0}


def test_a_send_rate_needs_readings_at_least_the_minimum_span_apart() -> None:
    assert warmup_quotas.send_rate((100.0, 10), (100.25, 20), min_span=0.25) == 40.0
    assert warmup_quotas.send_rate((100.0, 10), (100.5, 20), min_span=0.2) == pytest.approx(20.0)
    assert warmup_quotas.send_rate((100.0, 10), (100.1, 20), min_span=0.2) is None
    assert warmup_quotas.send_rate(None, (100.0, 20), min_span=0.2) is None


def test_a_chunk_of_zero_grants_nothing() -> None:
    holders = [warmup_quotas.HolderUsage(pod="p-0", sent=10)]
    assert warmup_quotas.lease_quota(daily_quota=100, holders=holders, chunk=0) == 0
    assert warmup_quotas.lease_quota(daily_quota=100, holders=holders, chunk=-3) == 0
    assert warmup_quotas.lease_quota(daily_quota=100, holders=holders, chunk=30) == 30
