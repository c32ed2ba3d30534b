"""Condition lists with Kubernetes semantics: lastTransitionTime moves only on a flip."""

from __future__ import annotations

import datetime

from mailfleet_operator.logic import conditions

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def test_a_new_reason_with_the_same_status_keeps_the_transition_time() -> None:
    first = conditions.set_conditions(
        [], [conditions.Verdict("SPFValid", False, "NotPublished", "a")], now=T0,
        observed_generation=1,
    )
    second = conditions.set_conditions(
        first, [conditions.Verdict("SPFValid", False, "WrongValue", "b")], now=T1,
        observed_generation=2,
    )
    assert second[0].last_transition_time == T0
    assert (second[0].reason, second[0].observed_generation) == ("WrongValue", 2)
    assert [c.type for c in conditions.changed_conditions(first, second)] == ["SPFValid"]


def test_a_flip_moves_the_transition_time_and_other_types_are_kept_in_order() -> None:
    first = conditions.set_conditions(
        [], [conditions.Verdict("A", False, "No"), conditions.Verdict("B", True, "Yes")],
        now=T0, observed_generation=1,
    )
    second = conditions.set_conditions(
        first, [conditions.Verdict("B", False, "No")], now=T1, observed_generation=1
    )
    assert [(c.type, c.status, c.last_transition_time) for c in second] == [
        ("A", "False", T0), ("B", "False", T1),
    ]


def test_unchanged_verdicts_produce_an_identical_list_so_no_status_write_is_needed() -> None:
    verdicts = [conditions.Verdict("A", True, "Yes", "fine")]
    first = conditions.set_conditions([], verdicts, now=T0, observed_generation=1)
    assert conditions.set_conditions(first, verdicts, now=T1, observed_generation=1) == first
    assert conditions.changed_conditions(first, first) == []


def test_ready_is_true_only_when_all_are_and_names_the_failing_ones() -> None:
    ok = conditions.Verdict("A", True, "Yes")
    bad = conditions.Verdict("B", False, "TooManyLookups", "13 lookups")
    unknown = conditions.Verdict("C", None, "LookupFailed")
    assert conditions.ready_verdict([ok]).status is True
    ready = conditions.ready_verdict([ok, bad, unknown])
    assert (ready.status, ready.reason) == (False, "TooManyLookups")
    assert ready.message == "not ready: B, C (13 lookups)"
    assert conditions.ready_verdict([ok, unknown]).status is None
