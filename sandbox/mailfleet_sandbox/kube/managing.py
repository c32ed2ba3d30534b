"""Field ownership (`metadata.managedFields`) as structured-merge-diff keeps it (pure, no
I/O): every write by a named manager records the fields it set, and a server-side apply
that would change a field another manager owns is a conflict unless forced.

A manager is (name, operation, subresource), as the API server's manager identifier; an
Update manager owns the fields its writes added or changed, an Apply manager the fields of
its last configuration. Either loses the fields another write changes (an Update takes
them silently, a forced Apply takes them on purpose) or removes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailfleet_sandbox.kube import errors, patching

JSON = dict[str, Any]
Path = patching.Path
Manager = tuple[str, str, str]  # (manager, operation, subresource)
_OWNED_META = ("labels", "annotations", "finalizers", "ownerReferences")


@dataclass
class Owned:
    fields: set[Path]
    api_version: str
    time: str


def tracked(obj: JSON | None, *, status_subresource: bool, subresource: str) -> JSON:
    """The part of an object whose fields are owned: not apiVersion/kind or server-set
    metadata; status only through /status when the kind has that subresource (the
    strategy resets it elsewhere), and nothing else through /status."""
    if obj is None:
        return {}
    if subresource == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")
           and not (status_subresource and k == "status")}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k in _OWNED_META}
    if meta:
        out["metadata"] = meta
    return out


def read(entries: Any) -> dict[Manager, Owned]:
    out: dict[Manager, Owned] = {}
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue
        key = (str(entry.get("manager", "")), str(entry.get("operation", "")),
               str(entry.get("subresource", "")))
        out[key] = Owned(patching.paths_from_fields_v1(entry.get("fieldsV1")),
                         str(entry.get("apiVersion", "")), str(entry.get("time", "")))
    return out


def write(managers: dict[Manager, Owned]) -> list[JSON]:
    entries: list[JSON] = []
    for (name, operation, subresource), owned in managers.items():
        entry: JSON = {"manager": name, "operation": operation,
                       "apiVersion": owned.api_version, "time": owned.time,
                       "fieldsType": "FieldsV1", "fieldsV1": patching.fields_v1(owned.fields)}
        if subresource:
            entry["subresource"] = subresource
        entries.append(entry)
    return entries


def _value_at(obj: Any, path: Path) -> tuple[bool, Any]:
    node = obj
    for seg in path:
        if seg.startswith("f:") and isinstance(node, dict) and seg[2:] in node:
            node = node[seg[2:]]
        elif seg.startswith("k:") and isinstance(node, list):
            want = json.loads(seg[2:])
            node = next((i for i in node if isinstance(i, dict)
                         and all(i.get(k) == v for k, v in want.items())), _MISSING)
        elif seg.startswith("v:") and isinstance(node, list):
            value = json.loads(seg[2:])
            node = value if value in node else _MISSING
        else:
            return False, None
        if node is _MISSING:
            return False, None
    return True, node


_MISSING = object()


def compare(old: JSON, new: JSON, merge_key: patching.MergeKeyFn) -> tuple[set[Path],
                                                                         set[Path]]:
    """(added or modified, removed) leaf fields from `old` to `new`."""
    old_paths = patching.applied_paths(old, merge_key)
    new_paths = patching.applied_paths(new, merge_key)
    changed = {p for p in new_paths
               if p not in old_paths or _value_at(old, p) != _value_at(new, p)}
    return changed, old_paths - new_paths


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _others_keep(managers: dict[Manager, Owned], me: Manager,
                 lost: set[Path]) -> dict[Manager, Owned]:
    """Every other manager's ownership, less the fields this write changed or removed."""
    out: dict[Manager, Owned] = {}
    for key, owned in managers.items():
        if key != me and owned.fields - lost:
            out[key] = Owned(owned.fields - lost, owned.api_version, owned.time)
    return out


def record_update(managers: dict[Manager, Owned], me: Manager, api_version: str,
                  old: JSON, new: JSON, merge_key: patching.MergeKeyFn) -> dict[Manager, Owned]:
    """An Update (create, PUT, non-apply PATCH): `me` owns what it added or changed,
    nobody owns what it removed or what it took from others."""
    changed, removed = compare(old, new, merge_key)
    out = _others_keep(managers, me, changed | removed)
    mine = managers.get(me)
    fields = ((mine.fields if mine else set()) - removed) | changed
    if fields:
        out[me] = Owned(fields, api_version, now() if changed or not mine else mine.time)
    return out


def apply_conflicts(managers: dict[Manager, Owned], me: Manager, live: JSON, merged: JSON,
                    merge_key: patching.MergeKeyFn) -> dict[Manager, set[Path]]:
    """Fields other managers own that this apply would change."""
    changed, _ = compare(live, merged, merge_key)
    out: dict[Manager, set[Path]] = {}
    for key, owned in managers.items():
        if key != me and owned.fields & changed:
            out[key] = owned.fields & changed
    return out


def record_apply(managers: dict[Manager, Owned], me: Manager, api_version: str, live: JSON,
                 merged: JSON, applied: set[Path],
                 merge_key: patching.MergeKeyFn) -> dict[Manager, Owned]:
    """A (forced or conflict-free) apply: `me` owns exactly its configuration; others lose
    what it changed and what was removed."""
    changed, removed = compare(live, merged, merge_key)
    out = _others_keep(managers, me, changed | removed)
    if applied:
        out[me] = Owned(set(applied), api_version, now())
    return out


def conflict_error(conflicts: dict[Manager, set[Path]],
                   managers: dict[Manager, Owned]) -> errors.ApiError:
    """409 Conflict with one FieldManagerConflict cause per field, worded as the server."""
    causes: list[errors.Cause] = []
    for key, fields in conflicts.items():
        name, operation, subresource = key
        who = f'"{name}"' + (f' with subresource "{subresource}"' if subresource else "")
        if operation == "Update":
            who += f" using {managers[key].api_version}"
        causes += [errors.Cause("FieldManagerConflict", f"conflict with {who}",
                                render_path(p)) for p in sorted(fields)]
    if len(causes) == 1:
        message = f"Apply failed with 1 conflict: {causes[0].message}: {causes[0].field}"
    else:
        lines = [f"{c.message}: {c.field}" for c in causes]
        message = f"Apply failed with {len(causes)} conflicts: " + "\n".join(lines)
    return errors.ApiError(409, "Conflict", message, causes=causes)


def render_path(path: Path) -> str:
    """structured-merge-diff's path text: `.spec.x`, `[name="a"]`, `[="v"]`."""
    out = ""
    for seg in path:
        if seg.startswith("f:"):
            out += "." + seg[2:]
        elif seg.startswith("k:"):
            keys = json.loads(seg[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif seg.startswith("v:"):
            out += f"[={seg[2:]}]"
    return out
