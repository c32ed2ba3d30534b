"""OpenAPI v3 structural-schema handling for custom resources: pruning, defaulting and
validation, in the order and with the messages of apiextensions-apiserver (pure, no I/O).

CEL rules (`x-kubernetes-validations`) are evaluated afterwards, by `cel_rules`.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import uuid
from datetime import date, datetime
from typing import Any

from mailfleet_sandbox.kube import errors

JSON = dict[str, Any]

# ObjectMeta fields a custom resource keeps; anything else under metadata is pruned.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
})


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune(obj: JSON, schema: JSON) -> tuple[JSON, list[str]]:
    """Drop fields the schema does not declare; return the object and the dropped paths
    (the unknown fields that fieldValidation=Strict rejects)."""
    unknown: list[str] = []
    out = copy.deepcopy(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for k in list(meta):
            if k not in OBJECT_META_FIELDS:
                unknown.append(f"metadata.{k}")
                del meta[k]
    props = schema.get("properties") or {}
    for key in list(out):
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if key in props:
            out[key] = _prune_value(out[key], props[key], key, unknown)
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            unknown.append(key)
            del out[key]
    return out, unknown


def _prune_value(value: Any, schema: JSON, path: str, unknown: list[str]) -> Any:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-embedded-resource"):
            keep = {"apiVersion", "kind", "metadata"}
        else:
            keep = set()
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for key in list(value):
            child_path = _join(path, key)
            if props is not None and key in props:
                value[key] = _prune_value(value[key], props[key], child_path, unknown)
            elif isinstance(addl, dict):
                value[key] = _prune_value(value[key], addl, child_path, unknown)
            elif addl is True or preserve or key in keep:
                continue
            elif props is None and addl is None and schema.get("type") != "object":
                continue
            else:
                unknown.append(child_path)
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            value[i] = _prune_value(item, schema["items"], f"{path}[{i}]", unknown)
    return value


def apply_defaults(obj: Any, schema: JSON) -> Any:
    """Fill in `default`s for absent properties (and non-nullable nulls), recursively,
    also inside values that were just defaulted."""
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for key, prop in props.items():
            if not isinstance(prop, dict):
                continue
            if key in obj and obj[key] is None and not prop.get("nullable"):
                if "default" in prop:
                    obj[key] = copy.deepcopy(prop["default"])
                else:
                    del obj[key]
            elif key not in obj and "default" in prop:
                obj[key] = copy.deepcopy(prop["default"])
            if key in obj:
                obj[key] = apply_defaults(obj[key], prop)
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key in list(obj):
                if key not in props:
                    obj[key] = apply_defaults(obj[key], addl)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        for i, item in enumerate(obj):
            if item is None and not items.get("nullable") and "default" in items:
                obj[i] = copy.deepcopy(items["default"])
            obj[i] = apply_defaults(obj[i], items)
    return obj


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _matches_type(value: Any, typ: str) -> bool:
    actual = _type_name(value)
    if typ == "number":
        return actual in ("integer", "number")
    return actual == typ


_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$|^0$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}"
    r"[A-Za-z0-9])?)*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _format_ok(value: Any, fmt: str) -> bool:
    if not isinstance(value, str):
        return True
    try:
        if fmt == "date-time":
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        elif fmt == "date":
            date.fromisoformat(value)
        elif fmt == "byte":
            base64.b64decode(value, validate=True)
        elif fmt == "uuid":
            uuid.UUID(value)
        elif fmt == "ipv4":
            ipaddress.IPv4Address(value)
        elif fmt == "ipv6":
            ipaddress.IPv6Address(value)
        elif fmt == "cidr":
            ipaddress.ip_network(value, strict=False)
        elif fmt == "hostname":
            return bool(_HOSTNAME.match(value))
        elif fmt == "email":
            return bool(_EMAIL.match(value))
        elif fmt == "duration":
            return bool(_DURATION.match(value))
        return True
    except ValueError:
        return False


def validate(obj: JSON, schema: JSON) -> list[errors.Cause]:
    """Validate a (pruned, defaulted) custom resource against its version's schema."""
    causes: list[errors.Cause] = []
    props = schema.get("properties") or {}
    for key in schema.get("required") or []:
        if key not in obj and key not in ("apiVersion", "kind", "metadata"):
            causes.append(errors.field_required(key))
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if key in props:
            _validate_value(value, props[key], key, causes)
    return causes


