"""The per-IP CNI egress objects of a SendingPool and the holder label they select (pure, no I/O).

In the CNI attachment modes (`spec.egress.attachment.mode`: Cilium, Antrea, OVNKubernetes) the
sender does not bind its source address: the CNI source-NATs the traffic of the pod that holds
an IP's lease. The operator marks that pod with the IP's holder label (`holder_label`) and
keeps one cluster-scoped object per IP selecting exactly that label in the pool's namespace:

- Cilium: `CiliumEgressGatewayPolicy` (cilium.io/v2), SNAT on the gateway nodes named by
  `attachment.cilium.nodeSelector`, to `egressGateway.egressIP` (or the first address of
  `attachment.cilium.interface`: Cilium refuses both at once);
- Antrea: `Egress` (crd.antrea.io/v1beta1), `egressIP`, optionally from an ExternalIPPool;
- OVN-Kubernetes: `EgressIP` (k8s.ovn.org/v1), one address in `egressIPs`.

Why some choices:
- The objects are cluster-scoped, so they cannot carry an owner reference to the namespaced
  pool and garbage collection will not remove them. Their names are derived from namespace,
  pool and IP (`object_name`), and they carry the pool's labels plus `POOL_NAMESPACE_LABEL`:
  the reconciler lists them with `owner_selector` and deletes what `build_egress_objects`
  no longer wants, including all of them when the pool is deleted.
- Selectors use the namespace's `kubernetes.io/metadata.name` label (set by the API server on
  every namespace) and never the pool's pod labels: only the holder is selected, and a
  standby or draining pod of the pool keeps the node's address.
- SNAT applies to a whole pod, so a pod holding two IPs would be selected by two objects and
  leave from either address; the API refuses fewer active pods than IPs in these modes.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import children

HOLDER_LABEL_PREFIX = "egress.mailfleet.io/"
HOLDER_LABEL_VALUE = "holder"
POOL_NAMESPACE_LABEL = "mailfleet.io/pool-namespace"
"""The pool name alone is ambiguous for cluster-scoped objects: pools in two namespaces may
share it."""
POOL_UID_LABEL = "mailfleet.io/pool-uid"
EGRESS_IP_ANNOTATION = "mailfleet.io/egress-ip"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NAME_PREFIX = "mailfleet"
_MAX_NAME = 253

CILIUM = ("cilium.io", "v2", "ciliumegressgatewaypolicies")
ANTREA = ("crd.antrea.io", "v1beta1", "egresses")
OVN_KUBERNETES = ("k8s.ovn.org", "v1", "egressips")
_GVR: dict[str, tuple[str, str, str]] = {
    "Cilium": CILIUM,
    "Antrea": ANTREA,
    "OVNKubernetes": OVN_KUBERNETES,
}
_KIND = {
    "Cilium": "CiliumEgressGatewayPolicy",
    "Antrea": "Egress",
    "OVNKubernetes": "EgressIP",
}
CNI_MODES: tuple[sp.AttachmentMode, ...] = ("Cilium", "Antrea", "OVNKubernetes")
"""Modes with per-IP objects: a reconciler lists every one of these kinds, so that switching
modes (or back to Bind) deletes the objects of the previous mode."""


def binds_source(mode: sp.AttachmentMode) -> bool:
    """Whether the sender binds the leased address itself (Bind) or the CNI source-NATs."""
    return mode == "Bind"


def gvr_for(mode: sp.AttachmentMode) -> tuple[str, str, str]:
    """(group, version, plural) of the per-IP objects of a CNI mode; ValueError for Bind."""
    try:
        return _GVR[mode]
    except KeyError:
        raise ValueError(f"attachment mode {mode} has no per-IP CNI objects") from None


def kind_for(mode: sp.AttachmentMode) -> str:
    gvr_for(mode)
    return _KIND[mode]


def _address_slug(address: str) -> str:
    """The address as label-name characters: IPv4 dotted quad with '-', IPv6 in its exploded
    form with '-' (always 39 characters starting with a hex digit, so "::1" does not turn into
    an invalid "--1", and every spelling of one address gives one slug)."""
    ip = ipaddress.ip_address(address)
    text = ip.exploded if ip.version == 6 else str(ip)
    return text.replace(":", "-").replace(".", "-").lower()


def holder_label(address: str) -> tuple[str, str]:
    """(key, value) of the label the operator sets on the pod holding `address`'s lease."""
    return f"{HOLDER_LABEL_PREFIX}{_address_slug(address)}", HOLDER_LABEL_VALUE


