"""CEL validation rules (`x-kubernetes-validations`) of custom resources, evaluated with
cel-python (pure, no I/O), with the messages kube-apiserver gives.

Each rule runs with `self` bound to the value of the node that declares it, after the schema
validation passed (rules assume well-typed data). Besides standard CEL, kube-apiserver
offers library functions; those the mailfleet CRDs use are provided here with their
Kubernetes meaning: `findAll`, `find` (regex), `sum`, `isSorted` (lists), `lowerAscii`
(strings).

Not done, unlike kube-apiserver: transition rules (`oldSelf`, skipped), `messageExpression`
(the static `message` is used), `reason`/`fieldPath`, the cost budget, compiling the rules
when the CRD is created (a rule that does not compile is reported when an object is
validated), and the other Kubernetes libraries (url, ip, cidr, quantity, format, sets).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, CELFunction

from mailfleet_sandbox.kube import errors

JSON = dict[str, Any]


def _find_all(text: Any, pattern: Any) -> Any:
    found = [celtypes.StringType(m.group(0)) for m in re.finditer(str(pattern), str(text))]
    return celtypes.ListType(found)


def _find(text: Any, pattern: Any) -> Any:
    match = re.search(str(pattern), str(text))
    return celtypes.StringType(match.group(0) if match else "")


def _sum(items: Any) -> Any:
    values = list(items)
    if not values:
        return celtypes.IntType(0)
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def _is_sorted(items: Any) -> Any:
    values = list(items)
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(values)))


def _lower_ascii(text: Any) -> Any:
    return celtypes.StringType(
        "".join(c.lower() if c.isascii() else c for c in str(text))
    )


KUBERNETES_FUNCTIONS: dict[str, CELFunction] = {
    "findAll": _find_all,
    "find": _find,
    "sum": _sum,
    "isSorted": _is_sorted,
    "lowerAscii": _lower_ascii,
}

_ENV = celpy.Environment()


@functools.lru_cache(maxsize=512)
def _program(rule: str) -> celpy.Runner:
    return _ENV.program(_ENV.compile(rule), functions=KUBERNETES_FUNCTIONS)


_ABSENT = object()


def validate(obj: JSON, schema: JSON, old: JSON | None = None) -> list[errors.Cause]:
    """Every rule of the schema that `obj` breaks, as the API server's causes.

    On an update, a value equal to the old one is not checked again (kube-apiserver's
    validation ratcheting): a status write is not refused for a spec that an older CRD let in.
    """
    causes: list[errors.Cause] = []
    props = schema.get("properties") or {}
    for key, value in obj.items():
        if key not in ("apiVersion", "kind", "metadata") and key in props:
            before = _ABSENT if old is None else old.get(key, _ABSENT)
            for path, node, node_schema in _nodes(value, props[key], key, before):
                causes += _check(node, node_schema, path)
    return causes


def _nodes(value: Any, schema: JSON, path: str, old: Any) -> Iterator[tuple[str, Any, JSON]]:
    """Each changed value of the object with the schema that describes it, depth first."""
    if old is not _ABSENT and value == old:
        return
    yield path, value, schema
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        old_map = old if isinstance(old, dict) else {}
        for key, child in value.items():
            child_schema = props.get(key, extra if isinstance(extra, dict) else None)
            if child_schema is not None:
                yield from _nodes(child, child_schema, f"{path}.{key}",
                                  old_map.get(key, _ABSENT))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        # List items are compared by position only for maps and atomic lists alike: enough
        # for ratcheting, which only ever skips work.
        old_list = old if isinstance(old, list) else []
        for index, item in enumerate(value):
            before = old_list[index] if index < len(old_list) else _ABSENT
            yield from _nodes(item, schema["items"], f"{path}[{index}]", before)


def _check(value: Any, schema: JSON, path: str) -> list[errors.Cause]:
    causes = []
    for validation in schema.get("x-kubernetes-validations") or []:
        rule = str(validation["rule"])
        if "oldSelf" in rule:
            continue
        message = str(validation.get("message") or f"failed rule: {rule}")
        shown = _shown(value)
        try:
            result: Any = _program(rule).evaluate({"self": json_to_cel(value)})
        except (CELEvalError, CELParseError) as error:
            result = error
        if isinstance(result, CELEvalError | CELParseError):
            causes.append(errors.Cause(
                "FieldValueInvalid",
                f'Invalid value: "{_type_of(value)}": {_describe(result)} evaluating rule: '
                f"{message}", path))
        elif not (isinstance(result, bool | celtypes.BoolType) and result):
            causes.append(errors.Cause("FieldValueInvalid", f"Invalid value: {shown}: {message}",
                                       path))
    return causes


def _describe(error: BaseException) -> str:
    """The innermost reason of a cel-python error ("Unparsable timezone: ...")."""
    args = error.args
    if len(args) > 2 and isinstance(args[2], tuple) and args[2]:
        inner = args[2][0]
        return _describe(inner) if isinstance(inner, BaseException) else str(inner)
    return str(args[0]) if args else type(error).__name__


def _type_of(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _shown(value: Any) -> str:
    """kube-apiserver shows a scalar's value and the type of an object or list."""
    if isinstance(value, dict | list):
        return f'"{_type_of(value)}"'
    return errors.render_value(value)