def _validate_value(value: Any, schema: JSON, path: str, causes: list[errors.Cause]) -> None:
    if value is None:
        if schema.get("nullable") or schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        typ = schema.get("type")
        if typ:
            causes.append(errors.Cause(
                "FieldValueTypeInvalid",
                f'Invalid value: "null": {path} in body must be of type {typ}: "null"', path))
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, str) and _type_name(value) != "integer":
            causes.append(errors.Cause(
                "FieldValueTypeInvalid",
                f'Invalid value: "{_type_name(value)}": {path} in body must be of type '
                f'integer,string: "{_type_name(value)}"', path))
            return
    else:
        typ = schema.get("type")
        if typ and not _matches_type(value, typ):
            actual = _type_name(value)
            causes.append(errors.Cause(
                "FieldValueTypeInvalid",
                f'Invalid value: "{actual}": {path} in body must be of type {typ}: "{actual}"',
                path))
            return
    before = len(causes)
    _validate_constraints(value, schema, path, causes)
    if len(causes) > before:
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                causes.append(errors.field_required(_join(path, key)))
        addl = schema.get("additionalProperties")
        for key, child in value.items():
            if key in props:
                _validate_value(child, props[key], _join(path, key), causes)
            elif isinstance(addl, dict):
                _validate_value(child, addl, _join(path, key), causes)
        _validate_min_max_props(value, schema, path, causes)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _validate_value(item, items, f"{path}[{i}]", causes)
        _validate_list_type(value, schema, path, causes)


def _validate_min_max_props(value: JSON, schema: JSON, path: str,
                            causes: list[errors.Cause]) -> None:
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        causes.append(errors.field_too_many(path, len(value), int(schema["maxProperties"])))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        causes.append(errors.field_invalid(
            path, len(value),
            f"{path} in body should have at least {schema['minProperties']} properties"))


def _validate_list_type(value: list[Any], schema: JSON, path: str,
                        causes: list[errors.Cause]) -> None:
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        seen: set[str] = set()
        for i, item in enumerate(value):
            ident = json.dumps(item, sort_keys=True)
            if ident in seen:
                causes.append(errors.field_duplicate(f"{path}[{i}]", item))
            seen.add(ident)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen_keys: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            ident = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
            if ident in seen_keys:
                causes.append(errors.field_duplicate(
                    f"{path}[{i}]", {k: item.get(k) for k in keys}))
            seen_keys.add(ident)


def _validate_constraints(value: Any, schema: JSON, path: str,
                          causes: list[errors.Cause]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        causes.append(errors.field_not_supported(path, value, list(schema["enum"])))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append(errors.field_too_long(path, int(schema["maxLength"])))
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should match '{schema['pattern']}'"))
        fmt = schema.get("format")
        if fmt and not _format_ok(value, fmt):
            causes.append(errors.field_invalid(
                path, value, f'{path} in body must be of type {fmt}: "{value}"'))
    if isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(value, schema, path, causes)
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(errors.field_too_many(path, len(value), int(schema["maxItems"])))
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(errors.field_invalid(
                path, len(value),
                f"{path} in body should have at least {schema['minItems']} items"))
    for sub in schema.get("allOf") or []:
        _validate_value(value, sub, path, causes)
    if schema.get("anyOf"):
        if not any(_passes(value, sub, path) for sub in schema["anyOf"]):
            causes.append(errors.field_invalid(path, value, f"{path} in body must validate at "
                                               "least one schema (anyOf)"))
    if schema.get("oneOf"):
        passing = sum(1 for sub in schema["oneOf"] if _passes(value, sub, path))
        if passing != 1:
            causes.append(errors.field_invalid(path, value, f"{path} in body must validate one "
                                               "and only one schema (oneOf)"))
    if isinstance(schema.get("not"), dict) and _passes(value, schema["not"], path):
        causes.append(errors.field_invalid(path, value, f"{path} in body should not validate "
                                           "the given schema"))


def _validate_number(value: float, schema: JSON, path: str, causes: list[errors.Cause]) -> None:
    fmt = schema.get("format")
    if fmt == "int32" and not -(2**31) <= value < 2**31:
        causes.append(errors.field_invalid(path, value, f"{path} in body must be of type int32"))
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum") and value <= low:
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should be greater than {_num(low)}"))
        elif value < low:
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should be greater than or equal to {_num(low)}"))
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum") and value >= high:
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should be less than {_num(high)}"))
        elif value > high:
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should be less than or equal to {_num(high)}"))
    step = schema.get("multipleOf")
    if step and (value / step) != int(value / step):
        causes.append(errors.field_invalid(
            path, value, f"{path} in body should be a multiple of {_num(step)}"))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _passes(value: Any, schema: JSON, path: str) -> bool:
    trial: list[errors.Cause] = []
    if "type" in schema or "x-kubernetes-int-or-string" in schema:
        _validate_value(value, schema, path, trial)
    else:
        _validate_constraints(value, schema, path, trial)
        if isinstance(value, dict):
            for key in schema.get("required") or []:
                if key not in value:
                    trial.append(errors.field_required(_join(path, key)))
            for key, sub in (schema.get("properties") or {}).items():
                if key in value:
                    _validate_value(value[key], sub, _join(path, key), trial)
    return not trial


def structural_problems(schema: JSON, path: str = "") -> list[str]:
    """A light structural check for CRD schemas: every level with properties is typed."""
    problems: list[str] = []
    if not isinstance(schema, dict):
        return [f"{path or 'schema'}: must be an object"]
    if ("properties" in schema or "items" in schema) and "type" not in schema \
            and not schema.get("x-kubernetes-int-or-string") and path:
        problems.append(f"{path}.type: Required value: must not be empty for specified "
                        "object fields")
    for k, sub in (schema.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.properties[{k}]" if path else
                                        f"properties[{k}]")
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{path}.items")
    return problems
