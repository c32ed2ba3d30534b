"""JSON merge patches (RFC 7386) computed from two documents.

Pure (no I/O). A merge patch built from the new document alone would leave fields that
disappeared in place on the server (a `pending` selector that is no longer pending);
`diff` nulls them, and leaves out what did not change so a patch stays small.
"""

from __future__ import annotations

from typing import Any


def diff(old: Any, new: Any) -> Any:
    """The merge patch turning `old` into `new` (an empty dict when they are equal).

    Lists are replaced whole, as merge patch semantics require.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            if isinstance(old[key], dict) and isinstance(value, dict):
                patch[key] = diff(old[key], value)
            else:
                patch[key] = value
    return patch
