"""Per-kind defaulting and validation for the built-in kinds, the part of each kind's
registry strategy that clients notice (pure, no I/O)."""

from __future__ import annotations

import base64
import copy
import ipaddress
import re
from typing import Any

from mailfleet_sandbox.kube import errors, selectors
from mailfleet_sandbox.kube.resources import ResourceType

JSON = dict[str, Any]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                 "characters, '-' or '.', and must start and end with an alphanumeric character "
                 "(e.g. 'example.com', regex used for validation is "
                 "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
             "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
             "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
               "start with an alphabetic character, and end with an alphanumeric character "
               "(e.g. 'my-name',  or 'abc-123', regex used for validation is "
               "'[a-z]([-a-z0-9]*[a-z0-9])?')")

_LABEL_NAMED = {"namespaces"}
_DNS1035_NAMED = {"services"}


def validate_name(rt: ResourceType, name: str) -> list[errors.Cause]:
    if rt.plural in _DNS1035_NAMED:
        ok, msg, limit = bool(_DNS1035.match(name)), DNS1035_MSG, 63
    elif rt.plural in _LABEL_NAMED:
        ok, msg, limit = bool(_LABEL.match(name)), LABEL_MSG, 63
    elif rt.crd or rt.plural not in ("roles", "clusterroles", "rolebindings",
                                     "clusterrolebindings"):
        ok, msg, limit = bool(_SUBDOMAIN.match(name)), SUBDOMAIN_MSG, 253
    else:
        ok, msg, limit = "/" not in name and name not in (".", ".."), \
            "may not contain '/'", 253
    causes = []
    if len(name) > limit:
        causes.append(errors.field_invalid("metadata.name", name,
                                           f"must be no more than {limit} characters"))
    if not ok:
        causes.append(errors.field_invalid("metadata.name", name, msg))
    return causes


def validate_metadata(meta: JSON) -> list[errors.Cause]:
    causes: list[errors.Cause] = []
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return [errors.field_invalid("metadata.labels", labels, "must be a map")]
    for k, v in labels.items():
        why = selectors.validate_label_key(k)
        if why:
            causes.append(errors.field_invalid("metadata.labels", k, why))
        why = selectors.validate_label_value(str(v)) if isinstance(v, str) else "must be a string"
        if why:
            causes.append(errors.field_invalid("metadata.labels", v, why))
    for k in (meta.get("annotations") or {}):
        why = selectors.validate_label_key(k)
        if why:
            causes.append(errors.field_invalid("metadata.annotations", k, why))
    return causes


def _image_pull_policy(image: str) -> str:
    tag = image.rsplit("/", 1)[-1]
    return "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent"


def _default_containers(containers: list[JSON]) -> None:
    for c in containers:
        if not isinstance(c, dict):
            continue
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        if isinstance(c.get("image"), str):
            c.setdefault("imagePullPolicy", _image_pull_policy(c["image"]))
        c.setdefault("resources", {})
        for p in c.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


def default_pod_spec(spec: JSON) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    _default_containers(spec.get("containers") or [])
    _default_containers(spec.get("initContainers") or [])


