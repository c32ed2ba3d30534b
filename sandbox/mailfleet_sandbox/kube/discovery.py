"""Discovery documents: /version, /api, /apis, /api/v1, /apis/{group}[/{version}]
(pure, no I/O). Only the legacy (unaggregated) format is served; clients that ask for
aggregated discovery (apidiscovery.k8s.io/v2) fall back to it on a plain application/json
answer, as client-go does."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from mailfleet_sandbox.kube.resources import ResourceType

JSON = dict[str, Any]

SERVER_VERSION: JSON = {
    "major": "1", "minor": "36", "gitVersion": "v1.36.0-mailfleet.sandbox",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
    "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": "36",
}


def api_versions(server_address: str) -> JSON:
    return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def api_group(name: str, versions: list[str]) -> JSON:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": entries,
            "preferredVersion": entries[0]}


def api_group_list(groups: dict[str, list[str]]) -> JSON:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [{k: v for k, v in api_group(name, versions).items()
                        if k not in ("kind", "apiVersion")}
                       for name, versions in groups.items() if name]}


def _storage_hash(rt: ResourceType) -> str:
    digest = hashlib.sha256(f"{rt.group}/{rt.version}/{rt.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def resource_list(group_version: str, types: list[ResourceType]) -> JSON:
    resources: list[JSON] = []
    for rt in sorted(types, key=lambda r: r.plural):
        entry: JSON = {"name": rt.plural, "singularName": rt.singular,
                       "namespaced": rt.namespaced, "kind": rt.kind, "verbs": list(rt.verbs),
                       "storageVersionHash": _storage_hash(rt)}
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        if rt.status:
            resources.append({"name": f"{rt.plural}/status", "singularName": "",
                              "namespaced": rt.namespaced, "kind": rt.kind,
                              "verbs": ["get", "patch", "update"]})
        if rt.scale is not None:
            resources.append({"name": f"{rt.plural}/scale", "singularName": "",
                              "namespaced": rt.namespaced, "group": "autoscaling",
                              "version": "v1", "kind": "Scale",
                              "verbs": ["get", "patch", "update"]})
        if rt.storage_key == "/pods":
            resources.append({"name": "pods/binding", "singularName": "", "namespaced": True,
                              "kind": "Binding", "verbs": ["create"]})
        if rt.storage_key == "/namespaces":
            resources.append({"name": "namespaces/finalize", "singularName": "",
                              "namespaced": False, "kind": "Namespace", "verbs": ["update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}
