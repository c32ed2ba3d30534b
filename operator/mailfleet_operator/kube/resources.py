"""Every Kubernetes resource the operator touches, with the verbs it uses on each.

Pure data (no I/O). `client.Client` refuses a verb that is not declared here, so this table
is complete by construction, and the Helm chart derives the operator's RBAC rules from it
(`rbac_rules()`) instead of a hand-kept list that drifts.

To use a new resource or verb: add or extend an entry here (and nothing else).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete"]


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str
    """"" for the core API group."""
    version: str
    plural: str
    kind: str
    verbs: frozenset[Verb]
    namespaced: bool = True
    subresources: frozenset[str] = frozenset()
    """Subresources written (e.g. "status"), with the same verbs restricted to patch."""
    why: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, *, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection, or of one object when `name` is given."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


def _verbs(*verbs: Verb) -> frozenset[Verb]:
    return frozenset(verbs)


_READ: tuple[Verb, ...] = ("get", "list", "watch")
_WRITE: tuple[Verb, ...] = ("create", "patch", "delete")
# Owned children are watched (drift is repaired), read, created and server-side applied;
# garbage collection deletes them.
_OWNED: tuple[Verb, ...] = ("get", "list", "watch", "create", "patch")

DOMAIN_AUTHS = Resource(
    group="mailfleet.io", version="v1alpha1", plural="domainauths", kind="DomainAuth",
    verbs=_verbs(*_READ, "patch"), subresources=frozenset({"status"}),
    why="watched by kopf; annotations (kopf progress) and status written",
)
SENDING_POOLS = Resource(
    group="mailfleet.io", version="v1alpha1", plural="sendingpools", kind="SendingPool",
    verbs=_verbs(*_READ, "patch"), subresources=frozenset({"status"}),
    why="watched by kopf; DomainAuth reads which pools sign for a domain",
)
IP_WARMUPS = Resource(
    group="mailfleet.io", version="v1alpha1", plural="ipwarmups", kind="IPWarmup",
    verbs=_verbs("list", "watch", "patch"), subresources=frozenset({"status"}),
    why="watched by kopf",
)
SECRETS = Resource(
    group="", version="v1", plural="secrets", kind="Secret",
    verbs=_verbs(*_READ, *_WRITE),
    why="watched: a pool's admin and DKIM Secrets (owned, repaired); DKIM private keys "
    "(one Secret per selector, owned by the DomainAuth; copied to the "
    "pool's <pool>-dkim Secret)",
)
EVENTS = Resource(
    group="", version="v1", plural="events", kind="Event",
    verbs=_verbs("create"),
    why="an event per transition, on the object it is about",
)
DNS_ENDPOINTS = Resource(
    group="externaldns.k8s.io", version="v1alpha1", plural="dnsendpoints", kind="DNSEndpoint",
    verbs=_verbs("get", *_WRITE),
    why="records for external-dns in ExternalDNS publish mode",
)
NAMESPACES = Resource(
    group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False,
    verbs=_verbs("list", "watch"),
    why="kopf resolves namespace patterns",
)
CUSTOM_RESOURCE_DEFINITIONS = Resource(
    group="apiextensions.k8s.io", version="v1", plural="customresourcedefinitions",
    kind="CustomResourceDefinition", namespaced=False, verbs=_verbs("list", "watch"),
    why="kopf discovers the resources it serves",
)
KOPF_PEERINGS = Resource(
    group="kopf.dev", version="v1", plural="kopfpeerings", kind="KopfPeering",
    verbs=_verbs("list", "watch", "patch"), why="kopf peering (namespaced operator, HA)",
)
CLUSTER_KOPF_PEERINGS = Resource(
    group="kopf.dev", version="v1", plural="clusterkopfpeerings", kind="ClusterKopfPeering",
    namespaced=False, verbs=_verbs("list", "watch", "patch"),
    why="kopf peering (cluster-wide operator)",
)

# --- SendingPool children and what the pool controller watches ---------------------------
STATEFUL_SETS = Resource(
    group="apps", version="v1", plural="statefulsets", kind="StatefulSet",
    verbs=_verbs(*_OWNED), why="the sender pods of a SendingPool (owned)",
)
SERVICES = Resource(
    group="", version="v1", plural="services", kind="Service",
    verbs=_verbs(*_OWNED), why="headless and client Services of a SendingPool (owned)",
)
CONFIG_MAPS = Resource(
    group="", version="v1", plural="configmaps", kind="ConfigMap",
    verbs=_verbs(*_OWNED), why="the rendered sender config of a SendingPool (owned)",
)
POD_DISRUPTION_BUDGETS = Resource(
    group="policy", version="v1", plural="poddisruptionbudgets", kind="PodDisruptionBudget",
    verbs=_verbs(*_OWNED), why="one voluntary eviction at a time per SendingPool",
)
NETWORK_POLICIES = Resource(
    group="networking.k8s.io", version="v1", plural="networkpolicies", kind="NetworkPolicy",
    verbs=_verbs(*_OWNED),
    why="who may reach each port of a SendingPool's pods (owned; closed by default)",
)
PERSISTENT_VOLUME_CLAIMS = Resource(
    group="", version="v1", plural="persistentvolumeclaims", kind="PersistentVolumeClaim",
    verbs=_verbs("list", "delete"),
    why="spool volumes of a deleted SendingPool, removed once every queue is confirmed empty "
    "(the StatefulSet retains them)",
)
PODS = Resource(
    group="", version="v1", plural="pods", kind="Pod",
    verbs=_verbs("list", "watch", "patch"),
    why="readiness of sender pods, for IP failover; the serving and per-IP holder labels on "
    "IP holders",
)
NODES = Resource(
    group="", version="v1", plural="nodes", kind="Node", namespaced=False,
    verbs=_verbs("list", "watch"), why="a NotReady node fails over the IPs of its sender pods",
)

LEASES = Resource(
    group="coordination.k8s.io", version="v1", plural="leases", kind="Lease",
    verbs=_verbs("get", "list", "watch", "create", "patch"),
    why="operator leader election (a Lease in the operator's namespace; the IP leases are "
    "Leases in each pool's namespace), written only with resourceVersion preconditions",
)

# --- per-IP CNI egress objects (spec.egress.attachment; logic/egress_attachment.py) ------------
# Cluster-scoped, so no owner reference: listed by the pool's labels, applied, and deleted by
# the operator when the pool or its IP goes (or the pool switches mode); re-listed now and then
# (drift repaired).
_CNI_EGRESS: tuple[Verb, ...] = ("list", "create", "patch", "delete")
CILIUM_EGRESS_GATEWAY_POLICIES = Resource(
    group="cilium.io", version="v2", plural="ciliumegressgatewaypolicies",
    kind="CiliumEgressGatewayPolicy", namespaced=False, verbs=_verbs(*_CNI_EGRESS),
    why="per-IP source NAT of the IP's holder pod, attachment mode Cilium",
)
ANTREA_EGRESSES = Resource(
    group="crd.antrea.io", version="v1beta1", plural="egresses", kind="Egress",
    namespaced=False, verbs=_verbs(*_CNI_EGRESS),
    why="per-IP source NAT of the IP's holder pod, attachment mode Antrea",
)
OVN_EGRESS_IPS = Resource(
    group="k8s.ovn.org", version="v1", plural="egressips", kind="EgressIP",
    namespaced=False, verbs=_verbs(*_CNI_EGRESS),
    why="per-IP source NAT of the IP's holder pod, attachment mode OVNKubernetes",
)

ALL: tuple[Resource, ...] = (
    DOMAIN_AUTHS,
    SENDING_POOLS,
    IP_WARMUPS,
    SECRETS,
    EVENTS,
    DNS_ENDPOINTS,
    NAMESPACES,
    CUSTOM_RESOURCE_DEFINITIONS,
    KOPF_PEERINGS,
    CLUSTER_KOPF_PEERINGS,
    STATEFUL_SETS,
    SERVICES,
    CONFIG_MAPS,
    POD_DISRUPTION_BUDGETS,
    NETWORK_POLICIES,
    PERSISTENT_VOLUME_CLAIMS,
    PODS,
    NODES,
    LEASES,
    CILIUM_EGRESS_GATEWAY_POLICIES,
    ANTREA_EGRESSES,
    OVN_EGRESS_IPS,
)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    cluster_scoped: bool = False

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


def rbac_rules(resources: Iterable[Resource] = ALL) -> list[Rule]:
    """RBAC rules granting exactly the declared verbs (status subresources: patch only)."""
    rules = []
    for resource in resources:
        rules.append(
            Rule(
                api_groups=(resource.group,),
                resources=(resource.plural,),
                verbs=tuple(sorted(resource.verbs)),
                cluster_scoped=not resource.namespaced,
            )
        )
        for sub in sorted(resource.subresources):
            rules.append(
                Rule(
                    api_groups=(resource.group,),
                    resources=(f"{resource.plural}/{sub}",),
                    verbs=("patch",),
                    cluster_scoped=not resource.namespaced,
                )
            )
    return rules
