"""The API server's semantics without HTTP: resolve resource types, then create, update,
patch, delete, get and list objects with the metadata, subresource, validation and
finalizer rules of kube-apiserver. The HTTP layer and the in-process helpers both call it.
"""

from __future__ import annotations

import base64
import builtins
import copy
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from mailfleet_sandbox.kube import (
    cel_rules,
    decoding,
    errors,
    kinds,
    managing,
    patching,
    schemas,
    selectors,
)
from mailfleet_sandbox.kube.resources import ResourceType, builtin_types, crd_types, field_value
from mailfleet_sandbox.kube.store import Expired, Store

JSON = dict[str, Any]
CRD_KEY = "apiextensions.k8s.io/customresourcedefinitions"
NS_KEY = "/namespaces"
POD_KEY = "/pods"
DEFAULT_POD_GRACE = 30
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"  # Strict | Warn | Ignore
    field_manager: str = ""
    force: bool = False


@dataclass
class Result:
    obj: JSON
    code: int = 200
    warnings: builtins.list[str] = field(default_factory=list)


class Registry:
    """Every resource type served, plus the rules for writing their objects."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self._ip_next = 10
        for rt in builtin_types():
            self.types[(rt.group, rt.version, rt.plural)] = rt
        for crd in store.list(CRD_KEY):
            self._register_crd(crd)
        for ns in INITIAL_NAMESPACES:
            if store.get(NS_KEY, "", ns) is None:
                self.create(self.resolve("", "v1", "namespaces"), "",
                            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            if store.get("/serviceaccounts", ns, "default") is None:
                self._create_default_service_account(ns)

    # ---------------------------------------------------------------- resource types
    def resolve(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.types.get((group, version, plural))
        if rt is None or not rt.served:
            raise errors.page_not_found(f"{group}/{version}/{plural}")
        return rt

    def find_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self.types.values():
            if rt.group == group and rt.version == version and rt.kind == kind and rt.served:
                return rt
        return None

    def groups(self) -> dict[str, builtins.list[str]]:
        """group -> served versions, preferred (storage) version first."""
        out: dict[str, builtins.list[str]] = {}
        for rt in self.types.values():
            if not rt.served:
                continue
            versions = out.setdefault(rt.group, [])
            if rt.version not in versions:
                if rt.storage_version:
                    versions.insert(0, rt.version)
                else:
                    versions.append(rt.version)
        return out

    def types_in(self, group: str, version: str) -> builtins.list[ResourceType]:
        return [rt for (g, v, _), rt in self.types.items() if g == group and v == version
                and rt.served]

    def _register_crd(self, crd: JSON) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        for key in [k for k, rt in self.types.items()
                    if rt.crd and rt.group == group and rt.plural == plural]:
            del self.types[key]
        for rt in crd_types(crd):
            self.types[(rt.group, rt.version, rt.plural)] = rt

    def _unregister_crd(self, crd: JSON) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        for key in [k for k, rt in self.types.items()
                    if rt.crd and rt.group == group and rt.plural == plural]:
            del self.types[key]

    def _create_default_service_account(self, ns: str) -> None:
        self.create(self.resolve("", "v1", "serviceaccounts"), ns,
                    {"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": "default", "namespace": ns}})

    def _allocate_ip(self) -> str:
        ip = f"10.96.{self._ip_next // 256}.{self._ip_next % 256}"
        self._ip_next += 1
        return ip

    # ----------------------------------------------------------------------- reading
    def present(self, rt: ResourceType, obj: JSON) -> JSON:
        """The object as served at this version (CRD versions share storage)."""
        if obj.get("apiVersion") == rt.api_version and obj.get("kind") == rt.kind:
            return obj
        return dict(obj, apiVersion=rt.api_version, kind=rt.kind)

    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        obj = self.store.get(rt.storage_key, namespace if rt.namespaced else "", name)
        if obj is None:
            raise errors.not_found(rt.plural, rt.group, name)
        return self.present(rt, obj)

    def matcher(self, rt: ResourceType, label_selector: str, field_selector: str) -> Any:
        try:
            labels = selectors.parse_label_selector(label_selector or "")
        except selectors.SelectorError as exc:
            raise errors.bad_request(str(exc)) from None
        try:
            fields = selectors.parse_field_selector(field_selector or "")
        except selectors.SelectorError as exc:
            raise errors.bad_request(str(exc)) from None
        for label in fields.fields:
            if label not in rt.field_labels:
                raise errors.bad_request(f'"{label}" is not a known field selector: only '
                                         f'"{", ".join(sorted(rt.field_labels))}"'
                                         if rt.crd else f"field label not supported: {label}")

        def matches(obj: JSON) -> bool:
            if not labels.matches((obj.get("metadata") or {}).get("labels")):
                return False
            if fields.requirements:
                values = {f: field_value(obj, f) for f in fields.fields}
                return fields.matches(values)
            return True

        return matches

    def list(self, rt: ResourceType, namespace: str | None, *, label_selector: str = "",
             field_selector: str = "", limit: int = 0, cont: str = "") -> JSON:
        matches = self.matcher(rt, label_selector, field_selector)
        ns = namespace if rt.namespaced else None
        if cont:
            # like etcd: the token holds the list's version and the next key, so a page is
            # served again from the same snapshot however often the token is used
            list_rv, start = _decode_continue(cont)
            try:
                stored = self.store.list_at(rt.storage_key, ns, list_rv)
            except Expired:
                raise errors.expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.") \
                    from None
            stored = [o for o in stored if _list_key(o, ns) >= start]
        else:
            list_rv = self.store.rv
            stored = self.store.list(rt.storage_key, ns)
        if ns is None and rt.namespaced:  # etcd's order: "namespace/name"
            stored.sort(key=lambda o: _list_key(o, ns))
        items = [o for o in stored if matches(o)]
        meta: JSON = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            rest = items[limit:]
            items = items[:limit]
            meta["continue"] = _encode_continue(list_rv, _list_key(items[-1], ns) + "\x00")
            if not label_selector and not field_selector:
                meta["remainingItemCount"] = len(rest)
        return {"apiVersion": rt.api_version, "kind": rt.list_kind, "metadata": meta,
                "items": [self.present(rt, o) for o in items]}

    # ------------------------------------------------------------------- admission
    def _check_body(self, rt: ResourceType, body: Any, namespace: str) -> JSON:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        if not rt.crd:
            # the built-in codec decodes into the URL's type: what is missing comes from it
            # (the kubernetes client's typed models may send neither)
            for key, value in (("apiVersion", rt.api_version), ("kind", rt.kind)):
                if not body.get(key):
                    body[key] = value
        if not body.get("kind"):
            raise errors.bad_request(f"Object 'Kind' is missing in '{_short(body)}'")
        if not body.get("apiVersion"):
            raise errors.bad_request(f"Object 'apiVersion' is missing in '{_short(body)}'")
        if body.get("kind") != rt.kind or body.get("apiVersion") != rt.api_version:
            if rt.crd and body.get("kind") == rt.kind and self.find_kind(
                    str(body.get("apiVersion")), rt.kind) is not None:
                pass  # another served version of the same CRD: no conversion needed
            else:
                raise errors.bad_request(
                    f"the API version in the data ({body.get('apiVersion')}) and kind "
                    f"({body.get('kind')}) do not match the expected {rt.api_version} "
                    f"{rt.kind}")
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            have = meta.get("namespace")
            if have and have != namespace:
                raise errors.bad_request("the namespace of the provided object does not match "
                                         "the namespace sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return body

    def _merge_key_fn(self, rt: ResourceType) -> patching.MergeKeyFn:
        if not rt.crd:
            return patching.builtin_merge_key
        schema = rt.schema or {}

        def merge_key(path: tuple[str, ...]) -> str | None:
            node: Any = schema
            for name in path:
                while isinstance(node, dict) and node.get("type") == "array":
                    node = node.get("items") or {}
                node = ((node or {}).get("properties") or {}).get(name) if isinstance(
                    node, dict) else None
                if node is None:
                    return None
            if isinstance(node, dict) and node.get("x-kubernetes-list-type") == "map":
                keys = node.get("x-kubernetes-list-map-keys") or []
                return str(keys[0]) if keys else None
            if isinstance(node, dict) and node.get("x-kubernetes-list-type") == "set":
                return ""
            return None

        return merge_key

    def _admit(self, rt: ResourceType, obj: JSON, old: JSON | None,
               opts: WriteOptions) -> tuple[JSON, builtins.list[str]]:
        """Prune, default and validate; returns the object to store and warnings."""
        warnings: builtins.list[str] = []
        unknown: builtins.list[str]
        name = obj["metadata"].get("name", "")
        pruned, unknown = obj, []
        if rt.crd and rt.schema is not None:
            pruned, unknown = schemas.prune(obj, rt.schema)
        elif not rt.crd:
            try:
                decoded = decoding.decode(obj, rt.group, rt.version, rt.kind)
            except decoding.DecodeError as exc:
                raise errors.bad_request(str(exc)) from None
            pruned, unknown = decoded.obj, decoded.unknown
        if unknown and opts.field_validation == "Strict":
            listed = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                f"strict decoding error: {listed}")
        if unknown and opts.field_validation == "Warn":
            warnings += [f'unknown field "{u}"' for u in unknown]
        if rt.crd and rt.schema is not None:
            obj = schemas.apply_defaults(pruned, rt.schema)
            causes = schemas.validate(obj, rt.schema) or cel_rules.validate(
                obj, rt.schema, old)
        else:
            obj = pruned
            kinds.default_object(rt, obj, old, self._allocate_ip)
            causes = kinds.validate_object(rt, obj, old)
        causes = kinds.validate_name(rt, name) + kinds.validate_metadata(obj["metadata"]) \
            + causes if rt.crd else kinds.validate_name(rt, name) + causes
        if rt.storage_key == CRD_KEY:
            causes += kinds.validate_crd(obj)
            for i, ver in enumerate((obj.get("spec") or {}).get("versions") or []):
                schema = ((ver or {}).get("schema") or {}).get("openAPIV3Schema")
                if isinstance(schema, dict):
                    for problem in schemas.structural_problems(schema):
                        causes.append(errors.Cause(
                            "FieldValueRequired",
                            problem.split(": ", 1)[-1],
                            f"spec.versions[{i}].schema.openAPIV3Schema.{problem.split(':')[0]}"))
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)
        return obj, warnings

    def _crd_status(self, crd: JSON, old: JSON | None) -> JSON:
        stamp = now_rfc3339()
        old_conds = {c.get("type"): c for c in ((old or {}).get("status") or {}).get(
            "conditions") or []}

        def cond(typ: str, reason: str, message: str) -> JSON:
            prev = old_conds.get(typ)
            when = prev.get("lastTransitionTime", stamp) if prev and prev.get(
                "status") == "True" else stamp
            return {"type": typ, "status": "True", "reason": reason, "message": message,
                    "lastTransitionTime": when}

        spec = crd.get("spec") or {}
        stored = list(((old or {}).get("status") or {}).get("storedVersions") or [])
        for ver in spec.get("versions") or []:
            if ver.get("storage") and ver.get("name") not in stored:
                stored.append(ver["name"])
        names = copy.deepcopy(spec.get("names") or {})
        names.setdefault("singular", str(names.get("kind", "")).lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        return {"acceptedNames": names, "storedVersions": stored, "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ]}

    # ----------------------------------------------------------------------- create
    def create(self, rt: ResourceType, namespace: str, body: Any,
               opts: WriteOptions | None = None) -> Result:
        opts = opts or WriteOptions()
        if "create" not in rt.verbs:
            raise errors.method_not_allowed()
        body = self._check_body(rt, copy.deepcopy(body), namespace)
        meta = body["metadata"]
        if rt.namespaced:
            self._require_namespace(rt, namespace, meta.get("name", ""))
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise errors.invalid(rt.kind, rt.group, "", [errors.field_required(
                    "metadata.name", "name or generateName is required")])
            for _ in range(8):
                candidate = prefix + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))
                if self.store.get(rt.storage_key, meta.get("namespace", ""), candidate) is None:
                    break
            meta["name"] = candidate
        name = meta["name"]
        if rt.status and rt.storage_key != NS_KEY:
            body.pop("status", None)
        if _parsed_rv(meta.pop("resourceVersion", None)):
            # the etcd3 store's ErrResourceVersionSetOnCreate: a plain error, so a 500
            # without reason (an unparsable or zero version passes, as there)
            raise errors.ApiError(500, "", "resourceVersion should not be set on objects to "
                                  "be created")
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(k, None)
        obj, warnings = self._admit(rt, body, None, opts)
        meta = obj["metadata"]
        if self.store.get(rt.storage_key, meta.get("namespace", ""), name) is not None:
            raise errors.already_exists(rt.plural, rt.group, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rt.tracks_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.storage_key == CRD_KEY:
            obj["status"] = self._crd_status(obj, None)
            if CRD_CLEANUP_FINALIZER not in (meta.get("finalizers") or []):
                meta["finalizers"] = [*(meta.get("finalizers") or []), CRD_CLEANUP_FINALIZER]
        if opts.field_manager and "managedFields" not in meta:
            meta["managedFields"] = managing.write(managing.record_update(
                {}, (opts.field_manager, "Update", ""), rt.api_version, {},
                managing.tracked(obj, status_subresource=rt.status, subresource=""),
                self._merge_key_fn(rt)))
        if opts.dry_run:
            return Result(self.present(rt, obj), 201, warnings)
        stored = self.store.put(rt.storage_key, obj)
        if rt.storage_key == CRD_KEY:
            self._register_crd(stored)
        if rt.storage_key == NS_KEY and self.store.get("/serviceaccounts", name, "default") \
                is None:
            self._create_default_service_account(name)
        return Result(self.present(rt, stored), 201, warnings)

    def _require_namespace(self, rt: ResourceType, namespace: str, name: str) -> None:
        ns = self.store.get(NS_KEY, "", namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(rt.plural, rt.group, name,
                                   f"unable to create new content in namespace {namespace} "
                                   "because it is being terminated")

    # ----------------------------------------------------------------------- update
    def update(self, rt: ResourceType, namespace: str, name: str, body: Any,
               subresource: str = "", opts: WriteOptions | None = None) -> Result:
        opts = opts or WriteOptions()
        ns = namespace if rt.namespaced else ""
        body = self._check_body(rt, copy.deepcopy(body), ns)
        meta = body["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match "
                                     f"the name on the URL ({name})")
        meta["name"] = name
        old = self.store.get(rt.storage_key, ns, name)
        if old is None:
            raise errors.not_found(rt.plural, rt.group, name)
        want_uid = meta.get("uid")
        if want_uid and want_uid != old["metadata"].get("uid"):
            # the body's uid is a storage precondition (defaultUpdatedObjectInfo)
            raise errors.conflict(rt.plural, rt.group, name,
                                  f"Precondition failed: UID in precondition: {want_uid}, "
                                  f"UID in object meta: {old['metadata'].get('uid')}")
        want_rv = meta.get("resourceVersion")
        if not _parsed_rv(want_rv) and not rt.unconditional_update:
            raise errors.invalid(rt.kind, rt.group, name, [errors.Cause(
                "FieldValueInvalid", "Invalid value: 0x0: must be specified for an update",
                "metadata.resourceVersion")])
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise errors.stale_conflict(rt.plural, rt.group, name)
        return self._commit(rt, old, body, subresource, opts)

    def _commit(self, rt: ResourceType, old: JSON, body: JSON, subresource: str,
                opts: WriteOptions, operation: str = "Update") -> Result:
        name = old["metadata"]["name"]
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = body["status"]
            else:
                new.pop("status", None)
            new["apiVersion"], new["kind"] = body["apiVersion"], body["kind"]
            if "managedFields" in body["metadata"]:
                new["metadata"]["managedFields"] = body["metadata"]["managedFields"]
        else:
            new = body
            if rt.status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            meta, old_meta = new["metadata"], old["metadata"]
            for k in ("uid", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation"):
                if k in old_meta:
                    meta[k] = old_meta[k]
                else:
                    meta.pop(k, None)
            if "managedFields" not in meta and "managedFields" in old_meta:
                meta["managedFields"] = old_meta["managedFields"]
        new, warnings = self._admit(rt, new, old, opts)
        meta, old_meta = new["metadata"], old["metadata"]
        if operation == "Update" and opts.field_manager:
            def view(obj: JSON) -> JSON:
                return managing.tracked(obj, status_subresource=rt.status,
                                        subresource=subresource)

            meta["managedFields"] = managing.write(managing.record_update(
                managing.read(meta.get("managedFields")),
                (opts.field_manager, "Update", subresource), rt.api_version, view(old),
                view(new), self._merge_key_fn(rt)))
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(rt.kind, rt.group, name, [errors.field_forbidden(
                    "metadata.finalizers", "no new finalizers can be added if the object is "
                    "being deleted, found new finalizers " + json.dumps(sorted(added)))])
        if rt.storage_key == CRD_KEY:
            new["status"] = self._crd_status(new, old)
        if rt.tracks_generation and _spec_view(new, rt) != _spec_view(old, rt):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if _same(new, old):
            return Result(self.present(rt, old), 200, warnings)
        if opts.dry_run:
            return Result(self.present(rt, new), 200, warnings)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") \
                and not meta.get("deletionGracePeriodSeconds") and rt.storage_key != NS_KEY:
            # the last finalizer is gone and no grace period runs (ShouldDeleteDuringUpdate)
            final = self.store.remove(rt.storage_key, new)
            if rt.storage_key == CRD_KEY:
                self._unregister_crd(final)
            return Result(self.present(rt, final), 200, warnings)
        stored = self.store.put(rt.storage_key, new)
        if rt.storage_key == CRD_KEY:
            self._register_crd(stored)
        return Result(self.present(rt, stored), 200, warnings)

    # ------------------------------------------------------------------------ patch
    def patch(self, rt: ResourceType, namespace: str, name: str, content_type: str,
              raw: bytes, subresource: str = "", opts: WriteOptions | None = None) -> Result:
        opts = opts or WriteOptions()
        ns = namespace if rt.namespaced else ""
        ctype = content_type.split(";")[0].strip().lower()
        if ctype not in (MERGE_PATCH, JSON_PATCH, STRATEGIC_PATCH, APPLY_PATCH) or (
                ctype == STRATEGIC_PATCH and not rt.strategic):
            accepted = [JSON_PATCH, MERGE_PATCH, APPLY_PATCH]
            if rt.strategic:
                accepted.insert(2, STRATEGIC_PATCH)
            raise errors.ApiError(
                415, "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(accepted)}")
        if ctype == APPLY_PATCH:
            return self._apply(rt, ns, name, raw, subresource, opts)
        try:
            doc = json.loads(raw or b"null")
        except ValueError as exc:
            raise errors.bad_request(f"error decoding patch: {exc}") from None
        old = self.store.get(rt.storage_key, ns, name)
        if old is None:
            raise errors.not_found(rt.plural, rt.group, name)
        current = self.present(rt, old)
        try:
            if ctype == JSON_PATCH:
                patched = patching.json_patch(current, doc)
            elif ctype == MERGE_PATCH:
                if not isinstance(doc, dict):
                    raise errors.bad_request("error decoding patch: json: cannot unmarshal "
                                             "into Go value of type map[string]interface {}")
                patched = patching.merge_patch(current, doc)
            else:
                if not isinstance(doc, dict):
                    raise errors.bad_request("error decoding patch: json: cannot unmarshal "
                                             "into Go value of type map[string]interface {}")
                patched = patching.strategic_merge_patch(current, doc,
                                                         self._merge_key_fn(rt))
        except patching.PatchBodyError as exc:
            raise errors.bad_request(str(exc)) from None
        except patching.PatchApplyError as exc:
            raise errors.ApiError(422, "Invalid", str(exc), causes=[
                errors.Cause("FieldValueInvalid", str(exc))]) from None
        if not isinstance(patched, dict):
            raise errors.bad_request("the patched document is not an object")
        meta = patched.get("metadata")
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if meta.get("name") != name:
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not "
                                     f"match the name on the URL ({name})")
        body = self._check_body(rt, patched, ns)
        want_rv = body["metadata"].get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise errors.stale_conflict(rt.plural, rt.group, name)
        return self._commit(rt, old, body, subresource, opts)

    def _apply(self, rt: ResourceType, ns: str, name: str, raw: bytes, subresource: str,
               opts: WriteOptions) -> Result:
        if not opts.field_manager:
            raise errors.bad_request("PATCH, application/apply-patch+yaml requests require a "
                                     "non-empty fieldManager")
        try:
            config = yaml.safe_load(raw.decode() if raw else "")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise errors.bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise errors.bad_request("error decoding YAML: the apply configuration must be an "
                                     "object")
        cmeta = config.get("metadata") or {}
        if cmeta.get("name") not in (None, name):
            raise errors.bad_request(f"the name of the object ({cmeta.get('name')}) does not "
                                     f"match the name on the URL ({name})")
        merge_key = self._merge_key_fn(rt)
        owned_config = {k: v for k, v in config.items() if k not in ("apiVersion", "kind")}
        owned_meta = {k: v for k, v in cmeta.items()
                      if k in ("labels", "annotations", "finalizers", "ownerReferences")}
        owned_config["metadata"] = owned_meta
        if not owned_meta:
            del owned_config["metadata"]
        new_paths = patching.applied_paths(owned_config, merge_key)
        old = self.store.get(rt.storage_key, ns, name)
        if old is None:
            if subresource:
                raise errors.not_found(rt.plural, rt.group, name)
            body = copy.deepcopy(config)
            body.setdefault("metadata", {})["name"] = name
            body["metadata"]["managedFields"] = [
                _managed_entry(opts.field_manager, "Apply", rt, patching.fields_v1(new_paths))]
            create_opts = WriteOptions(opts.dry_run, opts.field_validation, "", opts.force)
            return self.create(rt, ns, body, create_opts)
        current = self.present(rt, old)
        me = (opts.field_manager, "Apply", subresource)
        managers = managing.read(current["metadata"].get("managedFields"))
        prev = managers[me].fields if me in managers else set()
        others: set[patching.Path] = set()
        for key, owned in managers.items():
            if key != me:
                others |= owned.fields
        merged = patching.apply_merge(current, owned_config, merge_key)
        # fields this manager applied before and no longer applies go, unless another
        # manager owns them too
        merged = patching.remove_paths(merged, prev - new_paths - others, merge_key)
        live_view = managing.tracked(current, status_subresource=rt.status,
                                     subresource=subresource)
        merged_view = managing.tracked(merged, status_subresource=rt.status,
                                       subresource=subresource)
        conflicts = managing.apply_conflicts(managers, me, live_view, merged_view, merge_key)
        if conflicts and not opts.force:
            raise managing.conflict_error(conflicts, managers)
        merged["metadata"]["managedFields"] = managing.write(managing.record_apply(
            managers, me, rt.api_version, live_view, merged_view, new_paths, merge_key))
        merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        body = self._check_body(rt, merged, ns)
        return self._commit(rt, old, body, subresource, opts, operation="Apply")

    # ----------------------------------------------------------------------- delete
    def delete(self, rt: ResourceType, namespace: str, name: str,
               options: JSON | None = None, dry_run: bool = False) -> Result:
        options = options or {}
        ns = namespace if rt.namespaced else ""
        old = self.store.get(rt.storage_key, ns, name)
        if old is None:
            raise errors.not_found(rt.plural, rt.group, name)
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
            raise errors.conflict(rt.plural, rt.group, name,
                                  f"Precondition failed: UID in precondition: {pre['uid']}, "
                                  f"UID in object meta: {old['metadata'].get('uid')}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"].get(
                "resourceVersion"):
            raise errors.conflict(rt.plural, rt.group, name,
                                  "Precondition failed: ResourceVersion in precondition: "
                                  f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                  f"{old['metadata'].get('resourceVersion')}")
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        if policy not in (None, "Foreground", "Background", "Orphan"):
            raise errors.invalid("DeleteOptions", "", "", [errors.field_not_supported(
                "propagationPolicy", policy, ["Foreground", "Background", "Orphan", "nil"])])
        grace = _grace_option(options.get("gracePeriodSeconds"))
        meta = old["metadata"]
        graceful = rt.storage_key == POD_KEY
        new = copy.deepcopy(old)
        nmeta = new["metadata"]
        period: int | None = None  # set when this call starts or shortens a grace period
        if meta.get("deletionTimestamp"):
            current = meta.get("deletionGracePeriodSeconds")
            if graceful and current:
                if grace is None or grace >= int(current):
                    # graceful deletion already pending: nothing changes, not even finalizers
                    return Result(self.present(rt, old), 200)
                period = grace
                nmeta["deletionTimestamp"] = _shift_rfc3339(
                    meta["deletionTimestamp"], grace - int(current))
                nmeta["deletionGracePeriodSeconds"] = grace
        elif graceful:
            period = pod_grace_period(old, grace)
            nmeta["deletionTimestamp"] = _shift_rfc3339(now_rfc3339(), period)
            nmeta["deletionGracePeriodSeconds"] = period
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if policy in ("Background", "Foreground"):
            finalizers = [f for f in finalizers if f != "orphan"]
        pending = bool(finalizers) or rt.storage_key == NS_KEY or bool(period)
        if pending:
            if period is None:  # markAsDeleting: finalizers (or a namespace) hold the object
                if not nmeta.get("deletionTimestamp"):
                    nmeta["deletionTimestamp"] = now_rfc3339()
                nmeta["deletionGracePeriodSeconds"] = 0
            if not meta.get("deletionTimestamp") and "generation" in nmeta:
                nmeta["generation"] = int(nmeta["generation"]) + 1
            if finalizers:
                nmeta["finalizers"] = finalizers
            if rt.storage_key == NS_KEY:
                new.setdefault("status", {})["phase"] = "Terminating"
            if dry_run or _same(new, old):
                return Result(self.present(rt, new if dry_run else old), 200)
            stored = self.store.put(rt.storage_key, new)
            return Result(self.present(rt, stored), 200)
        if dry_run:
            return Result(self.present(rt, old), 200)
        if graceful and not _same(new, old):
            # a zero grace period is still written first (watchers see MODIFIED, then DELETED)
            new = self.store.put(rt.storage_key, new)
        final = self.store.remove(rt.storage_key, new if graceful else old)
        if rt.storage_key == CRD_KEY:
            self._unregister_crd(final)
        if rt.storage_key == POD_KEY:
            return Result(self.present(rt, final), 200)
        return Result({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                       "details": {"name": name, "group": rt.group, "kind": rt.plural,
                                   "uid": meta.get("uid")}}, 200)

    # ---------------------------------------------------------------------- binding
    def bind_pod(self, namespace: str, name: str, body: Any,
                 opts: WriteOptions | None = None) -> Result:
        """POST pods/{name}/binding: what kube-scheduler calls. Sets `spec.nodeName` once
        (409 if the pod is bound or being deleted), merges the Binding's annotations and
        turns `PodScheduled` True, as the API server's BindingREST does."""
        opts = opts or WriteOptions()
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        if body.get("kind") not in (None, "", "Binding") or body.get("apiVersion") not in (
                None, "", "v1"):
            raise errors.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) and kind "
                f"({body.get('kind')}) do not match the expected v1 Binding")
        bmeta = body.get("metadata") or {}
        if not isinstance(bmeta, dict):
            raise errors.bad_request("metadata must be an object")
        if bmeta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request("the namespace of the provided object does not match "
                                     "the namespace sent on the request")
        if bmeta.get("name") != name:
            raise errors.bad_request("name in URL does not match name in Binding object")
        target = body.get("target") or {}
        causes: builtins.list[errors.Cause] = []
        if target.get("kind") not in (None, "", "Node"):
            causes.append(errors.field_not_supported("target.kind", target.get("kind"),
                                                     ["Node", "<empty>"]))
        if not target.get("name"):
            causes.append(errors.field_required("target.name"))
        if causes:
            raise errors.invalid("Binding", "", name, causes)
        old = self.store.get(POD_KEY, namespace, name)
        if old is None:
            raise errors.not_found("pods", "", name)
        meta = old["metadata"]
        if bmeta.get("uid") and bmeta["uid"] != meta.get("uid"):
            raise errors.conflict("pods", "", name,
                                  f"Precondition failed: UID in precondition: {bmeta['uid']}, "
                                  f"UID in object meta: {meta.get('uid')}")
        if bmeta.get("resourceVersion") and bmeta["resourceVersion"] != meta.get(
                "resourceVersion"):
            raise errors.stale_conflict("pods", "", name)
        spec = old.get("spec") or {}
        why = ""
        if meta.get("deletionTimestamp"):
            why = f"pod {name} is being deleted, cannot be assigned to a host"
        elif spec.get("nodeName"):
            why = f'pod {name} is already assigned to node "{spec["nodeName"]}"'
        elif spec.get("schedulingGates"):
            why = f"pod {name} has non-empty .spec.schedulingGates"
        if why:
            raise errors.conflict("pods/binding", "", name, why)
        new = copy.deepcopy(old)
        new["spec"]["nodeName"] = target["name"]
        if bmeta.get("annotations"):
            new["metadata"]["annotations"] = dict(new["metadata"].get("annotations") or {},
                                                  **bmeta["annotations"])
        status = new.setdefault("status", {})
        conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        prev = next((c for c in status.get("conditions") or []
                     if c.get("type") == "PodScheduled"), None)
        stamp = now_rfc3339()
        scheduled = {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                     "lastTransitionTime": prev.get("lastTransitionTime", stamp)
                     if prev and prev.get("status") == "True" else stamp}
        status["conditions"] = [scheduled, *conds]
        if not opts.dry_run:
            self.store.put(POD_KEY, new)
        return Result({"kind": "Status", "apiVersion": "v1", "metadata": {},
                       "status": "Success", "code": 201}, 201)

    def delete_collection(self, rt: ResourceType, namespace: str | None, *,
                          label_selector: str = "", field_selector: str = "",
                          options: JSON | None = None, dry_run: bool = False) -> JSON:
        listed = self.list(rt, namespace, label_selector=label_selector,
                           field_selector=field_selector)
        for obj in listed["items"]:
            meta = obj["metadata"]
            try:
                self.delete(rt, meta.get("namespace", ""), meta["name"], options, dry_run)
            except errors.ApiError as exc:
                if exc.code != 404:
                    raise
        return listed


