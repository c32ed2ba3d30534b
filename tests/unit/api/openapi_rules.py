"""Test helpers: the Kubernetes rules for CRD schemas, and validating objects against them.

`structural_violations` applies the rules of "Specifying a structural schema" (Kubernetes CRD
docs) plus the apiextensions/v1 restrictions the API server enforces when a CRD is created:
every node typed (except int-or-string / preserve-unknown-fields nodes), nothing but value
validations inside anyOf/allOf/oneOf/not, no $ref and friends, no additionalProperties next to
properties, only name/generateName restrictions on metadata, list-map keys required or
defaulted, defaults pruned-valid and valid.

`validate_object` checks an object the way the API server does on create with strict field
validation: the OpenAPI v3.0 value validations (jsonschema's Draft 4 has the same boolean
`exclusiveMinimum`), unknown fields reported (the server prunes and, with
`fieldValidation=Strict` as kubectl uses by default, refuses them) and list-map keys unique.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema

Schema = dict[str, Any]

_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
# Keys apiextensions/v1 refuses outright.
_FORBIDDEN_KEYS = (
    "$ref",
    "$schema",
    "definitions",
    "dependencies",
    "id",
    "patternProperties",
    "additionalItems",
    "const",
)
# Keys not allowed inside a logical junctor (value validations only there).
_NOT_IN_JUNCTOR = ("description", "type", "default", "additionalProperties", "nullable")
_INT_OR_STRING_ANYOF = [{"type": "integer"}, {"type": "string"}]


def _junctor_branches(node: Schema) -> Iterator[tuple[str, Schema]]:
    for junctor in _JUNCTORS:
        value = node.get(junctor)
        if value is None:
            continue
        for index, branch in enumerate(value if isinstance(value, list) else [value]):
            yield f"{junctor}[{index}]", branch


def _check_junctor_branch(branch: Schema, path: str, outer: Schema, errors: list[str]) -> None:
    """Rules 2 and 3: value validations only, fields already specified outside."""
    for key in _NOT_IN_JUNCTOR:
        if key in branch:
            errors.append(f"{path}: {key} is not allowed inside a logical junctor")
    for name in branch.get("properties", {}):
        if name not in outer.get("properties", {}):
            errors.append(f"{path}.properties.{name}: not specified outside the junctor")
    if "items" in branch and "items" not in outer:
        errors.append(f"{path}.items: not specified outside the junctor")
    for sub_path, sub in _junctor_branches(branch):
        _check_junctor_branch(sub, f"{path}.{sub_path}", outer, errors)
    for name, sub in branch.get("properties", {}).items():
        _check_junctor_branch(
            sub, f"{path}.properties.{name}", outer.get("properties", {}).get(name, {}), errors
        )


def _is_int_or_string_form(node: Schema) -> bool:
    any_of = node.get("anyOf")
    if any_of == _INT_OR_STRING_ANYOF:
        return True
    all_of = node.get("allOf") or []
    return bool(all_of) and all_of[0].get("anyOf") == _INT_OR_STRING_ANYOF


def _walk(node: Schema, path: str, errors: list[str], *, is_metadata: bool = False) -> None:
    for key in _FORBIDDEN_KEYS:
        if key in node:
            errors.append(f"{path}: {key} is not allowed in a CRD schema")
    if node.get("uniqueItems") is True:
        errors.append(f"{path}: uniqueItems: true is not allowed (use x-kubernetes-list-type)")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if not node.get("type") and not int_or_string and not preserve:
        errors.append(f"{path}: no type (every node must be typed)")
    if "nullable" in node and node["nullable"] not in (True, False):
        errors.append(f"{path}: nullable must be a boolean")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: additionalProperties and properties are mutually exclusive")
    if node.get("additionalProperties") is False:
        errors.append(f"{path}: additionalProperties: false is not allowed")
    if isinstance(node.get("additionalProperties"), bool) and node["additionalProperties"]:
        errors.append(f"{path}: additionalProperties: true (use preserve-unknown-fields)")
    if node.get("type") == "array" and "items" not in node:
        errors.append(f"{path}: array without items")
    if node.get("type") == "object" and "properties" not in node and not preserve:
        if "additionalProperties" not in node and not is_metadata:
            errors.append(f"{path}: object with neither properties nor additionalProperties")
    if int_or_string and "type" in node:
        errors.append(f"{path}: x-kubernetes-int-or-string nodes must not set type")
    for sub_path, branch in _junctor_branches(node):
        if (
            int_or_string
            and sub_path.startswith(("anyOf", "allOf"))
            and _is_int_or_string_form(node)
        ):
            continue
        _check_junctor_branch(branch, f"{path}.{sub_path}", node, errors)
    _check_list_type(node, path, errors)
    if is_metadata:
        for name in node.get("properties", {}):
            if name not in ("name", "generateName"):
                errors.append(f"{path}.properties.{name}: only name and generateName allowed")
    at_root = path.endswith("openAPIV3Schema")
    for name, child in node.get("properties", {}).items():
        child_is_meta = at_root and name == "metadata"
        _walk(child, f"{path}.properties.{name}", errors, is_metadata=child_is_meta)
        if child_is_meta and "default" in child:
            errors.append(f"{path}.properties.metadata: no default allowed on metadata")
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}.additionalProperties", errors)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}.items", errors)
    if "default" in node:
        for problem in default_violations(node, node["default"]):
            errors.append(f"{path}.default: {problem}")


def _check_list_type(node: Schema, path: str, errors: list[str]) -> None:
    list_type = node.get("x-kubernetes-list-type")
    if list_type is None:
        if "x-kubernetes-list-map-keys" in node:
            errors.append(f"{path}: list-map-keys without list-type map")
        return
    if node.get("type") != "array":
        errors.append(f"{path}: x-kubernetes-list-type on a non-array")
        return
    items = node.get("items", {})
    if list_type == "set" and items.get("type") in ("object", "array"):
        errors.append(f"{path}: list-type set needs scalar items")
    if list_type == "map":
        keys = node.get("x-kubernetes-list-map-keys") or []
        if not keys:
            errors.append(f"{path}: list-type map needs x-kubernetes-list-map-keys")
        if items.get("type") != "object":
            errors.append(f"{path}: list-type map needs object items")
        for key in keys:
            prop = items.get("properties", {}).get(key)
            if prop is None:
                errors.append(f"{path}: list-map key {key} is not a property of the items")
            elif key not in items.get("required", []) and "default" not in prop:
                errors.append(f"{path}: list-map key {key} must be required or defaulted")
            elif prop.get("type") not in ("string", "integer", "boolean", "number"):
                errors.append(f"{path}: list-map key {key} must be a scalar")
    if list_type not in ("atomic", "set", "map"):
        errors.append(f"{path}: unknown x-kubernetes-list-type {list_type!r}")


def default_violations(schema: Schema, value: Any) -> list[str]:
    """A default must be pruned-valid (nothing pruning would drop) and valid."""
    problems = [f"field {p} would be pruned" for p in unknown_fields(schema, value)]
    problems += value_errors(schema, value)
    return problems


def structural_violations(crd: dict[str, Any]) -> list[str]:
    """Every rule the CRD's schemas break (empty when the CRD is acceptable)."""
    errors: list[str] = []
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        path = f"versions[{version['name']}].openAPIV3Schema"
        if root.get("type") != "object":
            errors.append(f"{path}: the root must be of type object")
        _walk(root, path, errors)
    return errors


