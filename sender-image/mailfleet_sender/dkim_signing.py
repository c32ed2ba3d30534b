"""DKIM signing (RFC 6376) with relaxed/relaxed canonicalization, RSA-SHA256 and Ed25519-SHA256
(RFC 8463). Pure: no I/O; keys come in as `cryptography` key objects (see `keys`).

Why our own signer and not dkimpy: dkimpy computes RSA in pure Python and signs about 150
messages/s per core, which would make signing the bottleneck of a bulk MTA. Here the private-key
operation is OpenSSL's (through `cryptography`, which also releases the GIL while signing, so
several signatures run in parallel on worker threads), and the Python part is kept to a few
regex passes over bytes. dkimpy stays in the test suite as the independent verifier of every
signature this module produces.

What is signed: the headers in `DEFAULT_SIGNED_HEADERS` that are present, each as many times as
it occurs, plus one extra (absent) instance of the headers in `OVERSIGNED_HEADERS`. The extra
instance is "oversigning": a verifier treats it as an empty header, so anyone who adds a second
From (or Subject...) after signing breaks the signature instead of slipping a forged display
address past the recipient.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import re
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "in-reply-to",
    "references",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
)
"""Headers worth protecting: what the recipient sees, plus what changes how the body is read."""

OVERSIGNED_HEADERS: frozenset[str] = frozenset({"from", "subject", "reply-to", "to", "cc", "date"})
"""Headers signed once more than they occur, so that adding one later breaks the signature."""

FOLD_WIDTH = 72
"""Base64 values are folded every this many characters to stay under the 78-column guidance."""

_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_TO_SQUEEZE = re.compile(rb"[ \t]{2,}|\t")
"""Only runs that change: single spaces are already canonical, and skipping them makes the
body pass several times faster on ordinary text."""


class Algorithm(enum.StrEnum):
    """DKIM `a=` values this signer produces."""

    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """One key of one domain: the `d=` and `s=` it signs as."""

    domain: str
    selector: str
    key: PrivateKey

    @property
    def algorithm(self) -> Algorithm:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return Algorithm.ED25519_SHA256
        return Algorithm.RSA_SHA256


class DKIMSigningError(ValueError):
    """The message cannot be signed (no header/body separation, no From...)."""


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """Header section (ending with its last CRLF) and body. Messages must use CRLF line ends."""
    index = message.find(b"\r\n\r\n")
    if index < 0:
        if message.endswith(b"\r\n"):
            return message, b""
        raise DKIMSigningError("message has no header section ending in CRLF")
    return message[: index + 2], message[index + 4 :]


def parse_header_fields(header_section: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-cased name, raw field without its final CRLF) in message order, folding kept."""
    fields: list[tuple[bytes, bytes]] = []
    lines = header_section.split(b"\r\n")
    current: list[bytes] = []
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            fields.append(_field(current))
        current = [line]
    if current:
        fields.append(_field(current))
    return fields


def _field(lines: list[bytes]) -> tuple[bytes, bytes]:
    raw = b"\r\n".join(lines)
    name = raw.split(b":", 1)[0].strip().lower()
    return name, raw


def canonicalize_header_relaxed(raw_field: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfold, squeeze whitespace, trim; ends in CRLF."""
    name, _, value = raw_field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip(b" \t").lower() + b":" + value + b"\r\n"


def canonicalize_body_relaxed(body: bytes) -> bytes:
    """RFC 6376 §3.4.4: squeeze whitespace, drop it at line ends, drop trailing empty lines."""
    if b"\t" in body or b"  " in body:
        body = _WSP_TO_SQUEEZE.sub(b" ", body)
    squeezed = body.replace(b" \r\n", b"\r\n").rstrip(b" \r\n")
    return squeezed + b"\r\n" if squeezed else b""


def body_hash(body: bytes) -> str:
    """The `bh=` value: base64 SHA-256 of the relaxed-canonical body."""
    return base64.b64encode(hashlib.sha256(canonicalize_body_relaxed(body)).digest()).decode()


def select_headers(
    fields: Sequence[tuple[bytes, bytes]],
    *,
    wanted: Sequence[str] = DEFAULT_SIGNED_HEADERS,
    oversigned: frozenset[str] = OVERSIGNED_HEADERS,
) -> list[str]:
    """The `h=` list: each wanted header once per occurrence, plus one for oversigned ones."""
    counts: dict[str, int] = {}
    for field_name, _ in fields:
        text = field_name.decode("ascii", "replace")
        counts[text] = counts.get(text, 0) + 1
    names: list[str] = []
    for name in wanted:
        times = counts.get(name, 0) + (1 if name in oversigned else 0)
        names.extend([name] * times)
    return names


def _signed_header_data(fields: Sequence[tuple[bytes, bytes]], names: Sequence[str]) -> bytes:
    """Canonical headers in `h=` order; repeated names take instances from the bottom up."""
    by_name: dict[bytes, list[bytes]] = {}
    for field_name, raw in fields:
        by_name.setdefault(field_name, []).append(raw)
    out: list[bytes] = []
    for name in names:
        instances = by_name.get(name.encode("ascii"))
        if instances:
            out.append(canonicalize_header_relaxed(instances.pop()))
    return b"".join(out)


def _fold_base64(value: str) -> str:
    return "\r\n\t".join(value[i : i + FOLD_WIDTH] for i in range(0, len(value), FOLD_WIDTH))


def _fold_tag_list(names: Sequence[str]) -> str:
    lines: list[str] = []
    line = ""
    for name in names:
        piece = name if not line else ":" + name
        if len(line) + len(piece) > FOLD_WIDTH:
            lines.append(line + ":")
            line = name
        else:
            line += piece
    lines.append(line)
    return "\r\n\t".join(lines)


def _sign_digest_input(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8463 §3: Ed25519 (PureEdDSA) signs the SHA-256 hash of the data, not the data.
        return key.sign(hashlib.sha256(data).digest())
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def sign_message(
    message: bytes,
    keys: Sequence[SigningKey],
    *,
    timestamp: int,
    signed_headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
    oversigned: frozenset[str] = OVERSIGNED_HEADERS,
) -> bytes:
    """The DKIM-Signature header fields (one per key, e.g. RSA and Ed25519 for dual signing) to
    put in front of the message. The body is canonicalized and hashed once for all keys."""
    if not keys:
        raise DKIMSigningError("no signing key")
    header_section, body = split_message(message)
    fields = parse_header_fields(header_section)
    if not any(name == b"from" for name, _ in fields):
        raise DKIMSigningError("message has no From header")
    names = select_headers(fields, wanted=signed_headers, oversigned=oversigned)
    header_data = _signed_header_data(fields, names)
    bh = body_hash(body)
    h_value = _fold_tag_list(names)
    out: list[bytes] = []
    for key in keys:
        prefix = (
            f"DKIM-Signature: v=1; a={key.algorithm.value}; c=relaxed/relaxed;\r\n"
            f"\td={key.domain}; s={key.selector}; t={timestamp};\r\n"
            f"\th={h_value};\r\n"
            f"\tbh={bh};\r\n"
            "\tb="
        ).encode("ascii")
        # The signature covers the DKIM-Signature header itself with an empty b= and no CRLF.
        data = header_data + canonicalize_header_relaxed(prefix)[:-2]
        signature = base64.b64encode(_sign_digest_input(key.key, data)).decode("ascii")
        out.append(prefix + _fold_base64(signature).encode("ascii") + b"\r\n")
    return b"".join(out)


def public_key_record(key: PrivateKey) -> str:
    """The TXT record value (`v=DKIM1; k=...; p=...`) that publishes the key's public half."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = key.public_key().public_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
