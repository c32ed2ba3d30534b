"""`spec.egress.attachment` and the per-IP CNI egress objects (pure).

The objects are checked against our own minimal schemas of the three kinds, written from each
project's published CRD (cilium.io/v2 CiliumEgressGatewayPolicy, crd.antrea.io/v1beta1
Egress, k8s.ovn.org/v1 EgressIP): required fields, types, apiVersion/kind, and selectors
selecting exactly the holder label in the pool's namespace. Not the vendored schemas: only
what our objects must satisfy to be accepted and to do what we mean.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import jsonschema
import pytest
from mailfleet_operator.api import crds
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import children, egress_attachment, sender_config
from mailfleet_sender import config as sc
from pydantic import ValidationError

# --- minimal schemas of the three kinds -------------------------------------------------------

_LABEL_VALUE = {"type": "string", "maxLength": 63,
                "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": _LABEL_VALUE},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_IPV4_CIDR = r"^(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\/([0-9]|[1-2][0-9]|3[0-2])$"  # noqa: E501
_IP = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
_METADATA = {
    "type": "object",
    "required": ["name", "labels"],
    "not": {"anyOf": [{"required": ["namespace"]}, {"required": ["ownerReferences"]}]},
}


def _object(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "Cilium": _object("cilium.io/v2", "CiliumEgressGatewayPolicy", {
        "type": "object",
        "additionalProperties": False,
        "required": ["selectors", "destinationCIDRs", "egressGateway"],
        "properties": {
            "selectors": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {"podSelector": _SELECTOR, "namespaceSelector": _SELECTOR}}},
            "destinationCIDRs": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "excludedCIDRs": {"type": "array", "items": {"type": "string"}},
            "egressGateway": {
                "type": "object",
                "additionalProperties": False,
                "required": ["nodeSelector"],
                "properties": {
                    "nodeSelector": _SELECTOR,
                    "interface": {"type": "string"},
                    "egressIP": _IP,
                },
                # Cilium's agent refuses a policy naming both.
                "not": {"required": ["interface", "egressIP"]},
            },
        },
    }),
    "Antrea": _object("crd.antrea.io/v1beta1", "Egress", {
        "type": "object",
        "additionalProperties": False,
        "required": ["appliedTo"],
        "anyOf": [{"required": ["egressIP"]}, {"required": ["externalIPPool"]}],
        "properties": {
            "appliedTo": {"type": "object", "additionalProperties": False,
                          "properties": {"podSelector": _SELECTOR,
                                         "namespaceSelector": _SELECTOR}},
            "egressIP": _IP,
            "externalIPPool": {"type": "string"},
        },
    }),
    "OVNKubernetes": _object("k8s.ovn.org/v1", "EgressIP", {
        "type": "object",
        "additionalProperties": False,
        "required": ["egressIPs", "namespaceSelector"],
        "properties": {
            "egressIPs": {"type": "array", "items": _IP},
            "namespaceSelector": _SELECTOR,
            "podSelector": _SELECTOR,
        },
    }),
}


def _validate(mode: str, obj: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(
        SCHEMAS[mode], format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    ).validate(obj)


def _selectors(mode: str, obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(podSelector, namespaceSelector) of an object, wherever its kind keeps them."""
    spec = obj["spec"]
    holder = {"Cilium": lambda: spec["selectors"][0], "Antrea": lambda: spec["appliedTo"],
              "OVNKubernetes": lambda: spec}[mode]()
    return holder["podSelector"], holder["namespaceSelector"]


# --- specs -------------------------------------------------------------------------------------

IPS = [
    {"address": "203.0.113.10", "heloName": "mta1.example.com"},
    {"address": "203.0.113.11", "heloName": "mta2.example.com"},
    {"address": "2001:db8::10", "heloName": "mta3.example.com"},
]
ATTACHMENTS: dict[str, dict[str, Any]] = {
    "Cilium": {"mode": "Cilium",
               "cilium": {"nodeSelector": {"matchLabels": {"egress-gateway": "true"}}}},
    "Antrea": {"mode": "Antrea"},
    "OVNKubernetes": {"mode": "OVNKubernetes"},
}


