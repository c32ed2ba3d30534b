"""The four PATCH flavours of the Kubernetes API (pure, no I/O).

- JSON merge patch (RFC 7386), JSON patch (RFC 6902),
- strategic merge patch for built-in kinds, driven by a merge-key table taken from the
  upstream Go struct tags (patchStrategy/patchMergeKey),
- a simplified server-side apply: merge the applied configuration into the live object
  (associative lists merged by key) and remove fields this manager applied before but no
  longer applies. Ownership is recorded in `managedFields` (fieldsV1) for apply operations;
  conflicts between managers are not detected (every apply behaves as `--force-conflicts`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

JSON = dict[str, Any]


class PatchBodyError(ValueError):
    """The patch document itself is malformed: 400 BadRequest."""


class PatchApplyError(ValueError):
    """The patch is well formed but cannot be applied to this object: 422."""


# ---------------------------------------------------------------------------- merge patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JSON = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ----------------------------------------------------------------------------- json patch


def _unescape_token(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchApplyError(f'add operation does not apply: doc is missing path: "{path}"')
    return [_unescape_token(t) for t in path[1:].split("/")]


def _walk(doc: Any, tokens: list[str], path: str) -> Any:
    cur = doc
    for tok in tokens:
        if isinstance(cur, dict):
            if tok not in cur:
                raise PatchApplyError(f'doc is missing path: "{path}": missing value')
            cur = cur[tok]
        elif isinstance(cur, list):
            idx = _index(tok, len(cur), path, allow_end=False)
            cur = cur[idx]
        else:
            raise PatchApplyError(f'doc is missing path: "{path}": missing value')
    return cur


def _index(tok: str, length: int, path: str, *, allow_end: bool) -> int:
    if tok == "-" and allow_end:
        return length
    if not tok.isdigit() or (len(tok) > 1 and tok.startswith("0")):
        raise PatchApplyError(f'doc is missing path: "{path}": invalid index "{tok}"')
    idx = int(tok)
    if idx > length or (idx == length and not allow_end):
        raise PatchApplyError(f'doc is missing path: "{path}": index out of range: {idx}')
    return idx


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), path, allow_end=True), value)
    else:
        raise PatchApplyError(f'add operation does not apply: doc is missing path: "{path}"')
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        raise PatchApplyError("remove operation does not apply: cannot remove the whole document")
    parent = _walk(doc, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchApplyError(
                f'remove operation does not apply: doc is missing path: "{path}"')
        return doc, parent.pop(last)
    if isinstance(parent, list):
        idx = _index(last, len(parent), path, allow_end=False)
        return doc, parent.pop(idx)
    raise PatchApplyError(f'remove operation does not apply: doc is missing path: "{path}"')


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 with the server's error split: bad documents 400, failed operations 422."""
    if not isinstance(operations, list):
        raise PatchBodyError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise PatchBodyError("json: cannot unmarshal into Go value of type jsonpatch.Operation")
        kind = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise PatchApplyError(f"{kind} operation does not apply: missing path")
        if kind == "add":
            if "value" not in op:
                raise PatchApplyError("add operation does not apply: missing value")
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            if "value" not in op:
                raise PatchApplyError("replace operation does not apply: missing value")
            tokens = _pointer(path)
            if not tokens:
                doc = copy.deepcopy(op["value"])
                continue
            _walk(doc, tokens, path)
            doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise PatchApplyError(f"{kind} operation does not apply: missing from")
            if kind == "move":
                doc, value = _remove(doc, src)
            else:
                value = copy.deepcopy(_walk(doc, _pointer(src), src))
            doc = _add(doc, path, value)
        elif kind == "test":
            have = _walk(doc, _pointer(path), path)
            if have != op.get("value"):
                raise PatchApplyError(f'testing value {path} failed: test failed')
        else:
            raise PatchBodyError(f"Unexpected kind: {kind}")
    return doc


# ------------------------------------------------------------------ strategic merge patch

# (parent field, field) or field -> merge key; "" means merge primitive list by value.
# Taken from the patchStrategy/patchMergeKey tags of k8s.io/api types.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "topologySpreadConstraints": "topologyKey",
    "ownerReferences": "uid",
    "finalizers": "",
    "resourceClaims": "name",
    "addresses": "type",
    "secrets": "name",
    "schedulingGates": "name",
}
_CONTAINER_LISTS = {"containers", "initContainers", "ephemeralContainers"}


