"""OpenAPI v3 documents per group/version (pure, no I/O).

Custom resources carry their CRD schema, so `kubectl explain` works; built-in kinds get an
open schema. Every PATCH operation lists the `fieldValidation` parameter and the
x-kubernetes-group-version-kind extension: kubectl reads them to decide that the server
validates fields itself. Strategic merge is deliberately not listed for built-in kinds, so
kubectl computes such patches from its compiled-in types rather than from these thin schemas.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from mailfleet_sandbox.kube.resources import ResourceType

JSON = dict[str, Any]
OBJECT_META_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

_OBJECT_META: JSON = {
    "description": "ObjectMeta is metadata that all persisted resources must have, which "
                   "includes all objects users must create.",
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Name must be unique within a namespace."},
        "generateName": {"type": "string", "description": "An optional prefix used by the "
                         "server to generate a unique name."},
        "namespace": {"type": "string", "description": "Namespace defines the space within "
                      "which each name must be unique."},
        "labels": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "Map of string keys and values that can be used to organize "
                   "and categorize objects."},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Annotations is an unstructured key value map."},
        "uid": {"type": "string", "description": "UID is the unique in time and space value "
                "for this object."},
        "resourceVersion": {"type": "string", "description": "An opaque value that "
                            "represents the internal version of this object."},
        "generation": {"type": "integer", "format": "int64", "description": "A sequence "
                       "number representing a specific generation of the desired state."},
        "creationTimestamp": {"type": "string", "format": "date-time",
                              "description": "CreationTimestamp is a timestamp representing "
                              "the server time when this object was created."},
        "deletionTimestamp": {"type": "string", "format": "date-time",
                              "description": "DeletionTimestamp is RFC 3339 date and time at "
                              "which this resource will be deleted."},
        "finalizers": {"type": "array", "items": {"type": "string"},
                       "description": "Must be empty before the object is deleted from the "
                       "registry."},
        "ownerReferences": {"type": "array", "items": {"type": "object",
                                                       "x-kubernetes-preserve-unknown-fields":
                                                       True},
                            "description": "List of objects depended by this object."},
    },
}


def _schema_name(rt: ResourceType) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{rt.version}.{rt.kind}"


def _kind_schema(rt: ResourceType) -> JSON:
    if rt.schema:
        schema = copy.deepcopy(rt.schema)
    else:
        schema = {"type": "object", "description": f"{rt.kind} (served by the mailfleet "
                  "sandbox; its full schema is not published here)",
                  "x-kubernetes-preserve-unknown-fields": True}
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string", "description": "APIVersion defines the "
                     "versioned schema of this representation of an object."})
    props.setdefault("kind", {"type": "string", "description": "Kind is a string value "
                     "representing the REST resource this object represents."})
    props["metadata"] = {"allOf": [{"$ref": f"#/components/schemas/{OBJECT_META_REF}"}],
                         "description": "Standard object's metadata."}
    schema["x-kubernetes-group-version-kind"] = [
        {"group": rt.group, "kind": rt.kind, "version": rt.version}]
    return schema


_COMMON_PARAMS = [
    {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "uniqueItems": True},
    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "uniqueItems": True},
    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"},
     "uniqueItems": True},
]


def _ref(rt: ResourceType) -> JSON:
    return {"$ref": f"#/components/schemas/{_schema_name(rt)}"}


def _op(rt: ResourceType, action: str, body: bool = False, patch: bool = False) -> JSON:
    op: JSON = {
        "operationId": f"{action}{rt.kind}",
        "responses": {"200": {"description": "OK", "content": {
            "application/json": {"schema": _ref(rt)}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "kind": rt.kind,
                                            "version": rt.version},
    }
    if body or patch:
        op["parameters"] = list(_COMMON_PARAMS)
    if body:
        op["requestBody"] = {"content": {"*/*": {"schema": _ref(rt)}}, "required": True}
    if patch:
        op["parameters"].append({"name": "force", "in": "query",
                                 "schema": {"type": "boolean"}, "uniqueItems": True})
        content = {t: {"schema": {"type": "object"}} for t in (
            "application/json-patch+json", "application/merge-patch+json",
            "application/apply-patch+yaml")}
        op["requestBody"] = {"content": content, "required": True}
    return op


def group_version_document(group_version: str, types: list[ResourceType]) -> JSON:
    prefix = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
    paths: JSON = {}
    components: JSON = {OBJECT_META_REF: copy.deepcopy(_OBJECT_META)}
    for rt in sorted(types, key=lambda r: r.plural):
        components[_schema_name(rt)] = _kind_schema(rt)
        base = f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced \
            else f"{prefix}/{rt.plural}"
        paths[base] = {"get": _op(rt, "list"), "post": _op(rt, "post", body=True)}
        paths[f"{base}/{{name}}"] = {"get": _op(rt, "get"), "put": _op(rt, "put", body=True),
                                     "patch": _op(rt, "patch", patch=True),
                                     "delete": _op(rt, "delete")}
        if rt.status:
            paths[f"{base}/{{name}}/status"] = {"get": _op(rt, "get"),
                                                "put": _op(rt, "put", body=True),
                                                "patch": _op(rt, "patch", patch=True)}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.36.0"},
            "paths": paths, "components": {"schemas": components}}


def document_hash(doc: JSON) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