def spec_for(attachment: dict[str, Any], ips: list[dict[str, Any]] = IPS,
             replicas: int = 3) -> sp.SendingPoolSpec:
    return sp.SendingPoolSpec.model_validate(
        {"replicas": replicas, "egress": {"ips": ips, "attachment": attachment}}
    )


# --- the objects ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(ATTACHMENTS))
def test_one_object_per_ip_that_the_cni_would_accept(mode: str) -> None:
    objects = egress_attachment.build_egress_objects(spec_for(ATTACHMENTS[mode]), "mail", "pool",
                                                     "uid-1")
    assert len(objects) == len(IPS)
    for obj in objects:
        _validate(mode, obj)
    group, version, _plural = egress_attachment.gvr_for(mode)  # type: ignore[arg-type]
    assert {o["apiVersion"] for o in objects} == {f"{group}/{version}"}


@pytest.mark.parametrize("mode", list(ATTACHMENTS))
def test_each_object_selects_exactly_its_ips_holder_label_in_the_pools_namespace(
        mode: str) -> None:
    objects = egress_attachment.build_egress_objects(spec_for(ATTACHMENTS[mode]), "mail", "pool",
                                                     "uid-1")
    for ip, obj in zip(IPS, objects, strict=True):
        pods, namespaces = _selectors(mode, obj)
        key, value = egress_attachment.holder_label(ip["address"])
        assert pods == {"matchLabels": {key: value}}
        assert namespaces == {"matchLabels": {"kubernetes.io/metadata.name": "mail"}}


def _snat_address(mode: str, obj: dict[str, Any]) -> str:
    spec = obj["spec"]
    if mode == "Cilium":
        return str(spec["egressGateway"]["egressIP"])
    if mode == "Antrea":
        return str(spec["egressIP"])
    [address] = spec["egressIPs"]
    return str(address)


@pytest.mark.parametrize("mode", list(ATTACHMENTS))
def test_each_object_source_nats_to_its_own_ip(mode: str) -> None:
    objects = egress_attachment.build_egress_objects(spec_for(ATTACHMENTS[mode]), "mail", "pool",
                                                     "uid-1")
    assert [_snat_address(mode, o) for o in objects] == [ip["address"] for ip in IPS]


def test_bind_mode_has_no_objects_and_the_sender_binds() -> None:
    spec = spec_for({"mode": "Bind"}, replicas=1)
    assert egress_attachment.build_egress_objects(spec, "mail", "pool", "uid-1") == []
    assert egress_attachment.binds_source("Bind")
    assert sp.SendingPoolSpec().egress.attachment.mode == "Bind"  # the default
    with pytest.raises(ValueError, match="Bind"):
        egress_attachment.gvr_for("Bind")


@pytest.mark.parametrize("mode", list(ATTACHMENTS))
def test_cni_modes_do_not_bind(mode: str) -> None:
    assert not egress_attachment.binds_source(mode)  # type: ignore[arg-type]


def test_cilium_defaults_to_every_destination_of_the_ips_family_and_keeps_given_cidrs() -> None:
    objects = egress_attachment.build_egress_objects(spec_for(ATTACHMENTS["Cilium"]), "mail",
                                                     "pool", "uid-1")
    assert [o["spec"]["destinationCIDRs"] for o in objects] == [
        ["0.0.0.0/0"], ["0.0.0.0/0"], ["::/0"]]
    assert all("excludedCIDRs" not in o["spec"] for o in objects)
    ipv4 = [o for o in objects if ":" not in _snat_address("Cilium", o)]
    assert all(re.fullmatch(_IPV4_CIDR, c) for o in ipv4 for c in o["spec"]["destinationCIDRs"])

    custom = {"mode": "Cilium", "cilium": {
        "nodeSelector": {"matchExpressions": [{"key": "egress", "operator": "Exists"}]},
        "destinationCIDRs": ["0.0.0.0/0"], "excludedCIDRs": ["10.0.0.0/8"]}}
    [obj] = egress_attachment.build_egress_objects(spec_for(custom, IPS[:1], 1), "mail", "pool",
                                                   "uid-1")
    _validate("Cilium", obj)
    assert obj["spec"]["excludedCIDRs"] == ["10.0.0.0/8"]
    assert obj["spec"]["egressGateway"]["nodeSelector"] == {
        "matchExpressions": [{"key": "egress", "operator": "Exists"}]}