def builtin_merge_key(path: tuple[str, ...]) -> str | None:
    """The merge key of the list at `path` in a built-in kind, None when it is atomic."""
    if not path:
        return None
    field = path[-1]
    if field == "ports":
        if len(path) >= 2 and path[-2] in _CONTAINER_LISTS:
            return "containerPort"
        return "port"
    if field == "addresses" and "status" not in path:
        return None
    return _MERGE_KEYS.get(field)


MergeKeyFn = Callable[[tuple[str, ...]], "str | None"]


def strategic_merge_patch(target: Any, patch: Any, merge_key: MergeKeyFn = builtin_merge_key,
                          path: tuple[str, ...] = ()) -> Any:
    """Apply a strategic merge patch with its directives: $patch, $retainKeys,
    $deleteFromPrimitiveList/<f> and $setElementOrder/<f>."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise PatchBodyError(f"Unknown patch type: {directive} in map: {patch}")
    result: JSON = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise PatchBodyError("invalid patch: $deleteFromPrimitiveList must be a list")
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in value]
            continue
        if key.startswith("$setElementOrder/"):
            if not isinstance(value, list):
                raise PatchBodyError("invalid patch: $setElementOrder must be a list")
            orders[key.split("/", 1)[1]] = value
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, merge_key, (*path, key))
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value, merge_key, (*path, key))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _reorder(result[field], order, merge_key((*path, field)))
    if isinstance(retain, list):
        for key in list(result):
            if key not in retain and key in (target or {}) and key not in patch:
                del result[key]
    return result


def _merge_list(live: Any, patch: list[Any], merge_key: MergeKeyFn,
                path: tuple[str, ...]) -> list[Any]:
    key = merge_key(path)
    live_list = copy.deepcopy(live) if isinstance(live, list) else []
    if key is None:
        return [_strip_directives(x) for x in patch]
    if key == "":
        out = list(live_list)
        for item in patch:
            if item not in out:
                out.append(copy.deepcopy(item))
        return out
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [_strip_directives(x) for x in patch
                if not (isinstance(x, dict) and x.get("$patch") == "replace")]
    live_keys = [x.get(key) if isinstance(x, dict) else None for x in live_list]
    patched: list[Any] = []
    touched = set()
    for item in patch:
        if not isinstance(item, dict):
            raise PatchBodyError(f"invalid patch: list {path[-1]} needs objects with key {key}")
        if key not in item:
            raise PatchApplyError(f"map: {item} does not contain declared merge key: {key}")
        marker = json.dumps(item[key], sort_keys=True)
        touched.add(marker)
        idx = next((i for i, k in enumerate(live_keys) if k == item[key]), None)
        if item.get("$patch") == "delete":
            continue
        base = live_list[idx] if idx is not None else {}
        patched.append(strategic_merge_patch(base, item, merge_key, path))
    server_only = [x for x, k in zip(live_list, live_keys, strict=True)
                   if json.dumps(k, sort_keys=True) not in touched]
    return _interleave(patched, server_only, live_keys, key)


def _interleave(patched: list[Any], server_only: list[Any], live_keys: list[Any],
                key: str) -> list[Any]:
    """apimachinery's order for a merged keyed list (mergeSortedSlice): the patch's items in
    patch order and the untouched live items in live order, merged; a live item goes first
    only when both are in the live list and it comes earlier there, so items new to the list
    come before the untouched ones."""
    def rank(item: Any) -> int:
        value = item.get(key) if isinstance(item, dict) else None
        return live_keys.index(value) if value in live_keys else -1

    out: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(patched):
        if j >= len(patched) or (i < len(server_only) and 0 <= rank(server_only[i])
                                 < rank(patched[j])):
            out.append(server_only[i])
            i += 1
        else:
            out.append(patched[j])
            j += 1
    return out


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(x: Any) -> Any:
        if key and isinstance(x, dict):
            return json.dumps(x.get(key), sort_keys=True)
        return json.dumps(x, sort_keys=True)

    rank = {ident(x): i for i, x in enumerate(order)}
    indexed = list(enumerate(items))
    indexed.sort(key=lambda p: (rank.get(ident(p[1]), len(rank) + p[0]), p[0]))
    return [x for _, x in indexed]


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


# -------------------------------------------------------------------- server-side apply

Path = tuple[str, ...]


def _item_token(item: Any, key: str | None) -> str:
    if key and isinstance(item, dict) and key in item:
        return "k:" + json.dumps({key: item[key]}, separators=(",", ":"))
    return "v:" + json.dumps(item, separators=(",", ":"), sort_keys=True)


def applied_paths(config: Any, merge_key: MergeKeyFn, path: tuple[str, ...] = ()) -> set[Path]:
    """The leaf field paths an apply configuration sets (its claim of ownership)."""
    out: set[Path] = set()
    if isinstance(config, dict):
        if not config and path:
            out.add(tuple(f"f:{p}" if not p.startswith(("k:", "v:")) else p for p in path))
        for k, v in config.items():
            out |= applied_paths(v, merge_key, (*path, k))
        return out
    names = tuple(p for p in path if not p.startswith(("k:", "v:")))
    key = merge_key(names) if isinstance(config, list) else None
    if isinstance(config, list) and key:
        for item in config:
            out |= applied_paths(item, merge_key, (*path, _item_token(item, key)))
        return out
    out.add(tuple(f"f:{p}" if not p.startswith(("k:", "v:")) else p for p in path))
    return out


def fields_v1(paths: set[Path]) -> JSON:
    """Encode owned paths in the `fieldsV1` trie format used by managedFields."""
    root: JSON = {}
    for p in sorted(paths):
        node = root
        for seg in p:
            node = node.setdefault(seg, {})
    return root


def paths_from_fields_v1(trie: Any, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(trie, dict):
        return out
    if not trie and prefix:
        out.add(prefix)
    for seg, sub in trie.items():
        if seg == ".":
            continue
        out |= paths_from_fields_v1(sub, (*prefix, seg))
    return out


def apply_merge(live: Any, config: Any, merge_key: MergeKeyFn,
                path: tuple[str, ...] = ()) -> Any:
    """Merge an apply configuration into the live object: maps recursively, associative
    lists by key, anything else replaced."""
    if isinstance(config, dict):
        result: JSON = copy.deepcopy(live) if isinstance(live, dict) else {}
        for k, v in config.items():
            result[k] = apply_merge(result.get(k), v, merge_key, (*path, k))
        return result
    if isinstance(config, list):
        key = merge_key(path)
        if key and isinstance(live, list):
            out = copy.deepcopy(live)
            for item in config:
                idx = next((i for i, x in enumerate(out) if isinstance(x, dict)
                            and isinstance(item, dict) and x.get(key) == item.get(key)), None)
                if idx is None:
                    out.append(copy.deepcopy(item))
                else:
                    out[idx] = apply_merge(out[idx], item, merge_key, path)
            return out
        if key == "" and isinstance(live, list):
            return copy.deepcopy(config)
        return copy.deepcopy(config)
    return copy.deepcopy(config)


def remove_paths(obj: Any, paths: set[Path], merge_key: MergeKeyFn) -> Any:
    """Remove fields a manager no longer applies (deepest first), dropping emptied parents
    it alone created."""
    result = copy.deepcopy(obj)
    for p in sorted(paths, key=len, reverse=True):
        _remove_path(result, list(p), merge_key, ())
    return result


def _remove_path(node: Any, segs: list[str], merge_key: MergeKeyFn, names: Path) -> None:
    if not segs:
        return
    seg, rest = segs[0], segs[1:]
    if isinstance(node, dict) and seg.startswith("f:"):
        name = seg[2:]
        if name not in node:
            return
        if not rest:
            del node[name]
            return
        _remove_path(node[name], rest, merge_key, (*names, name))
        if node[name] in ({}, []) and rest:
            del node[name]
    elif isinstance(node, list) and seg.startswith("k:"):
        want = json.loads(seg[2:])
        for i, item in enumerate(node):
            if isinstance(item, dict) and all(item.get(k) == v for k, v in want.items()):
                if not rest:
                    node.pop(i)
                else:
                    _remove_path(item, rest, merge_key, names)
                    if set(item) <= set(want):
                        node.pop(i)
                return
