"""What a submitted message must look like before the spool takes it. Pure: no I/O.

Both submission paths (SMTP DATA and HTTP raw/JSON) end here, so they accept and refuse exactly
the same messages with the same enhanced status codes; the protocol layers only render the
verdict (SMTP reply or HTTP status).

Refused: bare LF or bare CR anywhere (the 2023 SMTP-smuggling advisories: a receiver that
honours `<LF>.<LF>` as end-of-data lets a sender smuggle a second message past our checks),
8-bit bytes in headers (we do not offer SMTPUTF8), header lines over 998 octets or a header
section over the limit, a missing or ambiguous From (DKIM and DMARC are keyed on it), and
messages over the size limit. Added when missing, as Postfix does: Message-ID and Date.
Removed: the `X-Mailfleet-*` control headers, which carry the class, engagement tier and tags
from an SMTP client and must not leak to recipients.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import uuid
from collections.abc import Mapping, Sequence

CLASS_HEADER = "x-mailfleet-class"
TIER_HEADER = "x-mailfleet-tier"
TAGS_HEADER = "x-mailfleet-tags"
CONTROL_HEADER_PREFIX = b"x-mailfleet-"
MAX_LINE_OCTETS = 998
"""RFC 5322 §2.1.1: a line is at most 998 characters before its CRLF."""

_HEADER_NAME = re.compile(rb"^[!-9;-~]+$")
_ADDRESS = re.compile(r"^[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-message limits; every one is a documented setting of `SubmissionConfig`."""

    max_message_bytes: int = 25 * 1024 * 1024
    max_header_bytes: int = 100 * 1024
    max_recipients: int = 1000


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A typed refusal: the SMTP code, RFC 3463 enhanced code and text, and its HTTP status."""

    code: int
    enhanced: str
    text: str
    http_status: int = 400

    def smtp_reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A message fit for the spool: final bytes plus what the scheduler needs to know."""

    data: bytes
    from_domain: str
    message_id: str
    class_name: str | None
    tier: str | None
    tags_header: tuple[str, ...] = ()
    """Values of the `X-Mailfleet-Tags` headers (removed from `data`; `tags` reads them)."""


Verdict = Accepted | Rejection

TOO_BIG = Rejection(552, "5.3.4", "Message size exceeds fixed limit", 413)
BARE_NEWLINE = Rejection(554, "5.6.0", "Bare <LF> or <CR> in message; use CRLF line endings")
EIGHT_BIT_HEADER = Rejection(554, "5.6.7", "8-bit data in headers needs SMTPUTF8 (not offered)")
HEADER_TOO_BIG = Rejection(552, "5.3.4", "Message header section too large", 413)
LINE_TOO_LONG = Rejection(554, "5.6.0", "Header line longer than 998 octets")
BAD_HEADER = Rejection(554, "5.6.0", "Malformed header field")
NO_FROM = Rejection(554, "5.6.0", "Message has no From header")
MANY_FROM = Rejection(554, "5.6.0", "Message must have exactly one From header with one address")
NO_BODY_SEPARATOR = Rejection(554, "5.6.0", "Message has no empty line between headers and body")