def test_cilium_interface_replaces_the_egress_ip_as_cilium_requires() -> None:
    attachment = {"mode": "Cilium", "cilium": {
        "nodeSelector": {"matchLabels": {"egress-gateway": "true"}}, "interface": "eth1"}}
    [obj] = egress_attachment.build_egress_objects(spec_for(attachment, IPS[:1], 1), "mail",
                                                   "pool", "uid-1")
    _validate("Cilium", obj)
    assert obj["spec"]["egressGateway"] == {
        "nodeSelector": {"matchLabels": {"egress-gateway": "true"}}, "interface": "eth1"}


def test_antrea_names_the_external_ip_pool_when_given() -> None:
    attachment = {"mode": "Antrea", "antrea": {"externalIPPool": "mail-ips"}}
    objects = egress_attachment.build_egress_objects(spec_for(attachment), "mail", "pool", "u")
    for obj in objects:
        _validate("Antrea", obj)
        assert obj["spec"]["externalIPPool"] == "mail-ips"


# --- labels and names ----------------------------------------------------------------------------

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")


def assert_label_key(key: str) -> None:
    """Kubernetes label key syntax: optional DNS-subdomain prefix (<= 253) and a name part of
    at most 63 characters, alphanumeric at both ends."""
    prefix, _, name = key.rpartition("/")
    assert len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name), key
    if prefix:
        assert len(prefix) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(prefix), key


def assert_label_value(value: str) -> None:
    assert len(value) <= 63 and (value == "" or _QUALIFIED_NAME.fullmatch(value)), value


@pytest.mark.parametrize(("address", "key"), [
    ("203.0.113.10", "egress.mailfleet.io/203-0-113-10"),
    ("0.0.0.0", "egress.mailfleet.io/0-0-0-0"),
    ("2001:db8::10", "egress.mailfleet.io/2001-0db8-0000-0000-0000-0000-0000-0010"),
    ("2001:DB8::10", "egress.mailfleet.io/2001-0db8-0000-0000-0000-0000-0000-0010"),
    ("::1", "egress.mailfleet.io/0000-0000-0000-0000-0000-0000-0000-0001"),
    ("::", "egress.mailfleet.io/0000-0000-0000-0000-0000-0000-0000-0000"),
    ("::ffff:192.0.2.1", "egress.mailfleet.io/0000-0000-0000-0000-0000-ffff-c000-0201"),
    ("fe80::1:2:3:4", "egress.mailfleet.io/fe80-0000-0000-0000-0001-0002-0003-0004"),
], ids=lambda v: v)
def test_holder_labels_are_valid_kubernetes_labels_for_ipv4_and_ipv6(address: str,
                                                                    key: str) -> None:
    got_key, value = egress_attachment.holder_label(address)
    assert got_key == key
    assert_label_key(got_key)
    assert_label_value(value)


def test_holder_labels_differ_per_ip() -> None:
    addresses = ["203.0.113.10", "203.0.113.11", "2001:db8::10", "2001:db8::1:0", "::1", "::"]
    assert len({egress_attachment.holder_label(a)[0] for a in addresses}) == len(addresses)


@pytest.mark.parametrize("mode", list(ATTACHMENTS))
def test_object_labels_find_the_pool_and_are_valid(mode: str) -> None:
    for obj in egress_attachment.build_egress_objects(spec_for(ATTACHMENTS[mode]), "mail",
                                                      "pool", "uid-1"):
        labels = obj["metadata"]["labels"]
        for key, value in labels.items():
            assert_label_key(key)
            assert_label_value(value)
        assert egress_attachment.owner_labels("mail", "pool").items() <= labels.items()
        assert labels[children.POOL_LABEL] == "pool"
        assert labels[egress_attachment.POOL_UID_LABEL] == "uid-1"
    assert egress_attachment.owner_selector("mail", "pool") == (
        "mailfleet.io/pool=pool,mailfleet.io/pool-namespace=mail")


