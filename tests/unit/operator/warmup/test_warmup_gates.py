"""Day-end decisions: a warming IP advances only when the safety gates pass and enough was
sent; otherwise it holds, rolls back or pauses as the spec says. Every figure is in the
message a user reads in the event."""

from __future__ import annotations

import pytest
from mailfleet_operator.api import ipwarmup
from mailfleet_operator.logic import warmup_gates
from mailfleet_operator.logic.warmup_gates import Action, DayFigures, OnViolation, SafetyPolicy

STRICT = SafetyPolicy(
    max_bounce_rate=0.02,
    max_complaint_rate=0.001,
    max_deferral_rate=0.1,
    min_volume_ratio=0.8,
    on_violation=OnViolation.HOLD,
    rollback_days=2,
)
ROLLBACK = SafetyPolicy(**{**STRICT.__dict__, "on_violation": OnViolation.ROLLBACK})
PAUSE = SafetyPolicy(**{**STRICT.__dict__, "on_violation": OnViolation.PAUSE})
CLEAN = DayFigures(sent=1000, delivered=990, hard_bounces=5, complaints=0, deferrals=20)
BOUNCY = DayFigures(sent=1000, delivered=900, hard_bounces=80, complaints=0, deferrals=20)


@pytest.mark.parametrize(
    ("day", "quota", "figures", "safety", "listed", "action", "next_day", "reason"),
    [
        pytest.param(
            3, 1000, CLEAN, STRICT, (), Action.ADVANCE, 4, "GatesPassed",
            id="a clean day at full volume advances to the next day",
        ),
        pytest.param(
            3, 1000, DayFigures(sent=800, delivered=800), STRICT, (), Action.ADVANCE, 4,
            "GatesPassed", id="sending exactly the minimum volume ratio is enough",
        ),
        pytest.param(
            3, 1000, DayFigures(sent=799, delivered=799), STRICT, (), Action.HOLD, 3,
            "VolumeTooLow", id="one message short of the minimum volume holds the same quota",
        ),
        pytest.param(
            3, 1000, DayFigures(), ROLLBACK, (), Action.HOLD, 3, "VolumeTooLow",
            id="a day with nothing sent holds even when violations roll back",
        ),
        pytest.param(
            3, 1000, BOUNCY, STRICT, (), Action.HOLD, 3, "BounceRateExceeded",
            id="too many hard bounces hold when onViolation is Hold",
        ),
        pytest.param(
            5, 1000, BOUNCY, ROLLBACK, (), Action.ROLLBACK, 3, "BounceRateExceeded",
            id="too many hard bounces roll back rollbackDays when onViolation is Rollback",
        ),
        pytest.param(
            2, 1000, BOUNCY, ROLLBACK, (), Action.ROLLBACK, 1, "BounceRateExceeded",
            id="a rollback never goes below day one",
        ),
        pytest.param(
            3, 1000, BOUNCY, PAUSE, (), Action.PAUSE, 3, "BounceRateExceeded",
            id="too many hard bounces pause when onViolation is Pause",
        ),
        pytest.param(
            3, 1000, DayFigures(sent=1000, delivered=1000, complaints=2), STRICT, (), Action.HOLD,
            3, "ComplaintRateExceeded", id="two complaints per thousand delivered breach 0.1 %",
        ),
        pytest.param(
            3, 1000, DayFigures(sent=1000, delivered=1000, complaints=1), STRICT, (),
            Action.ADVANCE, 4, "GatesPassed", id="a rate exactly at its maximum passes",
        ),
        pytest.param(
            3, 1000, DayFigures(sent=1000, delivered=1000, deferrals=150), STRICT, (),
            Action.HOLD, 3, "DeferralRateExceeded", id="providers throttling the IP hold it",
        ),
        pytest.param(
            3, 1000, DayFigures(sent=10, delivered=5, complaints=3), ROLLBACK, (),
            Action.ROLLBACK, 1, "ComplaintRateExceeded",
            id="complaints are judged even on a low volume day",
        ),
        pytest.param(
            3, 1000, CLEAN, ROLLBACK, ("zen.example.org",), Action.HOLD, 3, "ListedOnDNSBL",
            id="a DNSBL listing holds the IP even on a clean day",
        ),
        pytest.param(
            10, 5000, DayFigures(sent=5000, delivered=5000), STRICT, (), Action.COMPLETE, 10,
            "TargetReached", id="a clean day at the target completes the warm-up",
        ),
        pytest.param(
            10, 5000, DayFigures(sent=1000, delivered=1000), STRICT, (), Action.HOLD, 10,
            "VolumeTooLow", id="the target day must be sent in volume before completing",
        ),
    ],
)
def test_evaluate_day(
    day: int,
    quota: int,
    figures: DayFigures,
    safety: SafetyPolicy,
    listed: tuple[str, ...],
    action: Action,
    next_day: int,
    reason: str,
) -> None:
    decision = warmup_gates.evaluate_day(
        day=day, quota=quota, target=5000, figures=figures, safety=safety, dnsbl_listed=listed
    )
    assert (decision.action, decision.next_day, decision.reason) == (action, next_day, reason)
    assert decision.message.startswith(f"Day {day}: ")
    assert f"sent {figures.sent}/{quota}" in decision.message


