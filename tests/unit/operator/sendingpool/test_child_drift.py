"""Deciding whether a pool's child must be applied, and whether it is the pool's at all
(`logic.child_drift`, pure)."""

from __future__ import annotations

from typing import Any

import pytest
from mailfleet_operator.logic import child_drift

UID = "pool-uid"
OWNER = {"apiVersion": "mailfleet.io/v1alpha1", "kind": "SendingPool", "name": "mail",
         "uid": UID, "controller": True, "blockOwnerDeletion": True}


def desired(**data: str) -> dict[str, Any]:
    return child_drift.stamped({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "mail-config", "namespace": "ns", "labels": {"a": "b"},
                     "ownerReferences": [OWNER]},
        "data": data or {"sender.yaml": "x: 1\n"},
    })


def live_of(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`body` as the API server returns it: defaults and bookkeeping added."""
    live = {**body, "metadata": {**body["metadata"], "uid": "child-uid",
                                 "resourceVersion": "7", "managedFields": [{"manager": "m"}]}}
    live.update(changes)
    return live


@pytest.mark.parametrize(
    ("case", "live", "action"),
    [
        ("an absent child is created", None, child_drift.Action.CREATE),
        ("a child as applied, with the server's additions, is kept",
         live_of(desired()), child_drift.Action.KEEP),
        ("a child whose data was edited by hand is repaired",
         live_of(desired(), data={"sender.yaml": "edited"}), child_drift.Action.REPAIR),
        ("a child with a key added by hand but ours intact is kept (a subset)",
         live_of(desired(), data={"sender.yaml": "x: 1\n", "extra": "y"}),
         child_drift.Action.KEEP),
        ("a child applied from an older intent is repaired (its digest differs)",
         live_of(desired(**{"sender.yaml": "x: 0\n"}), data={"sender.yaml": "x: 1\n"}),
         child_drift.Action.REPAIR),
        ("an object of that name without an owner reference to the pool is a clash",
         {**live_of(desired()), "metadata": {"name": "mail-config", "ownerReferences": []}},
         child_drift.Action.CLASH),
        ("an object owned by another pool is a clash",
         {**live_of(desired()), "metadata": {"name": "mail-config", "ownerReferences": [
             {**OWNER, "uid": "other"}]}}, child_drift.Action.CLASH),
        ("a child being deleted is left to go (recreated once gone)",
         {**live_of(desired()), "metadata": {**desired()["metadata"],
                                             "deletionTimestamp": "2026-01-01T00:00:00Z"}},
         child_drift.Action.KEEP),
    ],
)
def test_judging_a_child(case: str, live: dict[str, Any] | None,
                         action: child_drift.Action) -> None:
    assert child_drift.judge(desired(), live, UID).action is action, case


def test_a_repair_names_the_field_that_drifted_never_its_value() -> None:
    verdict = child_drift.judge(desired(), live_of(desired(), data={"sender.yaml": "secret"}),
                                UID)
    assert verdict.why == "data.sender.yaml"


def test_lists_match_item_by_item_with_server_defaults_inside_items() -> None:
    want = {"containers": [{"name": "s", "image": "a"}]}
    assert child_drift.contains(
        {"containers": [{"name": "s", "image": "a", "terminationMessagePath": "/dev/x"}]}, want)
    assert not child_drift.contains({"containers": [{"name": "s", "image": "b"}]}, want)
    assert not child_drift.contains({"containers": []}, want)
    assert not child_drift.contains(
        {"containers": [{"name": "s", "image": "a"}, {"name": "t"}]}, want)


def test_the_digest_follows_the_intent_and_ignores_an_old_stamp() -> None:
    assert desired() == desired()
    assert child_drift.stamped(desired()) == desired()  # re-stamping is stable
    one = desired()["metadata"]["annotations"][child_drift.DIGEST_ANNOTATION]
    two = desired(**{"sender.yaml": "x: 2\n"})["metadata"]["annotations"][
        child_drift.DIGEST_ANNOTATION]
    assert one != two


def test_an_empty_map_matches_the_absent_field_the_api_server_leaves() -> None:
    """A Secret applied with `data: {}` comes back without `data`: not a drift (else it
    would be applied again every cycle)."""
    assert child_drift.contains({"metadata": {}}, {"data": {}})
    assert child_drift.contains({}, {"items": []})
    assert not child_drift.contains({}, {"data": {"k": "v"}})
