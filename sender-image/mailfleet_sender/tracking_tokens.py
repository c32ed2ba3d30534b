"""Tracking tokens: what an open pixel or a rewritten link carries, signed so that only this
pool can mint one. Pure (no I/O).

Wire format (docs/tracking.md, the issue-20 contract):
`base64url(payload) + "." + base64url(HMAC-SHA256(key, payload)[:16])`, both without padding,
where payload is compact JSON `{"m": message id, "r": recipient | null, "u": url | null,
"k": "o" | "c"}`. Three optional members widen it so an event can be told whole by whichever
pod serves the request (the pods of a pool share no per-message state): `"c"` the message
class, `"g"` the application's tags, `"t"` the submission time (unix seconds).

The payload is signed, not encrypted: whoever holds the mail can read it (docs/tracking.md,
"Privacy"). A token that does not verify, or is not in canonical form, or whose payload has
the wrong shape is refused the same way (None): the HTTP side answers 404 and records nothing,
so the endpoint can never redirect to a URL this pool did not put in a message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Literal

SIGNATURE_BYTES = 16
"""128 bits of HMAC-SHA256: forging one needs 2**128 tries (online, each a request)."""
MAX_TOKEN_CHARS = 4096
"""Longer tokens are refused before any decoding; the rewriter leaves a link whose token would
be longer untracked (HTTP servers refuse request lines of 8 KB, aiohttp's limit)."""
MIN_KEY_BYTES = 16
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")

Kind = Literal["o", "c"]
OPEN: Kind = "o"
CLICK: Kind = "c"


@dataclasses.dataclass(frozen=True)
class Claims:
    """What a verified token says."""

    message_id: str
    recipient: str | None
    url: str | None
    """The original URL (clicks); None for an open pixel."""
    kind: Kind
    class_name: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    issued: int | None = None
    """Unix seconds of the submission that minted the token."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Canonical unpadded base64url only: any other spelling of the same bytes is refused, so
    an altered character never verifies as the original."""
    if not text or "=" in text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64(raw) == text else None


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def _payload(claims: Claims) -> bytes:
    body: dict[str, object] = {
        "m": claims.message_id, "r": claims.recipient, "u": claims.url, "k": claims.kind,
    }
    if claims.class_name is not None:
        body["c"] = claims.class_name
    if claims.tags:
        body["g"] = dict(claims.tags)
    if claims.issued is not None:
        body["t"] = claims.issued
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(claims: Claims, key: bytes) -> str:
    """The token for `claims`, signed with `key` (the first of the pool's tracking keys)."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a tracking key needs at least {MIN_KEY_BYTES} bytes")
    if claims.kind == CLICK and not claims.url:
        raise ValueError("a click token needs its URL")
    payload = _payload(claims)
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify(token: str, keys: Sequence[bytes]) -> Claims | None:
    """The claims of a token signed by any of `keys`; None for anything else (forged,
    altered, truncated, over-long, or a payload of the wrong shape)."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return None
    encoded_payload, encoded_mac = token.split(".")
    payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
    if payload is None or mac is None or len(mac) != SIGNATURE_BYTES:
        return None
    matched = False
    for key in keys:  # every key, no early exit: timing does not say which one matched
        matched |= hmac.compare_digest(_mac(key, payload), mac)
    if not matched:
        return None
    return _claims(payload)


def _claims(payload: bytes) -> Claims | None:
    """Shape checks on a payload we signed ourselves: a defence in depth, so a key that
    signed something else never yields a redirect."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    message, recipient, url, kind = body.get("m"), body.get("r"), body.get("u"), body.get("k")
    klass, tags, issued = body.get("c"), body.get("g", {}), body.get("t")
    if not isinstance(message, str) or not message:
        return None
    if recipient is not None and not isinstance(recipient, str):
        return None
    if kind == OPEN:
        if url is not None:
            return None
    elif kind == CLICK:
        if not isinstance(url, str) or not is_trackable_url(url):
            return None
    else:
        return None
    if klass is not None and not isinstance(klass, str):
        return None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        return None
    if issued is not None and (not isinstance(issued, int) or isinstance(issued, bool)):
        return None
    return Claims(message_id=message, recipient=recipient, url=url, kind=kind,
                  class_name=klass, tags=tags, issued=issued)


def is_trackable_url(url: str) -> bool:
    """An absolute http(s) URL without whitespace or control characters: the only kind a
    link is rewritten for, and so the only kind a click may redirect to."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in ("http", "https") or not rest.startswith("//"):
        return False
    authority = rest[2:].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if not authority:
        return False
    return _CONTROL_OR_SPACE.search(url) is None