def default_object(rt: ResourceType, obj: JSON, old: JSON | None,
                   allocate_ip: Any = None) -> None:
    """Fill in the defaults kube-apiserver sets, in place."""
    key = rt.storage_key
    spec = obj.get("spec")
    if key == "/namespaces":
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif key == "/pods" and isinstance(spec, dict):
        default_pod_spec(spec)
        spec.setdefault("serviceAccountName", "default")
        if old is None:
            obj.setdefault("status", {}).setdefault("phase", "Pending")
            obj["status"].setdefault("qosClass", "BestEffort")
    elif key in ("apps/deployments", "apps/statefulsets", "apps/replicasets") \
            and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        if key != "apps/replicasets":  # a ReplicaSet has no revision history
            spec.setdefault("revisionHistoryLimit", 10)
        template = spec.get("template")
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            default_pod_spec(template["spec"])
            template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        if key == "apps/deployments":
            spec.setdefault("strategy", {"type": "RollingUpdate", "rollingUpdate": {
                "maxUnavailable": "25%", "maxSurge": "25%"}})
            spec.setdefault("progressDeadlineSeconds", 600)
        elif key == "apps/statefulsets":
            spec.setdefault("podManagementPolicy", "OrderedReady")
            spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                               "rollingUpdate": {"partition": 0}})
            strategy = spec["updateStrategy"]
            if strategy.get("type") == "RollingUpdate":
                strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
            spec.setdefault("persistentVolumeClaimRetentionPolicy",
                            {"whenDeleted": "Retain", "whenScaled": "Retain"})
            for pvc in spec.get("volumeClaimTemplates") or []:
                if isinstance(pvc, dict):
                    pvc.setdefault("apiVersion", "v1")
                    pvc.setdefault("kind", "PersistentVolumeClaim")
                    pvc.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
                    pvc.setdefault("status", {"phase": "Pending"})
    elif key == "/services" and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for p in spec.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
        if old is not None and (old.get("spec") or {}).get("clusterIP"):
            spec.setdefault("clusterIP", old["spec"]["clusterIP"])
            spec.setdefault("clusterIPs", old["spec"].get("clusterIPs"))
        elif "clusterIP" not in spec and allocate_ip is not None:
            ip = allocate_ip()
            spec["clusterIP"] = ip
            spec["clusterIPs"] = [ip]
        elif spec.get("clusterIP") and "clusterIPs" not in spec:
            spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        obj.setdefault("status", {}).setdefault("loadBalancer", {})
    elif key == "/secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {}) or {}
            obj["data"] = data
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
    elif key == "/persistentvolumeclaims" and isinstance(spec, dict):
        spec.setdefault("volumeMode", "Filesystem")
        obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif key == "policy/poddisruptionbudgets":
        obj.setdefault("status", {}).setdefault("disruptionsAllowed", 0)
        obj["status"].setdefault("currentHealthy", 0)
        obj["status"].setdefault("desiredHealthy", 0)
        obj["status"].setdefault("expectedPods", 0)


def _validate_containers(containers: Any, path: str) -> list[errors.Cause]:
    causes: list[errors.Cause] = []
    if not isinstance(containers, list) or not containers:
        return [errors.field_required(path)]
    names: set[str] = set()
    for i, c in enumerate(containers):
        cpath = f"{path}[{i}]"
        if not isinstance(c, dict):
            causes.append(errors.field_invalid(cpath, c, "must be an object"))
            continue
        name = c.get("name")
        if not name:
            causes.append(errors.field_required(f"{cpath}.name"))
        elif not isinstance(name, str) or not _LABEL.match(name):
            causes.append(errors.field_invalid(f"{cpath}.name", name, LABEL_MSG))
        elif name in names:
            causes.append(errors.field_duplicate(f"{cpath}.name", name))
        else:
            names.add(name)
        if not c.get("image"):
            causes.append(errors.field_required(f"{cpath}.image"))
    return causes


