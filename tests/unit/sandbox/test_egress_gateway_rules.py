"""The egress gateway stand-in's rule computation (pure): which pods a CiliumEgressGatewayPolicy
selects and which source address a receiver then sees, as Cilium would decide it."""

from __future__ import annotations

from typing import Any

import pytest
from mailfleet_sandbox import egress_gateway as egw

JSON = dict[str, Any]
HOLDER = "egress.mailfleet.io/127-0-20-1"
PROVIDER = "127.0.40.7"


def policy(name: str, egress_ip: str = "127.0.20.1", *, selectors: list[JSON] | None = None,
           destinations: list[str] | None = None, excluded: list[str] | None = None) -> JSON:
    spec: JSON = {
        "selectors": selectors if selectors is not None else [{
            "podSelector": {"matchLabels": {HOLDER: "true"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mail"}}}],
        "destinationCIDRs": destinations or ["0.0.0.0/0"],
        "egressGateway": {"nodeSelector": {}, "egressIP": egress_ip}}
    if excluded is not None:
        spec["excludedCIDRs"] = excluded
    return {"apiVersion": egw.API_VERSION, "kind": egw.KIND, "metadata": {"name": name},
            "spec": spec}


def pod(name: str, ip: str | None, labels: dict[str, str] | None = None, *,
        namespace: str = "mail", phase: str = "Running", host_network: bool = False) -> JSON:
    status: JSON = {"phase": phase}
    if ip is not None:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"hostNetwork": host_network}, "status": status}


def namespace(name: str, labels: dict[str, str] | None = None) -> JSON:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name,
                                                  **(labels or {})}}}


NAMESPACES = [namespace("mail", {"team": "mail"}), namespace("other")]
LABELLED = pod("marketing-0", "127.200.0.10", {HOLDER: "true", "app": "sender"})
UNLABELLED = pod("marketing-1", "127.200.0.11", {"app": "sender"})


def seen(ruleset: egw.Ruleset, source: JSON, destination: str = PROVIDER) -> str:
    return egw.source_address(ruleset, source["status"]["podIP"], destination)


def test_the_labelled_pod_leaves_from_the_egress_ip_and_the_unlabelled_from_its_own() -> None:
    rules = egw.desired_rules([policy("ip-1")], [LABELLED, UNLABELLED], namespaces=NAMESPACES)
    assert seen(rules, LABELLED) == "127.0.20.1"
    assert seen(rules, UNLABELLED) == "127.200.0.11"
    assert [(r.pod_ip, r.destination, r.egress_ip) for r in rules.rules] == [
        ("127.200.0.10", "0.0.0.0/0", "127.0.20.1")]


@pytest.mark.parametrize(("case", "selectors", "selected"), [
    ("a pod label and the namespace name select the holder in its namespace only",
     [{"podSelector": {"matchLabels": {HOLDER: "true"}},
       "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mail"}}}],
     {"marketing-0"}),
    ("the io.kubernetes.pod.namespace pseudo-label selects by namespace inside podSelector",
     [{"podSelector": {"matchLabels": {HOLDER: "true", egw.NAMESPACE_LABEL: "other"}}}],
     {"stray"}),
    ("a namespaceSelector on the namespace's own labels",
     [{"namespaceSelector": {"matchLabels": {"team": "mail"}}}],
     {"marketing-0", "marketing-1"}),
    ("an empty podSelector selects every pod of every namespace",
     [{"podSelector": {}}], {"marketing-0", "marketing-1", "stray"}),
    ("matchExpressions are honoured",
     [{"podSelector": {"matchExpressions": [
         {"key": HOLDER, "operator": "DoesNotExist"}]}}], {"marketing-1"}),
    ("any of several selector entries selects",
     [{"podSelector": {"matchLabels": {"app": "nothing"}}},
      {"podSelector": {"matchLabels": {egw.NAMESPACE_LABEL: "other"}}}], {"stray"}),
])
def test_selection_by_labels_and_namespace(case: str, selectors: list[JSON],
                                           selected: set[str]) -> None:
    stray = pod("stray", "127.200.0.12", {HOLDER: "true"}, namespace="other")
    rules = egw.desired_rules([policy("ip-1", selectors=selectors)],
                              [LABELLED, UNLABELLED, stray], namespaces=NAMESPACES)
    assert {r.pod.split("/")[1] for r in rules.rules} == selected, case


def test_excluded_cidrs_inside_the_destinations_leave_untranslated() -> None:
    rules = egw.desired_rules(
        [policy("ip-1", destinations=["127.0.40.0/24", "10.0.0.0/8"],
                excluded=["127.0.40.128/25", "192.168.0.0/16"])],
        [LABELLED], namespaces=NAMESPACES)
    assert seen(rules, LABELLED, "127.0.40.7") == "127.0.20.1"
    assert seen(rules, LABELLED, "127.0.40.200") == "127.200.0.10"  # excluded
    assert seen(rules, LABELLED, "10.1.2.3") == "127.0.20.1"
    assert seen(rules, LABELLED, "127.0.41.1") == "127.200.0.10"  # not a destination
    # an excluded CIDR outside every destination has no effect and no rule
    assert "192.168.0.0/16" not in {r.destination for r in rules.rules}