def has_bare_newline(data: bytes) -> bool:
    """True when an LF lacks its CR or a CR its LF (counts are C-speed, no per-byte loop)."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


def split_header_section(data: bytes) -> tuple[bytes, bytes] | None:
    """(headers ending in CRLF, body); None when there is no header/body separation."""
    index = data.find(b"\r\n\r\n")
    if index >= 0:
        return data[: index + 2], data[index + 4 :]
    if data.endswith(b"\r\n"):
        return data, b""
    return None


def header_fields(section: bytes) -> list[tuple[str, bytes]] | None:
    """(lower-cased name, raw field bytes incl. continuation lines) or None when malformed."""
    fields: list[tuple[str, bytes]] = []
    for line in section.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return None
            name, raw = fields[-1]
            fields[-1] = (name, raw + b"\r\n" + line)
            continue
        name_bytes, colon, _ = line.partition(b":")
        name_bytes = name_bytes.rstrip(b" \t")
        if not colon or not _HEADER_NAME.match(name_bytes):
            return None
        fields.append((name_bytes.decode("ascii").lower(), line))
    return fields


def header_value(raw: bytes) -> str:
    """The unfolded value of a raw field (ASCII, checked before)."""
    value = raw.partition(b":")[2].replace(b"\r\n", b"")
    return value.decode("ascii").strip()


def check_message(data: bytes, *, limits: Limits, now: float, hostname: str) -> Verdict:
    """Validate a raw RFC 5322 message and return it ready for the spool, or why not."""
    if len(data) > limits.max_message_bytes:
        return TOO_BIG
    if has_bare_newline(data):
        return BARE_NEWLINE
    split = split_header_section(data)
    if split is None:
        return NO_BODY_SEPARATOR
    section, body = split
    if len(section) > limits.max_header_bytes:
        return HEADER_TOO_BIG
    if not section.isascii():
        return EIGHT_BIT_HEADER
    if b"\x00" in section:
        return BAD_HEADER
    if any(len(line) > MAX_LINE_OCTETS for line in section.split(b"\r\n")):
        return LINE_TOO_LONG
    fields = header_fields(section)
    if fields is None:
        return BAD_HEADER
    from_fields = [raw for name, raw in fields if name == "from"]
    if not from_fields:
        return NO_FROM
    if len(from_fields) > 1:
        return MANY_FROM
    addresses = [a for _, a in email.utils.getaddresses([header_value(from_fields[0])]) if a]
    if len(addresses) != 1 or not is_address(addresses[0]):
        return MANY_FROM
    from_domain = addresses[0].rsplit("@", 1)[1].lower()
    class_name = _control_value(fields, CLASS_HEADER)
    tier = _control_value(fields, TIER_HEADER)
    tags_header = tuple(header_value(raw) for name, raw in fields if name == TAGS_HEADER)
    # Control headers and Bcc never leave the pod (Bcc recipients are in the envelope).
    kept = [raw for name, raw in fields if not name.startswith("x-mailfleet-") and name != "bcc"]
    names = {name for name, _ in fields}
    message_id = next((header_value(raw) for name, raw in fields if name == "message-id"), "")
    added: list[bytes] = []
    if not message_id:
        message_id = make_message_id(hostname)
        added.append(f"Message-ID: {message_id}".encode("ascii"))
    if "date" not in names:
        added.append(f"Date: {email.utils.formatdate(now)}".encode("ascii"))
    if body and not body.endswith(b"\r\n"):
        # SMTP adds it on the wire anyway; adding it first means DKIM signs what is sent
        # (verifiers disagree on a last line without CRLF).
        body += b"\r\n"
        data = section + b"\r\n" + body
    if len(kept) != len(fields) or added:
        section = b"".join(line + b"\r\n" for line in [*kept, *added])
        data = section + b"\r\n" + body
    return Accepted(
        data=data,
        from_domain=from_domain,
        message_id=message_id,
        class_name=class_name,
        tier=tier,
        tags_header=tags_header,
    )


def _control_value(fields: Sequence[tuple[str, bytes]], name: str) -> str | None:
    for field_name, raw in fields:
        if field_name == name:
            value = header_value(raw)
            return value or None
    return None


def make_message_id(hostname: str) -> str:
    return f"<{uuid.uuid4().hex}@{hostname}>"


def is_address(address: str) -> bool:
    """A plain `local@domain` envelope address (no source routes, no display names)."""
    return len(address) <= 254 and bool(_ADDRESS.match(address)) and ".." not in address


def normalize_address(address: str) -> str:
    """Lower-case the domain part (local parts are case-sensitive per RFC 5321)."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def is_token(value: str) -> bool:
    """Class and tier names: short identifiers."""
    return bool(_TOKEN.match(value))


def build_message(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    text: str | None,
    html: str | None,
    headers: Mapping[str, str],
    now: float,
    hostname: str,
) -> bytes:
    """An RFC 5322 message from the JSON form (CRLF, MIME as needed, non-ASCII encoded)."""
    from email.message import EmailMessage
    from email.policy import SMTP

    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(now)
    message["Message-ID"] = make_message_id(hostname)
    for name, value in headers.items():
        if name.lower() in {"from", "to", "subject", "date", "message-id"}:
            del message[name]
        message[name] = value
    if text is not None:
        message.set_content(text)
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    if text is None and html is None:
        message.set_content("")
    return message.as_bytes()
