"""Pure parts of the API emulator: selectors, patches, schemas, JSONPath, tables and
the pod grace period rule."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_sandbox.kube import patching, schemas, selectors, tables
from mailfleet_sandbox.kube.registry import pod_grace_period

_key = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_val = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


@given(labels=st.dictionaries(_key, _val, max_size=5), key=_key, value=_val)
def test_equality_and_inequality_partition_every_label_set(
        labels: dict[str, str], key: str, value: str) -> None:
    """For any labels, `k=v` and `k!=v` match complementary sets (missing keys match !=)."""
    eq = selectors.parse_label_selector(f"{key}={value}").matches(labels)
    ne = selectors.parse_label_selector(f"{key}!={value}").matches(labels)
    assert eq != ne


@given(labels=st.dictionaries(_key, _val, max_size=5), key=_key,
       values=st.lists(_val, min_size=1, max_size=3))
def test_in_and_notin_agree_with_set_membership(labels: dict[str, str], key: str,
                                                values: list[str]) -> None:
    """`k in (..)` is membership of an existing key; `notin` is its complement."""
    text = ",".join(values)
    inside = selectors.parse_label_selector(f"{key} in ({text})").matches(labels)
    outside = selectors.parse_label_selector(f"{key} notin ({text})").matches(labels)
    assert inside == (labels.get(key) in values)
    assert outside == (not inside)


@pytest.mark.parametrize("text", ["a in (b", "=x", "a=b,", "a in ()", "a b", "!", "a=(b)",
                                  "bad key=1"])
def test_malformed_label_selectors_are_rejected(text: str) -> None:
    with pytest.raises(selectors.SelectorError):
        selectors.parse_label_selector(text)


def test_field_selector_escapes_and_negation() -> None:
    sel = selectors.parse_field_selector(r"metadata.name=a\,b,status.phase!=Running")
    assert sel.matches({"metadata.name": "a,b", "status.phase": "Pending"})
    assert not sel.matches({"metadata.name": "a,b", "status.phase": "Running"})


def test_merge_patch_deletes_with_null_and_replaces_lists() -> None:
    assert patching.merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]},
                                {"a": {"b": None}, "l": [3]}) == {"a": {"c": 2}, "l": [3]}


def test_json_patch_failure_leaves_input_untouched() -> None:
    doc = {"a": [1, 2]}
    with pytest.raises(patching.PatchApplyError):
        patching.json_patch(doc, [{"op": "add", "path": "/a/-", "value": 3},
                                  {"op": "test", "path": "/a/0", "value": 9}])
    assert doc == {"a": [1, 2]}
    assert patching.json_patch(doc, [{"op": "move", "from": "/a/0", "path": "/b"}]) == \
        {"a": [2], "b": 1}


def test_strategic_merge_directives() -> None:
    live = {"spec": {"containers": [{"name": "a", "image": "1", "ports": [
        {"containerPort": 80, "name": "http"}]}, {"name": "b", "image": "1"}]},
        "metadata": {"finalizers": ["x"]}}
    patch = {"spec": {"containers": [{"name": "b", "$patch": "delete"},
                                     {"name": "a", "ports": [{"containerPort": 81}]}],
                      "$setElementOrder/containers": [{"name": "a"}]},
             "metadata": {"finalizers": ["y"], "$deleteFromPrimitiveList/finalizers": ["x"]}}
    out = patching.strategic_merge_patch(live, patch)
    assert [c["name"] for c in out["spec"]["containers"]] == ["a"]
    # a new item comes before the untouched live ones, as kube-apiserver orders it
    assert [p["containerPort"] for p in out["spec"]["containers"][0]["ports"]] == [81, 80]
    assert out["metadata"]["finalizers"] == ["y"]
    replaced = patching.strategic_merge_patch(live, {"spec": {"$patch": "replace", "x": 1}})
    assert replaced["spec"] == {"x": 1}


def test_apply_removes_fields_the_manager_stopped_applying() -> None:
    keys = patching.builtin_merge_key
    first = {"data": {"a": "1", "b": "2"}}
    prev = patching.applied_paths(first, keys)
    live = patching.apply_merge({"data": {"mine": "x"}}, first, keys)
    second = {"data": {"a": "1"}}
    now = patching.applied_paths(second, keys)
    out = patching.remove_paths(patching.apply_merge(live, second, keys), prev - now, keys)
    assert out == {"data": {"a": "1", "mine": "x"}}
    assert patching.paths_from_fields_v1(patching.fields_v1(now)) == now


SCHEMA: dict[str, Any] = {"type": "object", "properties": {"spec": {
    "type": "object", "required": ["mode"], "properties": {
        "mode": {"type": "string", "enum": ["a", "b"]},
        "n": {"type": "integer", "minimum": 1, "default": 3},
        "when": {"type": "string", "format": "date-time"},
        "items": {"type": "array", "x-kubernetes-list-type": "map",
                  "x-kubernetes-list-map-keys": ["name"],
                  "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }}}}


@pytest.mark.parametrize(("spec", "field", "reason"), [
    ({"mode": "c"}, "spec.mode", "FieldValueNotSupported"),
    ({}, "spec.mode", "FieldValueRequired"),
    ({"mode": "a", "n": 0}, "spec.n", "FieldValueInvalid"),
    ({"mode": "a", "n": "x"}, "spec.n", "FieldValueTypeInvalid"),
    ({"mode": "a", "when": "yesterday"}, "spec.when", "FieldValueInvalid"),
    ({"mode": "a", "items": [{"name": "x"}, {"name": "x"}]}, "spec.items[1]",
     "FieldValueDuplicate"),
])
def test_schema_validation_reports_field_and_reason(spec: dict[str, Any], field: str,
                                                    reason: str) -> None:
    causes = schemas.validate({"spec": spec}, SCHEMA)
    assert [(c.field, c.reason) for c in causes] == [(field, reason)]


def test_prune_then_default() -> None:
    pruned, unknown = schemas.prune({"metadata": {"name": "x", "junk": 1},
                                     "spec": {"mode": "a", "extra": 1}, "top": 2}, SCHEMA)
    assert sorted(unknown) == ["metadata.junk", "spec.extra", "top"]
    assert schemas.apply_defaults(pruned, SCHEMA)["spec"] == {"mode": "a", "n": 3}


def test_jsonpath_filters_and_table_cells() -> None:
    obj = {"metadata": {"name": "x", "creationTimestamp": "2020-01-01T00:00:00Z"},
           "status": {"conditions": [{"type": "A", "status": "False"},
                                     {"type": "Ready", "status": "True"}], "n": 2}}
    steps = tables.compile_jsonpath('.status.conditions[?(@.type=="Ready")].status')
    assert tables.evaluate_jsonpath(obj, steps) == ["True"]
    assert tables.cell_for_column(obj, {"type": "integer", "jsonPath": ".status.n"}) == 2
    assert tables.cell_for_column(obj, {"type": "string", "jsonPath": ".status.none"}) is None
    assert tables.human_duration(3 * 3600 + 120) == "3h2m"


@pytest.mark.parametrize(("spec", "phase", "requested", "expected"), [
    ({}, "Pending", None, 0),                                             # unbound: at once
    ({}, "Pending", 20, 0),
    ({"nodeName": "n"}, "Running", None, 30),                             # default
    ({"nodeName": "n", "terminationGracePeriodSeconds": 45}, "Running", None, 45),
    ({"nodeName": "n", "terminationGracePeriodSeconds": 45}, "Running", 5, 5),
    ({"nodeName": "n"}, "Succeeded", None, 0),                            # terminated
    ({"nodeName": "n"}, "Failed", 10, 0),
])
def test_pod_grace_period_follows_the_pod_strategy(spec: dict[str, Any], phase: str,
                                                   requested: int | None,
                                                   expected: int) -> None:
    """Bound, live pods get the requested grace period, else their
    terminationGracePeriodSeconds (30 by default); unbound or finished pods get 0."""
    pod = {"spec": spec, "status": {"phase": phase}}
    assert pod_grace_period(pod, requested) == expected