@pytest.mark.parametrize(("case", "source"), [
    ("a pod without an IP yet", pod("starting", None, {HOLDER: "true"})),
    ("a finished pod", pod("done", "127.200.0.20", {HOLDER: "true"}, phase="Succeeded")),
    ("a host-network pod", pod("host", "127.0.99.1", {HOLDER: "true"}, host_network=True)),
    ("a pod with an IPv6 address only", pod("v6", "fd00::5", {HOLDER: "true"})),
])
def test_pods_cilium_would_not_translate_get_no_rule(case: str, source: JSON) -> None:
    rules = egw.desired_rules([policy("ip-1")], [source], namespaces=NAMESPACES)
    assert rules.rules == (), case


def test_two_policies_give_each_holder_its_own_egress_ip() -> None:
    second = pod("marketing-1", "127.200.0.11", {"egress.mailfleet.io/127-0-20-2": "true"})
    policies = [policy("ip-1"), policy("ip-2", "127.0.20.2", selectors=[{
        "podSelector": {"matchLabels": {"egress.mailfleet.io/127-0-20-2": "true"}}}])]
    rules = egw.desired_rules(policies, [LABELLED, second], namespaces=NAMESPACES)
    assert seen(rules, LABELLED) == "127.0.20.1"
    assert seen(rules, second) == "127.0.20.2"


def test_the_longest_destination_prefix_over_every_policy_decides() -> None:
    policies = [policy("wide", "127.0.20.1"),
                policy("narrow", "127.0.20.2", destinations=["127.0.40.0/24"])]
    rules = egw.desired_rules(policies, [LABELLED], namespaces=NAMESPACES)
    assert seen(rules, LABELLED, "127.0.40.7") == "127.0.20.2"
    assert seen(rules, LABELLED, "127.0.50.1") == "127.0.20.1"


def test_traffic_to_pods_and_nodes_of_the_cluster_is_never_translated() -> None:
    node = {"metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.99.1"}]}}
    rules = egw.desired_rules([policy("ip-1")], [LABELLED, UNLABELLED],
                              namespaces=NAMESPACES, nodes=[node])
    assert seen(rules, LABELLED, "127.200.0.11") == "127.200.0.10"  # a peer pod
    assert seen(rules, LABELLED, "127.0.99.1") == "127.200.0.10"  # a node
    assert seen(rules, LABELLED, PROVIDER) == "127.0.20.1"


@pytest.mark.parametrize(("case", "broken", "reason"), [
    ("an interface instead of an egress IP is not supported here",
     {"egressGateway": {"nodeSelector": {}, "interface": "eth1"}}, "egressIP"),
    ("an IPv6 egress IP is not translated here",
     {"egressGateway": {"nodeSelector": {}, "egressIP": "fd00::1"}}, "IPv4"),
    ("a selector entry with neither selector cannot select anything",
     {"selectors": [{}]}, "neither"),
])
def test_policies_the_stand_in_cannot_honour_are_skipped_with_a_reason(
        case: str, broken: JSON, reason: str) -> None:
    bad = policy("bad")
    bad["spec"].update(broken)
    rules = egw.desired_rules([bad, policy("good")], [LABELLED], namespaces=NAMESPACES)
    assert [name for name, _ in rules.skipped] == ["bad"], case
    assert reason in rules.skipped[0][1]
    assert seen(rules, LABELLED) == "127.0.20.1"


def test_no_policy_means_no_rules_and_an_empty_table() -> None:
    rules = egw.desired_rules([], [LABELLED, UNLABELLED], namespaces=NAMESPACES)
    assert rules == egw.Ruleset()
    script = egw.render_table("mailfleet_egw_1_1", rules)
    assert "snat" not in script and "delete table ip mailfleet_egw_1_1" in script


def test_the_table_script_orders_rules_as_the_kernel_must_evaluate_them() -> None:
    rules = egw.desired_rules([policy("ip-1", excluded=["127.0.40.0/24"])], [LABELLED],
                              namespaces=NAMESPACES)
    script = egw.render_table("mailfleet_egw_1_1", rules)
    lines = [line.strip() for line in script.splitlines()]
    excluded = lines.index('ip saddr 127.200.0.10 ip daddr 127.0.40.0/24 accept '
                           'comment "excluded ip-1 mail/marketing-0"')
    snat = lines.index('ip saddr 127.200.0.10 snat to 127.0.20.1 comment "ip-1 mail/marketing-0"')
    cluster = next(i for i, line in enumerate(lines) if "cluster destinations" in line)
    assert cluster < excluded < snat


def test_stale_tables_are_ours_whose_process_is_gone() -> None:
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "ip", "name": "mailfleet_egw_100_1", "handle": 1}},
        {"table": {"family": "ip", "name": "mailfleet_egw_200_3", "handle": 2}},
        {"table": {"family": "ip", "name": "someone_else_100_1", "handle": 3}},
        {"table": {"family": "inet", "name": "mailfleet_egw_100_2", "handle": 4}}]}
    assert egw.stale_tables(listing, alive={100: False, 200: True}) == ["mailfleet_egw_100_1"]
