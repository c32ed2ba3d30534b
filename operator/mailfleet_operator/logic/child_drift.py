"""Whether an owned child must be (re)applied, and whether it is ours at all (pure, no I/O).

Level-based children (DESIGN.md §4): every cycle compares the desired object with the live
one. The API server adds defaults (a container's `terminationMessagePath`, a Service's
`clusterIPs`, `managedFields`), so "differs" means the desired fields are not a subset of
the live object, never plain inequality. A field the operator stops wanting (a dropped
`nodeSelector`) is not visible to a subset test, so the desired object carries a digest of
itself (`DIGEST_ANNOTATION`): a changed intent changes the digest, which the live object
then lacks, and server-side apply removes what the field manager no longer applies.

An object whose name a child would take but that carries no owner reference to the pool
is someone else's: it is never written (a condition and an event say why).
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DIGEST_ANNOTATION = "mailfleet.io/applied-hash"


class Action(enum.Enum):
    CREATE = "Create"  # absent: apply without force (a foreign object that appeared is kept)
    REPAIR = "Repair"  # ours and drifted (or the intent changed): apply with force
    KEEP = "Keep"  # ours and as desired: no write
    CLASH = "Clash"  # a foreign object holds the name: never written


@dataclass(frozen=True)
class Judgement:
    action: Action
    why: str = ""


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def stamped(desired: Mapping[str, Any]) -> dict[str, Any]:
    """`desired` with its own digest as an annotation (a copy; the input is not changed)."""
    body = copy.deepcopy(dict(desired))
    metadata = body.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    annotations.pop(DIGEST_ANNOTATION, None)
    metadata.pop("annotations", None)
    value = digest(body)
    metadata["annotations"] = {**annotations, DIGEST_ANNOTATION: value}
    return body


def contains(live: Any, desired: Any) -> bool:
    """Whether every field of `desired` is in `live` with the same value. Lists match item by
    item (same length: the server neither adds nor reorders items of the lists we set);
    `None` in `desired` asks for nothing, and an empty map or list matches an absent one."""
    return first_difference(live, desired) is None


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def first_difference(live: Any, desired: Any, path: str = "") -> str | None:
    """The path of the first desired field the live object lacks or has otherwise (for logs
    and events: says what drifted, never a value)."""
    if desired is None:
        return None
    if live is None and isinstance(desired, Mapping | list) and not desired:
        return None  # the API server drops an empty map or list (a Secret with no data)
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return path or "."
        for key, value in desired.items():
            found = first_difference(live.get(key), value, f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for index, (a, b) in enumerate(zip(live, desired, strict=True)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return None if live == desired else path


def judge(desired: Mapping[str, Any], live: Mapping[str, Any] | None, uid: str) -> Judgement:
    """What to do with one child: `desired` as stamped, `live` as read (None: absent)."""
    if live is None:
        return Judgement(Action.CREATE, "absent")
    if (live.get("metadata") or {}).get("deletionTimestamp"):
        return Judgement(Action.KEEP, "being deleted: recreated once gone")
    if not owned_by(live, uid):
        return Judgement(Action.CLASH, "exists without an owner reference to the pool")
    drift = first_difference(live, desired)
    if drift is None:
        return Judgement(Action.KEEP)
    return Judgement(Action.REPAIR, drift.lstrip(".") or "object")


def describe_clash(kind: str, namespace: str, name: str, pool: str) -> str:
    return (
        f"{kind} {namespace}/{name} exists and is not owned by SendingPool {pool} (no owner "
        "reference to it); the operator never takes over an object it does not own: delete "
        "or rename it"
    )
