"""Reading request bodies whole, under a size cap, and parsing JSON with a depth limit.

Why: `request.content.read(n)` returns what has arrived so far, which for a body sent in
several TCP segments is only a part of it (a 10,000-entry replication push failed as "bad
JSON"). And `json.loads` of deeply nested input raises RecursionError, which a handler that
catches ValueError turns into a 500. Every route that reads a body goes through `read_body`
with its own cap (413 beyond it) and every JSON body through `loads` (400 when too deep).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a JSON body; no request of the API
nests more than a few levels."""
CHUNK = 64 * 1024


class TooLarge(Exception):
    """The body is over the route's cap (answer 413)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        told = f"body of {size} bytes" if size is not None else "body"
        super().__init__(f"{told} over the limit of {limit} bytes")
        self.limit = limit


class BadJSON(ValueError):
    """Not JSON, or nested deeper than MAX_JSON_DEPTH (answer 400)."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body (however it was split on the wire), or TooLarge as soon as it passes
    `limit`: a declared Content-Length over it is refused before reading anything."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(limit, request.content_length)
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


def loads(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads that answers BadJSON (a ValueError) for every bad input, deep nesting
    included."""
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise BadJSON(f"JSON nested deeper than {max_depth} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJSON(f"malformed JSON: {exc}") from exc
    if depth(value, stop=max_depth) > max_depth:
        raise BadJSON(f"JSON nested deeper than {max_depth} levels")
    return value


def depth(value: Any, *, stop: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counting no further than
    `stop + 1`; iterative, so it cannot itself run out of stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > stop:
            return deepest
        stack.extend((child, level) for child in children if isinstance(child, (dict, list)))
    return deepest