NAME_CASES = [
    ("mail", "pool", "203.0.113.10"),
    ("mail", "pool", "203.0.113.11"),
    ("mail", "pool", "2001:db8::10"),
    ("mail", "pool", "::1"),
    ("mail-a", "pool", "203.0.113.10"),  # these two would collide with "-" as separator
    ("mail", "a-pool", "203.0.113.10"),
    ("mail", "a.pool", "203.0.113.10"),  # pool names may have dots, namespaces may not
    ("other", "pool", "203.0.113.10"),
    ("n" * 63, "p" * 253, "2001:db8::10"),
    ("n" * 63, "p" * 252 + "q", "2001:db8::10"),
    ("n" * 63, "p" * 253, "203.0.113.10"),
]


def test_object_names_are_dns_subdomains_unique_per_namespace_pool_and_ip() -> None:
    names = [egress_attachment.object_name(*case) for case in NAME_CASES]
    for name in names:
        assert len(name) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(name), name
    assert len(set(names)) == len(names)
    assert egress_attachment.object_name("mail", "pool", "203.0.113.10") == (
        "mailfleet.mail.pool.203-0-113-10")
    # deterministic, and one name per address however it is spelled
    assert egress_attachment.object_name("mail", "pool", "2001:DB8::10") == (
        egress_attachment.object_name("mail", "pool", "2001:db8:0::10"))


@pytest.mark.parametrize("mode", list(ATTACHMENTS))
def test_the_same_spec_builds_the_same_objects(mode: str) -> None:
    spec = spec_for(ATTACHMENTS[mode])
    first = egress_attachment.build_egress_objects(spec, "mail", "pool", "uid-1")
    assert first == egress_attachment.build_egress_objects(spec, "mail", "pool", "uid-1")
    assert len({o["metadata"]["name"] for o in first}) == len(IPS)


# --- the model -----------------------------------------------------------------------------------

def _error(attachment: dict[str, Any], ips: list[dict[str, Any]] = IPS,
           replicas: int = 3) -> str:
    with pytest.raises(ValidationError) as info:
        spec_for(attachment, ips, replicas)
    return str(info.value)


@pytest.mark.parametrize(("attachment", "message"), [
    ({"mode": "Cilium"}, "mode is Cilium but egress.attachment.cilium.nodeSelector is missing"),
    ({"mode": "Cilium", "cilium": {}}, "nodeSelector\n  Field required"),
    ({"mode": "Cilium", "cilium": {"nodeSelector": {}}}, "cilium.nodeSelector selects every node"),
    ({"mode": "Cilium", "cilium": {"nodeSelector": {"matchLabels": {}}}},
     "cilium.nodeSelector selects every node"),
    ({"mode": "Antrea", "cilium": {"nodeSelector": {"matchLabels": {"a": "b"}}}},
     "egress.attachment.cilium is set but mode is not Cilium"),
    ({"mode": "Bind", "antrea": {}}, "egress.attachment.antrea is set but mode is not Antrea"),
    ({"mode": "Calico"}, "Input should be 'Bind', 'Cilium', 'Antrea' or 'OVNKubernetes'"),
    ({"mode": "OVNKubernetes", "extra": 1}, "Extra inputs are not permitted"),
], ids=["cilium mode without cilium settings", "cilium settings without a node selector",
        "an empty node selector", "an empty matchLabels", "cilium settings in Antrea mode",
        "antrea settings in Bind mode", "an unknown mode", "an unknown field"])
def test_attachments_the_operator_refuses_say_why(attachment: dict[str, Any],
                                                  message: str) -> None:
    assert message in _error(attachment)


def test_a_cilium_interface_is_refused_for_more_than_one_ip() -> None:
    attachment = {"mode": "Cilium", "cilium": {
        "nodeSelector": {"matchLabels": {"egress-gateway": "true"}}, "interface": "eth1"}}
    assert "with more than one egress IP leave it empty" in _error(attachment)
    spec_for(attachment, IPS[:1], 1)  # one IP: its interface may carry it


