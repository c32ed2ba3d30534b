"""The resource types the emulator serves: built-in kinds and those created from CRDs
(pure, no I/O). One `ResourceType` per served group/version/resource."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
COMMON_FIELD_LABELS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class ScaleSpec:
    """Where a kind keeps replica counts for its /scale subresource (CRD-style paths)."""

    spec_replicas: str = ".spec.replicas"
    status_replicas: str = ".status.replicas"
    label_selector: str | None = ".status.selector"


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    status: bool = False
    scale: ScaleSpec | None = None
    schema: JSON | None = None
    printer_columns: list[JSON] = field(default_factory=list)
    crd: bool = False
    tracks_generation: bool = False
    field_labels: frozenset[str] = COMMON_FIELD_LABELS
    served: bool = True
    storage_version: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> str:
        """Objects are stored per group/resource; every served version reads the same ones."""
        return f"{self.group}/{self.plural}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def strategic(self) -> bool:
        """Only built-in kinds have strategic-merge metadata; CRDs answer 415."""
        return not self.crd

    @property
    def unconditional_update(self) -> bool:
        """Whether a PUT may omit metadata.resourceVersion (the registry strategy's
        AllowUnconditionalUpdate): most built-in kinds yes; custom resources, CRDs and
        PodDisruptionBudgets no."""
        return not self.crd and self.plural not in ("customresourcedefinitions",
                                                    "poddisruptionbudgets")

    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _rt(group: str, version: str, plural: str, kind: str, namespaced: bool = True, *,
        short: tuple[str, ...] = (), cats: tuple[str, ...] = (), status: bool = False,
        scale: bool = False, gen: bool = False, labels: tuple[str, ...] = (),
        verbs: tuple[str, ...] = ALL_VERBS) -> ResourceType:
    return ResourceType(
        group=group, version=version, plural=plural, singular=kind.lower(), kind=kind,
        namespaced=namespaced, short_names=short, categories=cats, status=status,
        scale=ScaleSpec(label_selector=None) if scale else None, tracks_generation=gen,
        field_labels=COMMON_FIELD_LABELS | frozenset(labels), verbs=verbs)


_POD_LABELS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
               "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
               "status.nominatedNodeName")
_EVENT_LABELS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                 "involvedObject.uid", "involvedObject.apiVersion",
                 "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                 "reportingComponent", "source", "type")
_EVENTS_V1_LABELS = ("regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
                     "regarding.apiVersion", "regarding.resourceVersion", "regarding.fieldPath",
                     "reason", "reportingController", "type")


def builtin_types() -> list[ResourceType]:
    """The kinds a fresh sandbox cluster serves before any CRD is created."""
    return [
        _rt("", "v1", "namespaces", "Namespace", False, short=("ns",), status=True,
            labels=("status.phase",),
            verbs=("create", "delete", "get", "list", "patch", "update", "watch")),
        _rt("", "v1", "pods", "Pod", short=("po",), cats=("all",), status=True,
            labels=_POD_LABELS),
        _rt("", "v1", "services", "Service", short=("svc",), cats=("all",), status=True,
            verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update",
                   "watch")),
        _rt("", "v1", "endpoints", "Endpoints", short=("ep",)),
        _rt("", "v1", "configmaps", "ConfigMap", short=("cm",)),
        _rt("", "v1", "secrets", "Secret", labels=("type",)),
        _rt("", "v1", "events", "Event", short=("ev",), labels=_EVENT_LABELS),
        _rt("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
        _rt("", "v1", "nodes", "Node", False, short=("no",), status=True,
            labels=("spec.unschedulable",)),
        _rt("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",),
            status=True),
        _rt("", "v1", "persistentvolumes", "PersistentVolume", False, short=("pv",), status=True),
        _rt("apps", "v1", "deployments", "Deployment", short=("deploy",), cats=("all",),
            status=True, scale=True, gen=True),
        _rt("apps", "v1", "statefulsets", "StatefulSet", short=("sts",), cats=("all",),
            status=True, scale=True, gen=True),
        _rt("apps", "v1", "replicasets", "ReplicaSet", short=("rs",), cats=("all",),
            status=True, scale=True, gen=True),
        _rt("apps", "v1", "controllerrevisions", "ControllerRevision"),
        _rt("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",),
            status=True, gen=True),
        _rt("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short=("netpol",),
            gen=True),
        _rt("coordination.k8s.io", "v1", "leases", "Lease"),
        _rt("events.k8s.io", "v1", "events", "Event", short=("ev",), labels=_EVENTS_V1_LABELS),
        _rt("rbac.authorization.k8s.io", "v1", "roles", "Role"),
        _rt("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
        _rt("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
        _rt("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
            False),
        _rt("apiextensions.k8s.io", "v1", "customresourcedefinitions",
            "CustomResourceDefinition", False, short=("crd", "crds"), cats=("api-extensions",),
            status=True, gen=True),
    ]


GROUP_PREFERRED: dict[str, str] = {}


def crd_types(crd: JSON) -> list[ResourceType]:
    """Every served version of a CRD as a ResourceType (schemas, subresources, columns)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out: list[ResourceType] = []
    for ver in spec.get("versions") or []:
        subres = ver.get("subresources") or {}
        scale_raw = subres.get("scale")
        scale = None
        if isinstance(scale_raw, dict):
            scale = ScaleSpec(
                spec_replicas=scale_raw.get("specReplicasPath", ".spec.replicas"),
                status_replicas=scale_raw.get("statusReplicasPath", ".status.replicas"),
                label_selector=scale_raw.get("labelSelectorPath"))
        schema = copy.deepcopy((ver.get("schema") or {}).get("openAPIV3Schema") or {})
        columns = ver.get("additionalPrinterColumns")
        if columns is None:
            columns = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        selectable = tuple(f.get("jsonPath", "").lstrip(".")
                           for f in ver.get("selectableFields") or [])
        out.append(ResourceType(
            group=spec.get("group", ""), version=ver.get("name", ""),
            plural=names.get("plural", ""),
            singular=names.get("singular") or str(names.get("kind", "")).lower(),
            kind=names.get("kind", ""), namespaced=spec.get("scope") == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            status="status" in subres, scale=scale, schema=schema,
            printer_columns=list(columns), crd=True, tracks_generation=True,
            field_labels=COMMON_FIELD_LABELS | frozenset(selectable),
            served=bool(ver.get("served", True)), storage_version=bool(ver.get("storage"))))
    return out


def field_value(obj: JSON, label: str) -> str:
    """The string a field selector compares against (`source` is source.component)."""
    if label == "source":
        label = "source.component"
    cur: Any = obj
    for part in label.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)
