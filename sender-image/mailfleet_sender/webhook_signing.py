"""Signing webhook batches, and the check a receiver runs. Pure (no I/O).

The signature covers the timestamp and the exact body bytes: `v1=<hex HMAC-SHA256(key,
"<timestamp>.<body>")>` in `Mailfleet-Signature`, the timestamp (Unix seconds) in
`Mailfleet-Timestamp`. A receiver recomputes it with its copy of the key, compares in constant
time, and refuses a timestamp outside its replay window (5 minutes by default) so a captured
request cannot be played again later. `verify` is that check, public so a Python receiver can
import it (docs/events.md shows it standalone too).

The `v1=` prefix names the scheme: a later one can be added beside it (several comma-separated
signatures in one header, as during a key rotation) without breaking receivers of v1.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "Mailfleet-Timestamp"
SIGNATURE_HEADER = "Mailfleet-Signature"
WEBHOOK_HEADER = "Mailfleet-Webhook"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300.0
"""Seconds a receiver accepts between the timestamp and its own clock, either way."""


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """The header value for one request: `v1=<hex>`."""
    return f"{SCHEME}={_hex(key, timestamp, body).decode('ascii')}"


def verify(
    key: bytes, timestamp: str, body: bytes, signature: str, now: float,
    tolerance_s: float = DEFAULT_TOLERANCE,
) -> bool:
    """True when one of the header's `v1=` signatures matches the body and timestamp, and the
    timestamp is within `tolerance_s` of `now` (stale or future-dated requests are refused)."""
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 16:
        return False
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    expected = _hex(key, timestamp, body)
    good = False
    for part in signature.split(","):
        scheme, equals, value = part.strip().partition("=")
        if equals and scheme == SCHEME:
            good |= hmac.compare_digest(value.encode("ascii", "replace"), expected)
    return good


def _hex(key: bytes, timestamp: str, body: bytes) -> bytes:
    digest = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return digest.hexdigest().encode("ascii")