@pytest.mark.parametrize("mode", list(ATTACHMENTS))
def test_cni_modes_need_an_active_pod_per_ip(mode: str) -> None:
    """Source NAT is per pod: a pod holding two IPs would leave from either."""
    needs = "at least as many active replicas (replicas, or autoscaling.minReplicas) as egress"
    assert needs in _error(ATTACHMENTS[mode], IPS, 2)
    autoscaled = {"autoscaling": {"minReplicas": 2, "maxReplicas": 9},
                  "egress": {"ips": IPS, "attachment": ATTACHMENTS[mode]}}
    with pytest.raises(ValidationError, match=r"autoscaling\.minReplicas\) as egress IPs"):
        sp.SendingPoolSpec.model_validate(autoscaled)
    spec_for({"mode": "Bind"}, IPS, 1)  # the sender binds: one pod may hold several IPs


def test_two_spellings_of_one_address_are_one_ip() -> None:
    ips = [{"address": "2001:db8::10", "heloName": "a.example.com"},
           {"address": "2001:DB8:0::10", "heloName": "b.example.com"}]
    assert "duplicate IP address" in _error({"mode": "Bind"}, ips, 2)


def test_the_crd_carries_every_cross_field_rule_as_cel() -> None:
    """Validation at the door: each pydantic rule above has a CEL twin in the CRD."""
    spec = crds.openapi_schema("SendingPool")["properties"]["spec"]
    egress = spec["properties"]["egress"]
    attachment = egress["properties"]["attachment"]
    cilium = attachment["properties"]["cilium"]
    rules = {
        "spec": [r["rule"] for r in spec["x-kubernetes-validations"]],
        "egress": [r["rule"] for r in egress["x-kubernetes-validations"]],
        "attachment": [r["rule"] for r in attachment["x-kubernetes-validations"]],
        "cilium": [r["rule"] for r in cilium["x-kubernetes-validations"]],
    }
    assert any("size(self.egress.ips)" in r for r in rules["spec"])
    assert any("cilium.interface" in r and "size(self.ips)" in r for r in rules["egress"])
    assert "self.mode != 'Cilium' || has(self.cilium)" in rules["attachment"]
    assert any("has(self.antrea)" in r for r in rules["attachment"])
    assert any("nodeSelector.matchLabels" in r for r in rules["cilium"])
    assert cilium["required"] == ["nodeSelector"]
    assert attachment["properties"]["mode"]["enum"] == ["Bind", "Cilium", "Antrea",
                                                        "OVNKubernetes"]
    assert attachment["default"] == {"mode": "Bind"}


# --- the sender's config --------------------------------------------------------------------------

def _rendered(spec: sp.SendingPoolSpec) -> tuple[sc.SenderConfig, str]:
    out = sender_config.render_config(sender_config.RenderInput(
        name="pool", namespace="mail", spec=spec, active_pods=3, domain_auths={}))
    return sc.parse_config(out.text), out.text


@pytest.mark.parametrize("mode", list(ATTACHMENTS))
def test_cni_modes_render_bind_source_false(mode: str) -> None:
    config, text = _rendered(spec_for(ATTACHMENTS[mode]))
    assert config.delivery.bind_source is False
    assert "bindSource: false" in text


def test_bind_mode_leaves_bind_source_out_of_the_file() -> None:
    config, text = _rendered(spec_for({"mode": "Bind"}))
    assert config.delivery.bind_source is True
    assert "bindSource" not in text


# --- the API table --------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "resource"), [
    ("Cilium", resources.CILIUM_EGRESS_GATEWAY_POLICIES),
    ("Antrea", resources.ANTREA_EGRESSES),
    ("OVNKubernetes", resources.OVN_EGRESS_IPS),
])
def test_the_api_table_declares_each_kind_cluster_scoped(mode: str,
                                                         resource: resources.Resource) -> None:
    assert egress_attachment.gvr_for(mode) == (  # type: ignore[arg-type]
        resource.group, resource.version, resource.plural)
    assert egress_attachment.kind_for(mode) == resource.kind  # type: ignore[arg-type]
    assert not resource.namespaced
    assert resource in resources.ALL
    assert {"list", "create", "patch", "delete"} <= resource.verbs
    assert resource.path(name="x", namespace="ignored") == (
        f"/apis/{resource.group}/{resource.version}/{resource.plural}/x")
    assert egress_attachment.CNI_MODES == tuple(ATTACHMENTS)
    assert ipaddress.ip_address("2001:db8::10")  # (IPv6 cases above are real addresses)