# --- validating objects ------------------------------------------------------------------------


def value_errors(schema: Schema, value: Any) -> list[str]:
    """OpenAPI v3.0 value validation (Draft 4 semantics) as "path: message" lines."""
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    out = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        location = ".".join(str(p) for p in error.absolute_path) or "(root)"
        out.append(f"{location}: {error.message}")
    out += _list_map_duplicates(schema, value, "")
    return out


def unknown_fields(schema: Schema, value: Any, path: str = "") -> list[str]:
    """Fields pruning would drop (what strict field validation reports as unknown)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") is True:
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else key
            if props is not None and key in props:
                found += unknown_fields(props[key], child, child_path)
            elif isinstance(extra, dict):
                found += unknown_fields(extra, child, child_path)
            elif props is not None:
                found.append(child_path)
            # An object with neither (the root's metadata) is checked by the server's own
            # ObjectMeta schema, not by the CRD's.
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(schema["items"], item, f"{path}.{index}")
    return found


def _list_map_duplicates(schema: Schema, value: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(value, list):
        items = schema.get("items", {})
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen: set[tuple[Any, ...]] = set()
            for item in value:
                key = tuple(item.get(k) for k in keys) if isinstance(item, dict) else (item,)
                if key in seen:
                    found.append(f"{path or '(root)'}: duplicate entries with key {key}")
                seen.add(key)
        if schema.get("x-kubernetes-list-type") == "set" and len(set(map(repr, value))) != len(
            value
        ):
            found.append(f"{path or '(root)'}: duplicate entries in a set")
        for index, item in enumerate(value):
            found += _list_map_duplicates(items, item, f"{path}.{index}")
    elif isinstance(value, dict):
        for key, child in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                found += _list_map_duplicates(sub, child, f"{path}.{key}" if path else key)
    return found


def validate_object(schema: Schema, obj: Any) -> list[str]:
    """Everything the API server would refuse in `obj` (strict field validation)."""
    return value_errors(schema, obj) + [f"{p}: unknown field" for p in unknown_fields(schema, obj)]


def apply_defaults(schema: Schema, value: Any) -> Any:
    """The API server's defaulting: absent properties get their default, then recurse."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = dict(value)
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
        for name, child in out.items():
            sub = props.get(name)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                out[name] = apply_defaults(sub, child)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value
