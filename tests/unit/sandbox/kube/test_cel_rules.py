"""The emulator's CEL rules (mailfleet_sandbox.kube.cel_rules) refuse what kube-apiserver
refuses, with its messages: the mailfleet CRDs' rules on every door case, and the
Kubernetes library functions they use."""

from __future__ import annotations

from typing import Any

import pytest
from mailfleet_operator.api import crds
from mailfleet_sandbox.kube import cel_rules, schemas
from unit.api import door_cases


def _rule(rule: str, value: Any, message: str = "no") -> list[str]:
    schema = {"properties": {"spec": {"x-kubernetes-validations": [
        {"rule": rule, "message": message}]}}}
    return [f"{c.field}: {c.message}" for c in cel_rules.validate({"spec": value}, schema)]


def _validated(kind: str, obj: dict[str, Any]) -> list[Any]:
    """As the emulator does it: defaults first (rules may read defaulted fields)."""
    schema = crds.openapi_schema(kind)
    return cel_rules.validate(schemas.apply_defaults(obj, schema), schema)


@pytest.mark.parametrize("case", door_cases.CASES, ids=lambda c: c.id)
def test_every_door_case_is_refused_at_its_path_with_its_message(
        case: door_cases.Case) -> None:
    causes = _validated(case.kind, case.object())
    assert any(c.field == case.path and case.message in c.message for c in causes), causes


@pytest.mark.parametrize("case", [*door_cases.ACCEPTED], ids=lambda c: c.id)
def test_the_edges_and_the_samples_pass(case: door_cases.Case) -> None:
    assert _validated(case.kind, case.object()) == []
    assert _validated(case.kind, door_cases.sample(case.kind)) == []


@pytest.mark.parametrize(
    ("rule", "value", "holds"),
    [
        ("self.findAll('[0-9]+').size() == 2", "a1b22", True),
        ("self.find('[0-9]+') == '1'", "a1b22", True),
        ("self.find('x') == ''", "abc", True),
        ("[1, 2, 3].sum() == 6", {}, True),
        ("[0.5, 0.25].sum() == 0.75", {}, True),
        ("[1, 2, 2].isSorted()", {}, True),
        ("[2, 1].isSorted()", {}, False),
        ("'ÀBc'.lowerAscii() == 'Àbc'", {}, True),
        ("self.a <= self.b", {"a": 1, "b": 2}, True),
        ("self.a <= self.b", {"a": 3, "b": 2}, False),
    ],
)
def test_kubernetes_library_functions(rule: str, value: Any, holds: bool) -> None:
    assert (_rule(rule, value) == []) == holds


def test_a_failed_rule_shows_the_value_or_type_and_the_message() -> None:
    assert _rule("self.a > 1", {"a": 0}, "a too small") == [
        'spec: Invalid value: "object": a too small']
    schema = {"properties": {"spec": {"properties": {"s": {"x-kubernetes-validations": [
        {"rule": "self.size() > 3", "message": "short"}]}}}}}
    causes = cel_rules.validate({"spec": {"s": "ab"}}, schema)
    assert [(c.field, c.message) for c in causes] == [("spec.s", 'Invalid value: "ab": short')]


def test_an_evaluation_error_names_the_error_and_the_message() -> None:
    lines = _rule("timestamp('2000-01-01T00:00:00Z').getFullYear(self) > 0", "Mars/Olympus",
                  "unknown zone")
    assert len(lines) == 1 and lines[0].startswith('spec: Invalid value: "string": ')
    assert lines[0].endswith(" evaluating rule: unknown zone")


def test_transition_rules_are_skipped() -> None:
    assert _rule("self == oldSelf", {"a": 1}) == []


def test_an_unchanged_value_is_not_checked_again_on_update() -> None:
    """Validation ratcheting: a status write does not fail on a spec an older CRD let in."""
    schema = {"properties": {"spec": {"properties": {"a": {"x-kubernetes-validations": [
        {"rule": "self > 1", "message": "a too small"}]}}}, "status": {}}}
    old = {"spec": {"a": 0}, "status": {"n": 1}}
    assert cel_rules.validate({"spec": {"a": 0}, "status": {"n": 2}}, schema, old) == []
    changed = cel_rules.validate({"spec": {"a": -1}, "status": {"n": 2}}, schema, old)
    assert [c.field for c in changed] == ["spec.a"]