def object_name(namespace: str, pool: str, address: str) -> str:
    """`mailfleet.<namespace>.<pool>.<address slug>`: a DNS subdomain, unique per pool and IP.

    Namespaces have no dots and slugs have none either, so the first and last dots split the
    name back unambiguously even when the pool name has dots. A name over 253 characters
    (pool names may be long) keeps the slug and replaces the middle with a digest."""
    slug = _address_slug(address)
    name = f"{NAME_PREFIX}.{namespace}.{pool}.{slug}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(f"{namespace}/{pool}".encode()).hexdigest()[:16]
    head = f"{NAME_PREFIX}.{namespace}"[: _MAX_NAME - len(slug) - len(digest) - 2].rstrip(".-")
    return f"{head}.{digest}.{slug}"


def owner_labels(namespace: str, pool: str) -> dict[str, str]:
    """Labels that find every per-IP object of one pool (a list's label selector)."""
    return {children.POOL_LABEL: pool, POOL_NAMESPACE_LABEL: namespace}


def owner_selector(namespace: str, pool: str) -> str:
    """`owner_labels` as a label selector string, for a list call."""
    return ",".join(f"{k}={v}" for k, v in sorted(owner_labels(namespace, pool).items()))


def _metadata(namespace: str, pool: str, uid: str, address: str) -> dict[str, Any]:
    return {
        "name": object_name(namespace, pool, address),
        "labels": {
            **children.labels(pool),
            children.ROLE_LABEL: "egress",
            **owner_labels(namespace, pool),
            POOL_UID_LABEL: uid,
        },
        "annotations": {EGRESS_IP_ANNOTATION: address},
    }


def _holder_selectors(namespace: str, address: str) -> dict[str, Any]:
    key, value = holder_label(address)
    return {
        "podSelector": {"matchLabels": {key: value}},
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
    }


def _all_destinations(address: str) -> list[str]:
    return ["::/0"] if ipaddress.ip_address(address).version == 6 else ["0.0.0.0/0"]


def _cilium_spec(attachment: sp.Attachment, namespace: str, address: str) -> dict[str, Any]:
    settings = attachment.cilium
    if settings is None:  # the model refuses Cilium mode without settings
        raise ValueError("egress.attachment.mode is Cilium but egress.attachment.cilium is unset")
    gateway: dict[str, Any] = {
        "nodeSelector": settings.node_selector.model_dump(by_alias=True, exclude_none=True)
    }
    if settings.interface:
        gateway["interface"] = settings.interface
    else:
        gateway["egressIP"] = address
    spec: dict[str, Any] = {
        "selectors": [_holder_selectors(namespace, address)],
        "destinationCIDRs": list(settings.destination_cidrs or _all_destinations(address)),
        "egressGateway": gateway,
    }
    if settings.excluded_cidrs:
        spec["excludedCIDRs"] = list(settings.excluded_cidrs)
    return spec


def _antrea_spec(attachment: sp.Attachment, namespace: str, address: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "appliedTo": _holder_selectors(namespace, address),
        "egressIP": address,
    }
    if attachment.antrea is not None and attachment.antrea.external_ip_pool:
        spec["externalIPPool"] = attachment.antrea.external_ip_pool
    return spec


def _ovn_spec(attachment: sp.Attachment, namespace: str, address: str) -> dict[str, Any]:
    del attachment
    return {"egressIPs": [address], **_holder_selectors(namespace, address)}


_SPEC_BUILDERS = {"Cilium": _cilium_spec, "Antrea": _antrea_spec, "OVNKubernetes": _ovn_spec}


def build_egress_objects(
    spec: sp.SendingPoolSpec, namespace: str, pool: str, uid: str
) -> list[dict[str, Any]]:
    """The desired per-IP CNI objects of a pool, one per egress IP in spec order; [] for Bind.

    A reconciler applies these and deletes the objects listed with `owner_selector` (in every
    kind of `CNI_MODES`) whose name is not among them."""
    attachment = spec.egress.attachment
    if binds_source(attachment.mode):
        return []
    group, version, _plural = gvr_for(attachment.mode)
    build = _SPEC_BUILDERS[attachment.mode]
    return [
        {
            "apiVersion": f"{group}/{version}",
            "kind": kind_for(attachment.mode),
            "metadata": _metadata(namespace, pool, uid, ip.address),
            "spec": build(attachment, namespace, ip.address),
        }
        for ip in spec.egress.ips
    ]
