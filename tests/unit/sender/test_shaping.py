"""Reactive shaping: throttled providers slow down, get suspended when it persists, recover."""

from __future__ import annotations

import pydantic
import pytest
from mailfleet_sender import bounces, shaping

THROTTLED = bounces.classify_reply(421, "4.7.0 [TSS04] temporarily deferred", provider="yahoo")
BLOCKED = bounces.classify_reply(554, "5.7.1 blocked using zen.spamhaus.org")
DELIVERED = bounces.classify_reply(250, "2.0.0 OK")

RULE = shaping.ShapingRule(
    threshold=3, window="60s", cooldown="10s", backoff_factor=0.5, min_factor=0.1,
    suspend_after=3, suspend_for="10m", recover_every="60s", recover_step=0.25,
)


def _shaper() -> shaping.Shaper:
    return shaping.Shaper(shaping.ShapingRules(default=RULE, providers={}))


def _throttle(shaper: shaping.Shaper, at: float, times: int = 3) -> None:
    for i in range(times):
        shaper.observe("example", THROTTLED, at + i * 0.1)


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ([THROTTLED, THROTTLED], 1.0),
        ([THROTTLED, THROTTLED, THROTTLED], 0.5),
        ([BLOCKED] * 10, 1.0),
        ([DELIVERED] * 10, 1.0),
        ([THROTTLED, DELIVERED, THROTTLED, DELIVERED, THROTTLED], 0.5),
    ],
    ids=[
        "fewer throttles than the threshold change nothing",
        "the threshold within the window halves the rate",
        "blocks do not slow a provider down (reputation is not cured by speed)",
        "deliveries do not change the rate",
        "deliveries in between do not reset the count of throttles",
    ],
)
def test_backoff_from_a_burst_of_replies(
    replies: list[bounces.Classification], expected: float
) -> None:
    shaper = _shaper()
    for i, reply in enumerate(replies):
        shaper.observe("example", reply, 100.0 + i)
    assert shaper.rate_factor("example", 100.0 + len(replies)) == expected


def test_throttles_spread_wider_than_the_window_do_not_trigger() -> None:
    shaper = _shaper()
    for at in (0.0, 61.0, 122.0, 183.0):
        shaper.observe("example", THROTTLED, at)
    assert shaper.rate_factor("example", 184.0) == 1.0


def test_replies_in_the_cooldown_do_not_cascade() -> None:
    shaper = _shaper()
    _throttle(shaper, 0.0)
    _throttle(shaper, 1.0, times=6)  # in flight before the slowdown took effect
    assert shaper.rate_factor("example", 9.0) == 0.5
    _throttle(shaper, 11.0)
    assert shaper.rate_factor("example", 12.0) == 0.25


def test_repeated_backoffs_suspend_then_resume_slowly() -> None:
    shaper = _shaper()
    _throttle(shaper, 0.0)
    _throttle(shaper, 20.0)
    _throttle(shaper, 40.0)
    assert shaper.rate_factor("example", 41.0) == 0.0
    until = shaper.suspended_until("example")
    assert until is not None and until == pytest.approx(40.2 + 600.0)
    # Throttles while suspended (late replies) change nothing.
    _throttle(shaper, 100.0)
    assert shaper.suspended_until("example") == until
    assert shaper.rate_factor("example", until - 1) == 0.0
    assert shaper.rate_factor("example", until) == 0.1
    assert shaper.suspended_until("example") is None


def test_recovery_is_gradual_and_ends_at_the_configured_rate() -> None:
    shaper = _shaper()
    _throttle(shaper, 0.0)
    _throttle(shaper, 20.0)  # factor 0.25
    start = 20.2
    observed = [shaper.rate_factor("example", start + 60.0 * k) for k in range(5)]
    assert observed == [0.25, 0.5, 0.75, 1.0, 1.0]
    kinds = [event.transition for event in shaper.drain_events()]
    assert kinds == [
        shaping.Transition.BACKOFF, shaping.Transition.BACKOFF, shaping.Transition.RECOVER,
        shaping.Transition.RECOVER, shaping.Transition.RECOVERED,
    ]
    assert shaper.drain_events() == []


def test_a_throttle_during_recovery_postpones_the_next_step() -> None:
    shaper = _shaper()
    _throttle(shaper, 0.0)  # 0.5 at 0.2
    shaper.observe("example", THROTTLED, 50.0)  # not quiet: the next step waits 60 s from here
    assert shaper.rate_factor("example", 100.0) == 0.5
    assert shaper.rate_factor("example", 110.0) == 0.75


def test_full_recovery_forgets_earlier_backoffs() -> None:
    shaper = _shaper()
    _throttle(shaper, 0.0)
    _throttle(shaper, 20.0)
    assert shaper.rate_factor("example", 1000.0) == 1.0
    _throttle(shaper, 1000.0)
    assert shaper.rate_factor("example", 1001.0) == 0.5  # a backoff, not a suspension


def test_the_factor_never_drops_below_the_floor() -> None:
    rule = RULE.model_copy(update={"suspend_after": 100, "min_factor": 0.2})
    shaper = shaping.Shaper(shaping.ShapingRules(default=rule, providers={}))
    for k in range(10):
        _throttle(shaper, k * 15.0)
    assert shaper.rate_factor("example", 150.0) == 0.2


def test_providers_are_shaped_independently_and_by_case_insensitive_name() -> None:
    shaper = shaping.Shaper()
    for i in range(3):
        shaper.observe("Gmail", THROTTLED, float(i))
    assert shaper.rate_factor("gmail", 3.0) == 0.5
    assert shaper.rate_factor("outlook", 3.0) == 1.0


def test_big_providers_have_defaults_and_unknown_ones_use_the_default_rule() -> None:
    rules = shaping.ShapingRules()
    for name in ("gmail", "outlook", "yahoo", "apple", "orange", "free", "gmx"):
        assert name in rules.providers
    assert rules.for_provider("Yahoo").threshold == 2
    assert rules.for_provider("example.net") == rules.default


def test_rules_are_strict_config() -> None:
    parsed = shaping.ShapingRules.model_validate(
        {"default": {"threshold": 5, "backoffFactor": 0.7, "recoverEvery": "30s"},
         "providers": {"gmail": {"suspendFor": "1h"}}}
    )
    assert parsed.default.backoff_factor == 0.7
    assert parsed.default.recover_every_s == 30.0
    assert parsed.for_provider("gmail").suspend_for_s == 3600.0
    # A given entry replaces the built-in one of its name; the other built-ins stay.
    assert parsed.for_provider("yahoo") == shaping.DEFAULT_PROVIDER_RULES["yahoo"]
    with pytest.raises(pydantic.ValidationError, match="threshhold"):
        shaping.ShapingRules.model_validate({"default": {"threshhold": 3}})
    with pytest.raises(pydantic.ValidationError, match="backoffFactor"):
        shaping.ShapingRules.model_validate({"default": {"backoffFactor": 1.5}})
    with pytest.raises(pydantic.ValidationError, match="duration"):
        shaping.ShapingRules.model_validate({"default": {"window": "soon"}})


def test_state_is_exposed_for_stats_without_being_shared() -> None:
    shaper = _shaper()
    _throttle(shaper, 0.0)
    snapshot = shaper.state("example", 1.0)
    snapshot.factor = 99.0
    assert shaper.rate_factor("example", 1.0) == 0.5
    assert snapshot.backoffs == 1
