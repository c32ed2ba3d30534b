"""The pool's NetworkPolicy as the operator renders it is a valid networking.k8s.io/v1
object for the real kube-apiserver, and the emulator stores it and refuses what the real one
refuses (run against both targets, like the conformance suite)."""

from __future__ import annotations

import copy
from typing import Any

from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import children, submission_access

from .conftest import Raw

PATH = "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"


def rendered(ns: str) -> dict[str, Any]:
    spec = sp.SendingPoolSpec.model_validate({"submission": {"allowedFrom": [
        {"namespaceSelector": {"matchLabels": {"team": "shop"}},
         "podSelector": {"matchExpressions": [
             {"key": "app", "operator": "In", "values": ["checkout"]}]}},
        {"ipBlock": {"cidr": "10.20.0.7", "except": []}},
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
    ]}})
    pool = children.PoolObjects(name="mail", namespace=ns, uid="u-1", replicas=1)
    body = submission_access.build_network_policy(
        spec, pool, submission_access.OperatorPods(
            namespace="mailfleet-system", labels={"app.kubernetes.io/component": "operator"}))
    body["metadata"].pop("ownerReferences")  # no such SendingPool in the scratch namespace
    return body


def test_the_rendered_network_policy_is_accepted_and_stored_as_sent(raw: Raw, ns: str) -> None:
    body = rendered(ns)
    reply = raw("POST", PATH.format(ns=ns), body)
    assert reply.status == 201, reply.body
    stored = raw("GET", PATH.format(ns=ns) + "/mail").body
    assert stored["spec"]["ingress"] == body["spec"]["ingress"]
    assert stored["spec"]["policyTypes"] == ["Ingress"]
    raw("DELETE", PATH.format(ns=ns) + "/mail")


def test_a_bare_address_or_a_mixed_peer_is_refused_as_kube_apiserver_does(
    raw: Raw, ns: str
) -> None:
    for name, change in (
        ("bare-ip", lambda s: s["ingress"][0]["from"].append({"ipBlock": {"cidr": "10.0.0.1"}})),
        ("mixed", lambda s: s["ingress"][0]["from"].append(
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})),
        ("port-zero", lambda s: s["ingress"][1]["ports"].append({"protocol": "TCP", "port": 0})),
        ("bad-type", lambda s: s.update(policyTypes=["Sideways"])),
    ):
        body = copy.deepcopy(rendered(ns))
        body["metadata"]["name"] = name
        change(body["spec"])
        reply = raw("POST", PATH.format(ns=ns), body)
        assert reply.status == 422, (name, reply.status, reply.body)
