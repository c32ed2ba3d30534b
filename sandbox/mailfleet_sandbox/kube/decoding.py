"""Built-in objects decoded with their Go types, as kube-apiserver's codec does: a value of
the wrong JSON type is 400 BadRequest (`json: cannot unmarshal number into Go struct field
ConfigMap.data of type string`), bad base64 in a `[]byte` field likewise, and fields the type
does not have are dropped (reported per `fieldValidation`: Strict 400, Warn a warning).

Why the `kubernetes` client's models: each generated model class lists its fields
(`attribute_map`: Python name -> JSON name) and their types (`openapi_types`: `str`, `int`,
`bool`, `datetime`, `List[V1Container]`, `Dict[str, str]`, `object`), generated from the
API server's own OpenAPI document for every release. That is a well-kept, versioned copy
of the real Go types, already installed with the operator, instead of a hand-written
schema that drifts. What the models lose is restored here: `resource.Quantity` (a string
in the models) also accepts JSON numbers, and `object` (IntOrString, RawExtension, JSON)
accepts anything.

Pure apart from importing the models on first use (no I/O).
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import re
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

# Served group -> the models' class-name prefix before the version (core v1 Event is
# CoreV1Event, events.k8s.io/v1 Event is EventsV1Event; every other kind is V1<Kind>).
_EVENT_MODELS = {"": "CoreV1Event", "events.k8s.io": "EventsV1Event"}

# resource.Quantity fields (string or number on the wire), which the models type as str.
_QUANTITIES = frozenset({
    ("V1ResourceRequirements", "limits"), ("V1ResourceRequirements", "requests"),
    ("V1VolumeResourceRequirements", "limits"), ("V1VolumeResourceRequirements", "requests"),
    ("V1ContainerStatus", "allocated_resources"), ("V1EmptyDirVolumeSource", "size_limit"),
    ("V1NodeStatus", "allocatable"), ("V1NodeStatus", "capacity"),
    ("V1PersistentVolumeClaimStatus", "allocated_resources"),
    ("V1PersistentVolumeClaimStatus", "capacity"), ("V1PersistentVolumeSpec", "capacity"),
    ("V1PodSpec", "overhead"), ("V1Overhead", "pod_fixed"),
    ("V1ResourceFieldSelector", "divisor"), ("V1ResourceQuotaSpec", "hard"),
    ("V1ResourceQuotaStatus", "hard"), ("V1ResourceQuotaStatus", "used"),
    ("V1LimitRangeItem", "default"), ("V1LimitRangeItem", "default_request"),
    ("V1LimitRangeItem", "max"), ("V1LimitRangeItem", "min"),
    ("V1LimitRangeItem", "max_limit_request_ratio"),
})

_GO_TYPES = {"str": "string", "int": "int64", "bool": "bool", "float": "float64",
             "datetime": "v1.Time", "date": "string", "bytes": "[]uint8"}
_LIST = re.compile(r"^(?:List|list)\[(.+)\]$")
_DICT = re.compile(r"^(?:Dict\[str, *|dict\(str, *)(.+?)[\])]$")


class DecodeError(ValueError):
    """The body does not decode into the kind's type; the text is the codec's message."""


@dataclass
class Decoded:
    obj: JSON
    unknown: list[str] = field(default_factory=list)


@functools.cache
def _models() -> Any:
    return importlib.import_module("kubernetes.client.models")


def model_name(group: str, version: str, kind: str) -> str:
    if kind == "Event" and group in _EVENT_MODELS:
        return _EVENT_MODELS[group]
    return version[:1].upper() + version[1:] + kind


@functools.cache
def _fields(model: str) -> dict[str, tuple[str, str]] | None:
    """JSON name -> (Python attribute, type string) of a model class, None if unknown."""
    cls = getattr(_models(), model, None)
    if cls is None or not hasattr(cls, "openapi_types"):
        return None
    return {json_name: (attr, cls.openapi_types[attr])
            for attr, json_name in cls.attribute_map.items()}


def known(group: str, version: str, kind: str) -> bool:
    return _fields(model_name(group, version, kind)) is not None


def decode(obj: JSON, group: str, version: str, kind: str) -> Decoded:
    """The object as the typed codec keeps it (unknown fields dropped) and the dropped
    paths; raises DecodeError like the codec (`<Kind> in version "<v>" cannot be handled
    as a <Kind>: ...`)."""
    model = model_name(group, version, kind)
    if _fields(model) is None:
        return Decoded(obj)
    unknown: list[str] = []
    try:
        out = _struct(obj, model, "", kind, unknown)
    except DecodeError as exc:
        raise DecodeError(f'{kind} in version "{version}" cannot be handled as a {kind}: '
                          f"{exc}") from None
    return Decoded(out, unknown)


def _struct(value: Any, model: str, path: str, owner: str, unknown: list[str]) -> Any:
    fields = _fields(model)
    if value is None or fields is None:
        return value
    if not isinstance(value, dict):
        raise _mismatch(value, owner, path, _go_name(model))
    out: JSON = {}
    for name, item in value.items():
        spec = fields.get(name)
        child = f"{path}.{name}" if path else name
        if spec is None:
            unknown.append(child)
            continue
        attr, typ = spec
        if (model, attr) in _QUANTITIES:
            out[name] = _quantity(item, typ, model, child)
        else:
            out[name] = _value(item, typ, child, _go_name(model), unknown)
    return out


def _value(value: Any, typ: str, path: str, owner: str, unknown: list[str]) -> Any:
    """Check one value against a model type string; `path` has list indexes for unknown
    fields, the Go error names the path without them (as encoding/json does)."""
    if value is None or typ == "object":
        return value
    if match := _LIST.match(typ):
        if not isinstance(value, list):
            raise _mismatch(value, owner, path, "[]" + _go_name(match.group(1)))
        return [_value(v, match.group(1), f"{path}[{i}]", owner, unknown)
                for i, v in enumerate(value)]
    if match := _DICT.match(typ):
        if not isinstance(value, dict):
            raise _mismatch(value, owner, path, "map[string]" + _go_name(match.group(1)))
        return {k: _value(v, match.group(1), f"{path}.{k}" if match.group(1) not in _GO_TYPES
                          else path, owner, unknown) for k, v in value.items()}
    if typ in _GO_TYPES:
        return _scalar(value, typ, path, owner)
    return _struct(value, typ, path, _go_name(typ), unknown)


def _scalar(value: Any, typ: str, path: str, owner: str) -> Any:
    ok = {"str": isinstance(value, str), "datetime": isinstance(value, str),
          "date": isinstance(value, str), "bytes": isinstance(value, str),
          "bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, int | float) and not isinstance(value, bool)}[typ]
    if not ok:
        raise _mismatch(value, owner, path, _GO_TYPES[typ])
    if typ == "bytes":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError(f"illegal base64 data at input byte {_bad_byte(value)}") \
                from None
    return value


def _quantity(value: Any, typ: str, model: str, path: str) -> Any:
    """resource.Quantity: a string or a number; maps of them (ResourceList) likewise."""
    def one(v: Any, where: str) -> Any:
        if v is None or (isinstance(v, str | int | float) and not isinstance(v, bool)):
            return v
        raise _mismatch(v, _go_name(model), where, "resource.Quantity")

    if typ.startswith(("Dict", "dict")):
        if value is None:
            return value
        if not isinstance(value, dict):
            raise _mismatch(value, _go_name(model), path, "v1.ResourceList")
        return {k: one(v, path) for k, v in value.items()}
    return one(value, path)


def _go_name(model: str) -> str:
    if model in _GO_TYPES:
        return _GO_TYPES[model]
    return re.sub(r"^(Core|Events)?V\d+((alpha|beta)\d+)?", "", model) or model


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "number"
    if isinstance(value, float):
        return f"number {value:g}" if value != int(value) else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _mismatch(value: Any, owner: str, path: str, go_type: str) -> DecodeError:
    plain = re.sub(r"\[\d+\]", "", path)
    return DecodeError(f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                       f"{owner}.{plain} of type {go_type}")


def _bad_byte(text: str) -> int:
    """Where Go's base64 decoder stops: the first character outside the alphabet, else
    the end (bad length or padding)."""
    for i, ch in enumerate(text):
        if not (ch.isascii() and (ch.isalnum() or ch in "+/=")):
            return i
    return len(text) - len(text) % 4 if len(text) % 4 else max(len(text) - 1, 0)