def pod_grace_period(pod: JSON, requested: int | None) -> int:
    """The pod strategy's CheckGracefulDelete: the request's grace period, else the pod's
    terminationGracePeriodSeconds; 0 (delete now) when no kubelet runs it (unbound) or it
    has already terminated."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return 0
    if requested is not None:
        return requested
    period = spec.get("terminationGracePeriodSeconds")
    return int(period) if isinstance(period, int) else DEFAULT_POD_GRACE


def _list_key(obj: JSON, namespace: str | None) -> str:
    """An object's key below the list's prefix, as etcd orders and continues it."""
    meta = obj["metadata"]
    name = str(meta.get("name", ""))
    return name if namespace is not None or not meta.get("namespace") else \
        f"{meta['namespace']}/{name}"


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("unknown version")
        rv, start = int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise errors.bad_request("continue key is not valid: invalid continue token") \
            from None
    if rv <= 0 or not start:
        raise errors.bad_request("continue key is not valid: incorrect encoded start "
                                 "resourceVersion (version meta.k8s.io/v1)")
    return rv, start


def _parsed_rv(value: Any) -> int:
    """A resourceVersion as the storage versioner reads it: 0 when unset or unparsable."""
    try:
        return int(value) if value not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


def _grace_option(value: Any) -> int | None:
    """DeleteOptions.gracePeriodSeconds (body or query); negative values count as 1."""
    if value is None or value == "":
        return None
    try:
        grace = int(value)
    except (TypeError, ValueError):
        raise errors.bad_request(f"invalid gracePeriodSeconds: {value!r}") from None
    return 1 if grace < 0 else grace


def _shift_rfc3339(stamp: str, seconds: int) -> str:
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (when + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _managed_entry(manager: str, operation: str, rt: ResourceType, fields: JSON | None,
                   subresource: str = "") -> JSON:
    entry: JSON = {"manager": manager, "operation": operation, "apiVersion": rt.api_version,
                   "time": now_rfc3339()}
    if fields is not None:
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = fields
    if subresource:
        entry["subresource"] = subresource
    return entry


def _spec_view(obj: JSON, rt: ResourceType) -> JSON:
    """What generation tracks: everything but metadata (and status with a subresource)."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rt.status else set())
    return {k: v for k, v in obj.items() if k not in skip}


def _same(a: JSON, b: JSON) -> bool:
    """Equal apart from managedFields timestamps: a no-op write changes nothing."""
    def strip(o: JSON) -> JSON:
        meta = {k: v for k, v in (o.get("metadata") or {}).items() if k != "managedFields"}
        managed = [{k: v for k, v in e.items() if k != "time"}
                   for e in (o.get("metadata") or {}).get("managedFields") or []]
        return dict(o, metadata=meta, _managed=managed)

    return strip(a) == strip(b)


def _short(body: Any) -> str:
    text = json.dumps(body, separators=(",", ":"))
    return text if len(text) < 200 else text[:200] + "..."