def test_every_breached_gate_is_listed_with_the_most_serious_first() -> None:
    figures = DayFigures(sent=1000, delivered=900, hard_bounces=80, complaints=5, deferrals=300)
    decision = warmup_gates.evaluate_day(
        day=4, quota=1000, target=5000, figures=figures, safety=STRICT
    )
    assert decision.violations == (
        "ComplaintRateExceeded",
        "BounceRateExceeded",
        "DeferralRateExceeded",
    )
    assert "bounce rate 8.00 % above the maximum 2.00 %" in decision.message


@pytest.mark.parametrize(
    ("figures", "bounce", "complaint", "deferral"),
    [
        pytest.param(DayFigures(), 0.0, 0.0, 0.0, id="a day with nothing sent has zero rates"),
        pytest.param(
            DayFigures(sent=200, delivered=100, hard_bounces=10, complaints=1, deferrals=50),
            0.05, 0.01, 0.25, id="complaints are counted against delivered mail",
        ),
        pytest.param(
            DayFigures(sent=100, delivered=0, complaints=1), 0.0, 0.01, 0.0,
            id="complaints fall back to sent when no delivery was recorded",
        ),
        pytest.param(
            DayFigures(sent=10, delivered=10, deferrals=40), 0.0, 0.0, 1.0,
            id="a message deferred many times never makes the deferral rate exceed 100 %",
        ),
    ],
)
def test_rates(figures: DayFigures, bounce: float, complaint: float, deferral: float) -> None:
    assert (figures.bounce_rate, figures.complaint_rate, figures.deferral_rate) == pytest.approx(
        (bounce, complaint, deferral)
    )


def test_a_decision_becomes_a_history_row_with_its_figures() -> None:
    decision = warmup_gates.evaluate_day(
        day=5, quota=1000, target=5000, figures=BOUNCY, safety=ROLLBACK
    )
    row = decision.history_row()
    assert row == ipwarmup.DayRecord(
        day=5,
        quota=1000,
        sent=1000,
        bounce_rate=0.08,
        complaint_rate=0.0,
        deferral_rate=0.02,
        decision="Rollback",
        reason="BounceRateExceeded",
    )


def test_the_spec_safety_block_maps_to_the_policy_with_the_api_defaults() -> None:
    assert SafetyPolicy.from_spec(ipwarmup.Safety()) == SafetyPolicy()
    spec = ipwarmup.Safety.model_validate({"onViolation": "Rollback", "rollbackDays": 3})
    policy = SafetyPolicy.from_spec(spec)
    assert (policy.on_violation, policy.rollback_days) == (OnViolation.ROLLBACK, 3)
