"""The body of a hand-off request: the envelope and the message in one body (no I/O).

Why not the URL: with the recipients in `?to=` query parameters the request line passes the
server's limit (aiohttp: 8,190 bytes) at about 250 recipients, the peer answers 400 and the
hand-off never ends. In the body the envelope is bounded only by the route's size cap.

Format (`Content-Type: application/vnd.mailfleet.handoff`): one line of JSON
(`{"from": "...", "to": ["...", ...], "class": "...", "tier": "..."|null, "tags": {...}}`), a
LF, then the message bytes as stored. `tags` (the application's, `tags`) is left out when there
are none; a receiver of the previous version ignores it. A receiver still takes the previous
form (`message/rfc822` with the envelope in the query) from peers running the previous
version.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

CONTENT_TYPE = "application/vnd.mailfleet.handoff"
MAX_ENVELOPE_BYTES_PER_RECIPIENT = 512
"""Room for one recipient in the envelope line (an address is at most 254 characters, JSON
escaping may double it)."""
ENVELOPE_OVERHEAD = 4096
"""Room for the sender, class and tier in the envelope line."""


@dataclasses.dataclass(frozen=True)
class Envelope:
    sender: str
    recipients: tuple[str, ...]
    class_name: str | None
    tier: str | None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


class BadEnvelope(ValueError):
    """The body is not a hand-off envelope followed by a message; the text says why."""


def max_envelope_bytes(max_recipients: int) -> int:
    """The longest envelope line a receiver with this recipient limit reads."""
    return ENVELOPE_OVERHEAD + max_recipients * MAX_ENVELOPE_BYTES_PER_RECIPIENT


def encode(envelope: Envelope, data: bytes) -> bytes:
    head: dict[str, object] = {
        "from": envelope.sender,
        "to": list(envelope.recipients),
        "class": envelope.class_name,
        "tier": envelope.tier,
    }
    if envelope.tags:
        head["tags"] = dict(envelope.tags)
    line = json.dumps(
        head,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return line.encode("ascii") + b"\n" + data


def decode(body: bytes, *, max_envelope: int) -> tuple[Envelope, bytes]:
    """Split a hand-off body; BadEnvelope when the envelope line is missing, too long or
    not of the expected shape."""
    end = body.find(b"\n", 0, max_envelope + 1)
    if end < 0:
        raise BadEnvelope(f"no envelope line within {max_envelope} bytes")
    try:
        raw = json.loads(body[:end])
    except (ValueError, RecursionError) as exc:
        raise BadEnvelope(f"envelope is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadEnvelope("envelope must be an object")
    sender, recipients = raw.get("from", ""), raw.get("to")
    class_name, tier = raw.get("class"), raw.get("tier")
    if not isinstance(sender, str):
        raise BadEnvelope("envelope 'from' must be a string")
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise BadEnvelope("envelope 'to' must be a list of strings")
    for name, value in (("class", class_name), ("tier", tier)):
        if value is not None and not isinstance(value, str):
            raise BadEnvelope(f"envelope {name!r} must be a string or null")
    tags = raw.get("tags") or {}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise BadEnvelope("envelope 'tags' must be an object of strings")
    return Envelope(sender, tuple(recipients), class_name, tier, tags), body[end + 1:]
