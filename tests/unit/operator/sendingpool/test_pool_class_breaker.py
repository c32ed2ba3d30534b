"""The reputation breaker per class, from the senders' rolling windows (`rates.byClass`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import reputation
from mailfleet_operator.reconcile import pool_policy
from mailfleet_operator.reconcile import sendingpool as reconciler
from mailfleet_sender import wire

NOW = datetime(2025, 1, 1, 12, tzinfo=UTC)
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}


@pytest.mark.parametrize(
    ("wanted", "label"),
    [
        pytest.param(timedelta(hours=24), "24h", id="the same length when the senders report it"),
        pytest.param(timedelta(hours=6), "1h", id="else the longest shorter window"),
        pytest.param(timedelta(minutes=10), "1h", id="else the shortest window"),
    ],
)
def test_the_sender_window_standing_for_the_spec_window(wanted: timedelta, label: str) -> None:
    assert reputation.pick_window(WINDOWS, wanted) == label


def window(final: int, hard: int = 0, complaints: int = 0) -> wire.WindowRates:
    return wire.WindowRates(final=final, hard_bounce=hard, complaint=complaints)


def pod(name: str, **classes: wire.WindowRates) -> wire.Stats:
    by_class = {cls: {"1h": window(0), "24h": w} for cls, w in classes.items()}
    return wire.Stats(pod=name, rates=wire.Rates(by_class=by_class))


SPEC = sp.SendingPoolSpec.model_validate(
    {
        "replicas": 2,
        "classes": [
            {"name": "transactional", "priority": 10},
            {"name": "marketing", "priority": 1},
        ],
        "reputation": {"minMessages": 100},
    }
)


def test_a_class_with_a_bad_bounce_rate_over_all_pods_is_paused_alone() -> None:
    memory = reconciler.PoolMemory()
    memory.stats = {
        "mail-0": pod("mail-0", marketing=window(100, hard=8), transactional=window(500)),
        "mail-1": pod("mail-1", marketing=window(100, hard=14), transactional=window(500, 1)),
    }
    outcome = pool_policy.run_breaker(SPEC, {}, memory, NOW)
    assert outcome.newly_paused == ("marketing",)  # 22 of 200 = 11 % >= 10 %
    assert outcome.paused_classes == ("marketing",) and not outcome.pool_paused
    assert "class marketing" in outcome.state.reasons["marketing"]


def test_after_a_resume_classes_are_judged_again_only_once_a_whole_window_followed() -> None:
    memory = reconciler.PoolMemory()
    memory.stats = {"mail-0": pod("mail-0", marketing=window(200, hard=40))}
    since = NOW - timedelta(hours=2)  # resumed 2 h ago: the 24 h window still holds old mail
    state = f'{{"paused": [], "since": "{since.isoformat()}", "resumeToken": "a"}}'
    annotations = {pool_policy.BREAKER_ANNOTATION: state, pool_policy.RESUME_ANNOTATION: "a"}
    assert pool_policy.run_breaker(SPEC, annotations, memory, NOW).newly_paused == ()
    later = NOW + timedelta(hours=23)
    assert pool_policy.run_breaker(SPEC, annotations, memory, later).newly_paused == (
        "marketing",
    )