def _validate_workload(obj: JSON, old: JSON | None, kind_key: str) -> list[errors.Cause]:
    causes: list[errors.Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [errors.field_required("spec")]
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        causes.append(errors.field_invalid("spec.replicas", replicas, "must be an integer"))
    elif replicas < 0:
        causes.append(errors.field_invalid("spec.replicas", replicas,
                                           "must be greater than or equal to 0"))
    selector = spec.get("selector")
    template = spec.get("template") or {}
    if not selector:
        causes.append(errors.field_required("spec.selector"))
    else:
        try:
            sel = selectors.selector_from_label_selector_object(selector)
        except selectors.SelectorError as exc:
            causes.append(errors.field_invalid("spec.selector", selector, str(exc)))
        else:
            if sel.empty:
                causes.append(errors.field_invalid("spec.selector", selector,
                                                   "empty selector is invalid for deployment"))
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not sel.matches(labels):
                causes.append(errors.field_invalid(
                    "spec.template.metadata.labels", labels,
                    "`selector` does not match template `labels`"))
    causes += _validate_containers((template.get("spec") or {}).get("containers"),
                                   "spec.template.spec.containers")
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        causes.append(errors.field_invalid("spec.selector", selector, "field is immutable"))
    if kind_key == "apps/statefulsets" and old is not None:
        mutable = {"replicas", "ordinals", "template", "updateStrategy",
                   "persistentVolumeClaimRetentionPolicy", "minReadySeconds"}
        strip = {k: v for k, v in spec.items() if k not in mutable}
        old_strip = {k: v for k, v in (old.get("spec") or {}).items() if k not in mutable}
        if strip != old_strip:
            causes.append(errors.field_forbidden(
                "spec", "updates to statefulset spec for fields other than 'replicas', "
                "'ordinals', 'template', 'updateStrategy', "
                "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"))
    return causes


def _pod_spec_mutable_view(spec: JSON) -> JSON:
    view = copy.deepcopy(spec)
    for c in view.get("containers") or []:
        if isinstance(c, dict):
            c.pop("image", None)
    for c in view.get("initContainers") or []:
        if isinstance(c, dict):
            c.pop("image", None)
    view.pop("activeDeadlineSeconds", None)
    view.pop("tolerations", None)
    view.pop("terminationGracePeriodSeconds", None)
    view.pop("schedulingGates", None)
    if not spec.get("nodeName"):
        view.pop("nodeName", None)
    return view


def validate_object(rt: ResourceType, obj: JSON, old: JSON | None) -> list[errors.Cause]:
    """Validation a client notices; not the whole of kube-apiserver's."""
    causes = validate_metadata(obj.get("metadata") or {})
    key = rt.storage_key
    spec = obj.get("spec")
    if key == "/pods":
        if not isinstance(spec, dict):
            return [*causes, errors.field_required("spec")]
        causes += _validate_containers(spec.get("containers"), "spec.containers")
        if old is not None:
            old_spec = old.get("spec") or {}
            was = _pod_spec_mutable_view(old_spec)
            now = _pod_spec_mutable_view(spec)
            if old_spec.get("nodeName"):
                now.setdefault("nodeName", old_spec["nodeName"])
            if was != now:
                causes.append(errors.field_forbidden(
                    "spec", "pod updates may not change fields other than "
                    "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
                    "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 "
                    "if it was previously negative)"))
    elif key in ("apps/deployments", "apps/statefulsets", "apps/replicasets"):
        causes += _validate_workload(obj, old, key)
    elif key == "/services" and isinstance(spec, dict):
        if spec.get("type", "ClusterIP") != "ExternalName" and not spec.get("ports") \
                and spec.get("clusterIP") != "None":
            causes.append(errors.field_required("spec.ports"))
        if old is not None:
            old_ip = (old.get("spec") or {}).get("clusterIP")
            if old_ip and spec.get("clusterIP") not in (None, old_ip):
                causes.append(errors.field_invalid("spec.clusterIP", spec.get("clusterIP"),
                                                   "field is immutable"))
    elif key in ("/configmaps", "/secrets") and old is not None and old.get("immutable"):
        for fld in ("data", "binaryData", "stringData"):
            if obj.get(fld) != old.get(fld):
                causes.append(errors.field_forbidden(
                    fld, "field is immutable when `immutable` is set"))
    elif key == "networking.k8s.io/networkpolicies":
        causes += _validate_network_policy(spec)
    elif key == "/persistentvolumeclaims" and old is not None:
        if (obj.get("spec") or {}).get("accessModes") != (old.get("spec") or {}).get(
                "accessModes"):
            causes.append(errors.field_forbidden("spec", "spec is immutable after creation "
                                                 "except resources.requests and "
                                                 "volumeAttributesClassName for bound claims"))
    return causes


def _validate_network_policy(spec: Any) -> list[errors.Cause]:
    """The NetworkPolicy rules a wrong client would trip first: a pod selector, known policy
    types, port numbers in range, CIDR networks, and peers of one form (kube-apiserver's
    ValidateNetworkPolicySpec, in part)."""
    if not isinstance(spec, dict):
        return [errors.field_required("spec")]
    causes: list[errors.Cause] = []
    if not isinstance(spec.get("podSelector"), dict):
        causes.append(errors.field_required("spec.podSelector"))
    for i, kind in enumerate(spec.get("policyTypes") or []):
        if kind not in ("Ingress", "Egress"):
            causes.append(errors.field_not_supported(f"spec.policyTypes[{i}]", kind,
                                                   ["Ingress", "Egress"]))
    for i, rule in enumerate(spec.get("ingress") or []):
        for j, port in enumerate(rule.get("ports") or []):
            number = port.get("port")
            if isinstance(number, int) and not 1 <= number <= 65535:
                causes.append(errors.field_invalid(f"spec.ingress[{i}].ports[{j}].port",
                                                   number, "must be between 1 and 65535"))
        for j, peer in enumerate(rule.get("from") or []):
            path = f"spec.ingress[{i}].from[{j}]"
            block = peer.get("ipBlock")
            if block is not None and (peer.get("podSelector") is not None
                                      or peer.get("namespaceSelector") is not None):
                causes.append(errors.field_forbidden(path, "may not specify more than 1 "
                                                     "from type"))
            for cidr in ([block.get("cidr"), *(block.get("except") or [])]
                         if block else []):
                try:
                    if "/" not in str(cidr):
                        raise ValueError(cidr)
                    ipaddress.ip_network(str(cidr), strict=False)
                except ValueError:
                    causes.append(errors.field_invalid(f"{path}.ipBlock", cidr,
                                                       "must be a valid CIDR"))
    return causes


def validate_crd(crd: JSON) -> list[errors.Cause]:
    causes: list[errors.Cause] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = spec.get("group", ""), names.get("plural", "")
    if not group:
        causes.append(errors.field_required("spec.group"))
    elif "." not in group:
        causes.append(errors.field_invalid("spec.group", group, "should be a domain with at "
                                           "least one dot"))
    if not plural:
        causes.append(errors.field_required("spec.names.plural"))
    if not names.get("kind"):
        causes.append(errors.field_required("spec.names.kind"))
    if not names.get("listKind") and names.get("kind"):
        names["listKind"] = f"{names['kind']}List"
    name = (crd.get("metadata") or {}).get("name", "")
    protected = any(group == g or group.endswith("." + g) for g in ("k8s.io", "kubernetes.io"))
    annotations = (crd.get("metadata") or {}).get("annotations") or {}
    if protected and not annotations.get("api-approved.kubernetes.io"):
        causes.append(errors.field_required(
            "metadata.annotations[api-approved.kubernetes.io]",
            'protected groups must have approval annotation "api-approved.kubernetes.io", '
            "see https://github.com/kubernetes/enhancements/pull/1111"))
    if group and plural and name != f"{plural}.{group}":
        causes.append(errors.field_invalid("metadata.name", name,
                                           'must be spec.names.plural+"."+spec.group'))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(errors.field_not_supported("spec.scope", spec.get("scope"),
                                                 ["Cluster", "Namespaced"]))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(errors.field_required("spec.versions", "must have exactly one version "
                                            "marked as storage version"))
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
    if versions and len(storage) != 1:
        causes.append(errors.field_invalid("spec.versions", versions,
                                           "must have exactly one version marked as storage "
                                           "version"))
    for i, ver in enumerate(versions):
        if not isinstance(ver, dict):
            continue
        schema = (ver.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            causes.append(errors.field_required(f"spec.versions[{i}].schema.openAPIV3Schema",
                                                "schemas are required"))
        elif isinstance(schema, dict) and schema.get("type") != "object":
            causes.append(errors.field_invalid(
                f"spec.versions[{i}].schema.openAPIV3Schema.type", schema.get("type"),
                "must be object at the root"))
    return causes
