"""One-click unsubscribe (RFC 8058): per-recipient tokens and the headers that carry them.
Pure (no I/O) except `load_key`, which reads the mounted Secret file.

Tokens. A token names the recipient, the list (the pool, or pool/class), when it was issued
and a random nonce, and is sealed with AES-GCM under a key derived from the pool's secret.
AEAD rather than a bare HMAC over a readable payload: the token travels in URLs that end up in
proxy logs and link scanners, and it should not hand them the address. The GCM tag is the
signature: any change to the token, or a token made without the key, fails verification.

Replay. RFC 8058 receivers (and link scanners) may POST the same URL more than once, so a
replayed token must be harmless, and it must never undo an administrator's decision. Our take:
- a valid token that was already used is accepted again but reported as `replayed`, and the
  endpoint records nothing new (the suppression is already there);
- `should_record` refuses a token issued before the address was last removed from the
  suppression list, so an old mail's link cannot re-suppress someone who re-subscribed. This
  check uses only the replicated suppression list, so it holds on every pod of the pool, while
  the `UsedTokens` store (per pod) only spares duplicate writes and counts replays;
- tokens expire after `max_age` (default 60 days) so leaked links stop working.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import pathlib
import struct
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DEFAULT_MAX_AGE",
    "ExpiredToken",
    "ForgedToken",
    "MemoryUsedTokens",
    "UnsubscribeError",
    "UnsubscribeToken",
    "UsedTokens",
    "build_unsubscribe_headers",
    "issue_token",
    "load_key",
    "should_record",
    "verify_token",
]

DEFAULT_MAX_AGE = 60 * 86400.0
"""Seconds a token stays valid: long enough for old newsletters, short enough to age out leaks."""

_VERSION = b"u1"
_NONCE_BYTES = 12
_CLOCK_SKEW = 300.0  # accept tokens "from the future" by this much (pods' clocks differ)


class UnsubscribeError(ValueError):
    """A token that records nothing; `reason` is a short label for metrics and the response."""

    reason = "invalid_token"


class ForgedToken(UnsubscribeError):
    """Not made with our key, edited, or not a token at all."""

    reason = "forged_token"


class ExpiredToken(UnsubscribeError):
    """Made with our key, but too old (or issued implausibly far in the future)."""

    reason = "expired_token"


@dataclasses.dataclass(frozen=True)
class UnsubscribeToken:
    """A verified token: who opts out of which list, and whether we saw it before."""

    recipient: str
    list_id: str
    issued_at: float
    nonce: str
    replayed: bool = False


class UsedTokens(Protocol):
    """Remembers nonces of tokens already used (per pod; see the module docstring)."""

    def mark_used(self, nonce: str, now: float) -> bool:
        """Record a use; True the first time this nonce is seen."""
        ...


class MemoryUsedTokens:
    """A bounded in-memory `UsedTokens`; the oldest nonces are forgotten first.

    Forgetting is safe: a forgotten replay is recorded again, which changes nothing while the
    address is suppressed, and `should_record` still blocks it after a removal.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._capacity = capacity

    def mark_used(self, nonce: str, now: float) -> bool:
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


def load_key(path: str | pathlib.Path) -> bytes:
    """Read the unsubscribe secret from a mounted Secret file (surrounding whitespace ignored)."""
    secret = pathlib.Path(path).read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"the unsubscribe secret in {path} must be at least 16 bytes")
    return secret


def _aead(key: bytes) -> AESGCM:
    if len(key) < 16:
        raise ValueError("the unsubscribe secret must be at least 16 bytes")
    return AESGCM(hmac.new(key, b"mailfleet/unsubscribe", hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def issue_token(
    recipient: str, list_id: str, key: bytes, *, now: float | None = None,
    nonce: bytes | None = None,
) -> str:
    """A URL-safe token for one recipient of one list."""
    if "\x00" in recipient or "\x00" in list_id:
        raise ValueError("recipient and list id cannot contain NUL")
    issued = int(time.time() if now is None else now)
    nonce = nonce if nonce is not None else os.urandom(_NONCE_BYTES)
    payload = struct.pack(">Q", issued) + f"{list_id}\x00{recipient}".encode()
    return _b64(nonce + _aead(key).encrypt(nonce, payload, _VERSION))


def verify_token(
    token: str,
    key: bytes | Sequence[bytes],
    used: UsedTokens | None = None,
    *,
    now: float | None = None,
    max_age: float = DEFAULT_MAX_AGE,
) -> UnsubscribeToken:
    """Check a token; raise ForgedToken / ExpiredToken, else say who opts out.

    `key` may be a list (current key first, then retired ones, during a secret rotation).
    """
    now = time.time() if now is None else now
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ForgedToken("token is not base64url") from exc
    if len(raw) < _NONCE_BYTES + 16 + 8:
        raise ForgedToken("token too short")
    nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
    payload: bytes | None = None
    for candidate in [key] if isinstance(key, bytes) else list(key):
        try:
            payload = _aead(candidate).decrypt(nonce, sealed, _VERSION)
            break
        except InvalidTag:
            continue
    if payload is None:
        raise ForgedToken("token does not verify")
    (issued,) = struct.unpack(">Q", payload[:8])
    list_id, sep, recipient = payload[8:].decode("utf-8").partition("\x00")
    if not sep or "@" not in recipient:
        raise ForgedToken("token payload has the wrong shape")
    if now - issued > max_age:
        raise ExpiredToken(f"token issued {int(now - issued)} s ago, limit {int(max_age)} s")
    if issued - now > _CLOCK_SKEW:
        raise ExpiredToken("token issued in the future")
    nonce_text = _b64(nonce)
    replayed = used is not None and not used.mark_used(nonce_text, now)
    return UnsubscribeToken(
        recipient=recipient, list_id=list_id, issued_at=float(issued), nonce=nonce_text,
        replayed=replayed,
    )


def should_record(
    token: UnsubscribeToken, *, currently_suppressed: bool, last_removed_at: float | None
) -> bool:
    """Whether a verified token should write an opt-out to the suppression list.

    Not when it is a replay, not when the address is already suppressed (nothing to change),
    and not when the token predates the address's last removal (a re-subscription wins over
    old mail's links).
    """
    if token.replayed or currently_suppressed:
        return False
    return last_removed_at is None or token.issued_at > last_removed_at


def build_unsubscribe_headers(
    rcpt: str,
    base_url: str,
    mailto_domain: str | None,
    key: bytes,
    *,
    list_id: str,
    now: float | None = None,
) -> list[tuple[str, str]]:
    """The RFC 2369 / RFC 8058 headers for one recipient copy of a marketing message.

    The https URL comes first (receivers that support one-click POST to it); the mailto is the
    fallback for clients that only send mail. Both must be covered by the DKIM signature
    (RFC 8058 section 4), which is the signer's job.
    """
    if not base_url.startswith("https://") and not base_url.startswith("http://127."):
        raise ValueError("RFC 8058 requires an https unsubscribe URL")
    token = issue_token(rcpt, list_id, key, now=now)
    url = f"{base_url.rstrip('/')}/v1/unsubscribe/{token}"
    value = f"<{url}>"
    if mailto_domain:
        subject = urllib.parse.quote(f"unsubscribe {token}")
        value += f", <mailto:unsubscribe@{mailto_domain.lower()}?subject={subject}>"
    return [
        ("List-Unsubscribe", value),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
