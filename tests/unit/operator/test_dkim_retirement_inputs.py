"""Inputs of the DKIM retirement and retention rules: what a pool reports it signs with, the
overlap a spec may ask for, and what a key Secret says about its owner, domain and DNS."""

from __future__ import annotations

import datetime

import pydantic
import pytest
from mailfleet_operator.api import domainauth
from mailfleet_operator.logic import assigning, key_secrets, keys, rotating
from mailfleet_operator.reconcile import pool_status
from mailfleet_operator.reconcile.pool_state import PoolMemory
from mailfleet_sender import wire

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def _stats(pod: str, **signing: str) -> wire.Stats:
    return wire.Stats(pod=pod, dkim={"example.com": wire.DKIMDomainStats(selectors=signing)})


def _view(name: str, *, ready: bool = True, node_ready: bool = True) -> assigning.PodView:
    return assigning.PodView(name=name, uid=name, ordinal=int(name[-1]), ready=ready,
                             node_ready=node_ready)


PREVIOUS = [{"domain": "example.com", "selector": "mf-1"}]


@pytest.mark.parametrize(
    ("stats", "views", "expected"),
    [
        ({"p-0": _stats("p-0", rsa="mf-2"), "p-1": _stats("p-1", rsa="mf-2")},
         [_view("p-0"), _view("p-1")], {"mf-2"}),
        ({"p-0": _stats("p-0", rsa="mf-2"), "p-1": _stats("p-1", rsa="mf-1")},
         [_view("p-0"), _view("p-1")], {"mf-1", "mf-2"}),
        ({"p-0": _stats("p-0", rsa="mf-2")}, [_view("p-0"), _view("p-1")], {"mf-1", "mf-2"}),
        ({"p-0": _stats("p-0", rsa="mf-2")}, [_view("p-0"), _view("p-1", ready=False,
                                                                   node_ready=False)],
         {"mf-1", "mf-2"}),
        ({"p-0": _stats("p-0", rsa="mf-2")}, [_view("p-0"), _view("p-1", ready=False)],
         {"mf-2"}),
        ({"p-0": _stats("p-0", rsa="mf-2", ed25519="mf-2-ed")}, [_view("p-0")],
         {"mf-2", "mf-2-ed"}),
    ],
    ids=[
        "every pod reports the new selector: only it is listed",
        "one pod still signs with the old key: both are listed",
        "a ready pod that did not answer keeps the previous entries listed",
        "a pod on a lost node (it may still send) keeps the previous entries listed",
        "a pod that never became ready (nothing to sign with) holds nothing up",
        "dual keys report both selectors",
    ],
)
def test_the_pool_status_lists_what_its_pods_sign_with(
    stats: dict[str, wire.Stats], views: list[assigning.PodView], expected: set[str]
) -> None:
    memory = PoolMemory()
    memory.stats = stats
    found = pool_status.signing_selectors(memory, views, PREVIOUS)
    assert {e.selector for e in found if e.domain == "example.com"} == expected


def test_a_zero_overlap_is_refused_and_the_default_is_an_hour() -> None:
    with pytest.raises(pydantic.ValidationError, match="must be at least 1h"):
        domainauth.DKIM.model_validate({"overlap": "0s"})
    assert domainauth.DKIM().overlap == "1h"
    assert domainauth.DKIM().key_retention == "Retain"


def test_a_key_secret_is_immutable_and_reads_back_its_domain_owners_and_seen_time() -> None:
    generation = rotating.NewGeneration(number=1, algorithms=("ed25519",), selectors=("mf-1",),
                                        trigger="")
    body = key_secrets.key_secret_body(domainauth="example-com", domain="example.com",
                                       selector="mf-1", generation=generation,
                                       key=keys.generate_key("ed25519"), now=NOW)
    assert body["immutable"] is True
    assert "ownerReferences" not in body["metadata"]
    body["metadata"]["ownerReferences"] = [{"uid": "u-1"}]
    body["metadata"]["annotations"].update(key_secrets.seen_annotations(seen_at=NOW))
    parsed = key_secrets.read_key_secret(body, now=NOW)
    assert parsed is not None
    assert (parsed.domain, parsed.owner_uids, parsed.seen_at) == ("example.com", ("u-1",), NOW)
    assert key_secrets.group_generations([parsed])[0].seen_at == NOW
