"""Refused at the door: every cross-field rule of the models is one `common.Rule`, checked by
pydantic and, as CEL, by kube-apiserver, with the same message. Here the pydantic half and the
generated CRDs; tests/integration/kube/test_crd_admission.py runs the same cases through
`kubectl apply` against the real kube-apiserver."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
from mailfleet_operator.api import common, crds, kinds
from mailfleet_sender import units
from unit.api import door_cases


def _refusals(case: door_cases.Case) -> list[str]:
    try:
        kinds.BY_KIND[case.kind].model.model_validate(case.object())
    except pydantic.ValidationError as error:
        return common.describe_errors(error)
    return []


@pytest.mark.parametrize("case", door_cases.CASES, ids=lambda c: c.id)
def test_the_models_refuse_with_the_rules_path_and_message(case: door_cases.Case) -> None:
    lines = _refusals(case)
    assert any(line.startswith(f"{case.path}: ") and case.message in line for line in lines), (
        lines
    )


@pytest.mark.parametrize("case", door_cases.SCHEMA_REFUSALS, ids=lambda c: c.id)
def test_the_models_refuse_what_the_schema_refuses(case: door_cases.Case) -> None:
    """Same refusal, pydantic's wording: at the path, or at the list that holds it."""
    lines = _refusals(case)
    assert any(case.path.startswith(line.split(": ", 1)[0]) for line in lines), lines


@pytest.mark.parametrize("case", door_cases.ACCEPTED, ids=lambda c: c.id)
def test_the_models_accept_values_at_the_edges(case: door_cases.Case) -> None:
    assert _refusals(case) == []


def _validations(node: Any) -> Iterator[dict[str, str]]:
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations", [])
        for value in node.values():
            yield from _validations(value)
    elif isinstance(node, list):
        for item in node:
            yield from _validations(item)


@pytest.mark.parametrize("case", door_cases.CASES, ids=lambda c: c.id)
def test_each_message_is_a_cel_rule_of_the_crd(case: door_cases.Case) -> None:
    messages = [v["message"] for v in _validations(crds.openapi_schema(case.kind))]
    assert any(case.message in message for message in messages), messages


def _model_rules() -> Iterator[tuple[str, common.Rule]]:
    for info in kinds.KINDS:
        seen: set[type[pydantic.BaseModel]] = set()
        todo: list[type[pydantic.BaseModel]] = [info.spec_model]
        while todo:
            model = todo.pop()
            if model in seen:
                continue
            seen.add(model)
            for rule in model.__dict__.get("rules", ()):
                yield f"{info.kind}.{model.__name__}", rule
            for field in model.model_fields.values():
                for meta in field.metadata:
                    if isinstance(meta, common.Rule):
                        yield f"{info.kind}.{model.__name__}", meta
                todo += _models_in(field.annotation)


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def test_every_rule_of_the_models_is_in_the_crds_with_its_message() -> None:
    """The drift guard: a rule added to a model reaches the CRD (after `make crds`)."""
    in_crds = {
        (v["rule"], v["message"])
        for info in kinds.KINDS
        for v in _validations(crds.openapi_schema(info.kind))
    }
    rules = list(_model_rules())
    assert len(rules) >= 15
    missing = [where for where, rule in rules if (rule.cel, rule.message) not in in_crds]
    assert missing == []


def test_no_spec_model_checks_a_rule_outside_rules() -> None:
    """Cross-field checks written as free-standing validators would have no CEL twin."""
    for info in kinds.KINDS:
        for model in _all_models(info.spec_model):
            decorators = model.__pydantic_decorators__
            own = [
                name for name in (*decorators.model_validators, *decorators.field_validators)
                if name != "_check_rules"
            ]
            assert own == [], f"{model.__name__}: {own} (declare a common.Rule instead)"


def _all_models(root: type[pydantic.BaseModel]) -> set[type[pydantic.BaseModel]]:
    found: set[type[pydantic.BaseModel]] = set()
    todo = [root]
    while todo:
        model = todo.pop()
        if model not in found:
            found.add(model)
            for field in model.model_fields.values():
                todo += _models_in(field.annotation)
    return found


@pytest.mark.parametrize(
    "text",
    ["0s", "1s", "500ms", "1.5s", "1h30m", "90d", "2w", "0.5w", "23h59m59s999ms", "1m1ms",
     "10m10m", "0.001s", "3600000ms"],
)
def test_the_cel_duration_sum_reads_every_form_the_units_module_accepts(text: str) -> None:
    """The rule's arithmetic (common.duration_sum, spelled the same in CEL) agrees with the
    sender's parser on every accepted form, so a floor means the same in both places."""
    assert units.parse_duration(text).total_seconds() == pytest.approx(
        common.duration_sum(text), abs=1e-6
    )


def test_the_cel_unit_table_covers_exactly_the_units_of_the_duration_pattern() -> None:
    units_in_pattern = set(re.search(r"\(([a-z|]+)\)\)\+\$$", units.DURATION_PATTERN)
                           .group(1).split("|"))  # type: ignore[union-attr]
    for unit in units_in_pattern:
        assert f"endsWith('{unit}')" in common.CEL_DURATION_SECONDS or unit == "w"
    assert units_in_pattern == {"ms", "s", "m", "h", "d", "w"}


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "::", "0:0:0:0:0:0:0:0", "0000::", "224.0.0.1", "239.255.255.250",
     "255.255.255.255", "ff02::1", "FF05::1:3", "127.0.0.1", "10.0.0.1", "203.0.113.10",
     "2001:db8::10", "ff::1", "fe80::1", "223.255.255.255", "240.0.0.1"],
)
def test_the_source_address_pattern_agrees_with_ipaddress(address: str) -> None:
    ip = ipaddress.ip_address(address)
    refused = ip.is_unspecified or ip.is_multicast or address == "255.255.255.255"
    assert (not common.SOURCE_ADDRESS_RULE.holds(address)) == refused
