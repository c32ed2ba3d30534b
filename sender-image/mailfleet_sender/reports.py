"""Delivery status notifications (RFC 3464) and complaint reports (RFC 5965, ARF), and the
marks we put on outgoing mail to match them back. Pure (no I/O): bytes in, typed reports out.

Matching a report back to a recipient. Reports come back to the pool's feedback address,
so any pod may receive a report about mail another pod sent, possibly days later, after that
pod's spool forgot the message or the pod itself is gone. So the marks are self-contained:

- The trace header (`X-Mailfleet-Trace`) carries the spool message id, the recipient address,
  the class and the source IP, sealed with AES-GCM under a pool-wide key. Sealed, not only
  signed: ARF senders (Yahoo, AOL, Microsoft) redact the recipient from the returned message
  for privacy, and an address in clear in a header would defeat that; and the authentication
  tag means a forged or edited report cannot name an address we never mailed, so nobody can
  suppress arbitrary addresses by mailing us fake reports.
- The VERP return path (`b-<message id>-<tag>@<bounce domain>`) is what makes non-standard
  bounces (no returned headers) attributable. RFC 5321 caps a local part at 64 octets, too short
  for a sealed address, so it carries the message id and an HMAC tag binding the recipient;
  `VerpTag.matches` checks a candidate recipient (the DSN's Final-Recipient, or the spool's).
  The encoding is unambiguous: the id alphabet excludes `-`, the tag is fixed-length base32.

Parsing is strict where it matters (the report type, the per-recipient `Action` and `Status`,
the feedback type) and lenient elsewhere (unknown fields, missing optional fields, header
parts sent as text), because real reports are only roughly conformant. Anything unusable
raises `ReportError` with a short machine `reason` for logs and metrics.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email
import email.message
import email.parser
import email.policy
import hashlib
import hmac
import os
import quopri
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailfleet_sender import report_addresses

__all__ = [
    "MAX_REPORT_BYTES",
    "MAX_REPORT_PARTS",
    "TRACE_HEADER",
    "DeliveryStatusReport",
    "FeedbackReport",
    "ForgedMark",
    "RecipientStatus",
    "ReportError",
    "Trace",
    "VerpTag",
    "decode_trace",
    "decode_verp",
    "encode_trace",
    "encode_verp_return_path",
    "parse_arf",
    "parse_dsn",
    "parse_report",
]

TRACE_HEADER = "X-Mailfleet-Trace"
"""Header added to every outgoing message (one per recipient copy) and read back from reports."""

MAX_REPORT_BYTES = 10 * 1024 * 1024
"""The default size cap (`deliverability.reports.maxBytes`): a report returns at most the
original message."""

MAX_REPORT_PARTS = 64
"""MIME parts (all levels, the returned message's included) a report may have."""

_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})")
_MESSAGE_ID_CHARS = re.compile(r"^[A-Za-z0-9_.]{1,40}$")
_VERP_TAG_LEN = 13  # base32 chars: 64 bits of HMAC, no padding
_TRACE_VERSION = "t1"


class ReportError(ValueError):
    """A report (or a mark) that cannot be used; `reason` is a short snake_case label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ForgedMark(ReportError):
    """A trace header or VERP address that does not verify under our key."""


# --------------------------------------------------------------------------------- keys


def _subkey(secret: bytes, label: str) -> bytes:
    """One 256-bit key per use, from the single pool secret (so one Secret serves all marks)."""
    if len(secret) < 16:
        raise ValueError("the feedback secret must be at least 16 bytes")
    return hmac.new(secret, f"mailfleet/{label}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical_rcpt(address: str) -> str:
    """Case-insensitive form used in MACs: reports often change the case of the address."""
    return address.strip().strip("<>").lower()


# ------------------------------------------------------------------------------- trace


@dataclasses.dataclass(frozen=True)
class Trace:
    """What the trace header says about the message a report is about."""

    message_id: str
    recipient: str
    klass: str = ""
    source_ip: str = ""


def encode_trace(trace: Trace, key: bytes, *, nonce: bytes | None = None) -> str:
    """Seal a trace into a header value (`t1.<base64url>`); `nonce` only for reproducible tests."""
    fields = (trace.message_id, trace.recipient, trace.klass, trace.source_ip)
    if any("\x00" in field for field in fields):
        raise ValueError("trace fields cannot contain NUL")
    nonce = nonce if nonce is not None else os.urandom(12)
    sealed = AESGCM(_subkey(key, "trace")).encrypt(
        nonce, "\x00".join(fields).encode("utf-8"), _TRACE_VERSION.encode()
    )
    return f"{_TRACE_VERSION}.{_b64(nonce + sealed)}"


def decode_trace(value: str, key: bytes | Sequence[bytes]) -> Trace:
    """Open a trace header value; `key` may be a list (current first, then retired keys)."""
    text = "".join(value.split())
    version, _, body = text.partition(".")
    if version != _TRACE_VERSION or not body:
        raise ForgedMark("bad_trace", f"not a {_TRACE_VERSION} trace value")
    try:
        raw = _unb64(body)
    except (binascii.Error, ValueError) as exc:
        raise ForgedMark("bad_trace", "trace value is not base64url") from exc
    if len(raw) < 12 + 16:
        raise ForgedMark("bad_trace", "trace value too short")
    keys = [key] if isinstance(key, bytes) else list(key)
    for candidate in keys:
        try:
            plain = AESGCM(_subkey(candidate, "trace")).decrypt(
                raw[:12], raw[12:], _TRACE_VERSION.encode()
            )
        except InvalidTag:
            continue
        parts = plain.decode("utf-8").split("\x00")
        if len(parts) != 4:
            raise ForgedMark("bad_trace", "trace payload has the wrong shape")
        return Trace(message_id=parts[0], recipient=parts[1], klass=parts[2], source_ip=parts[3])
    raise ForgedMark("forged_trace", "trace value does not verify under any key")


# -------------------------------------------------------------------------------- VERP


@dataclasses.dataclass(frozen=True)
class VerpTag:
    """A decoded VERP return path: the message id and a tag binding the recipient."""

    message_id: str
    tag: str

    def matches(self, recipient: str, key: bytes) -> bool:
        """Whether `recipient` is the address this return path was minted for."""
        return hmac.compare_digest(self.tag, _verp_tag(self.message_id, recipient, key))


def _verp_tag(message_id: str, recipient: str, key: bytes) -> str:
    mac = hmac.new(
        _subkey(key, "verp"),
        f"{message_id}\x00{_canonical_rcpt(recipient)}".encode(),
        hashlib.sha256,
    ).digest()
    return base64.b32encode(mac[:8]).decode("ascii").rstrip("=").lower()


def encode_verp_return_path(
    bounce_domain: str, message_id: str, rcpt: str, *, key: bytes, prefix: str = "b"
) -> str:
    """The envelope sender for one recipient copy: `b-<message id>-<tag>@<bounce domain>`."""
    if not _MESSAGE_ID_CHARS.match(message_id):
        raise ValueError(f"message id {message_id!r} must be 1-40 of [A-Za-z0-9_.]")
    if not re.fullmatch(r"[a-z0-9]{1,8}", prefix):
        raise ValueError("the VERP prefix must be 1-8 lowercase letters or digits")
    local = f"{prefix}-{message_id}-{_verp_tag(message_id, rcpt, key)}"
    return f"{local}@{bounce_domain.lower()}"


def decode_verp(address: str, *, prefix: str = "b") -> VerpTag:
    """Split a VERP address back into message id and tag; ReportError if it is not ours."""
    local, at, _domain = address.strip().strip("<>").rpartition("@")
    if not at:
        raise ReportError("bad_verp", f"{address!r} is not an address")
    parts = local.split("-")
    if (
        len(parts) != 3
        or parts[0].lower() != prefix
        or not _MESSAGE_ID_CHARS.match(parts[1])
        or len(parts[2]) != _VERP_TAG_LEN
    ):
        raise ReportError("bad_verp", f"{address!r} is not a {prefix}- VERP return path")
    return VerpTag(message_id=parts[1], tag=parts[2].lower())


# ----------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a DSN."""

    final_recipient: str
    action: str
    status: str
    original_recipient: str | None = None
    # RFC 3464 address types, lowercase: "rfc822", "utf-8" (RFC 6533), "unknown", any atom.
    final_recipient_type: str = "rfc822"
    original_recipient_type: str | None = None
    diagnostic_type: str | None = None
    diagnostic_code: int | None = None
    diagnostic_text: str | None = None
    remote_mta: str | None = None


@dataclasses.dataclass(frozen=True)
class DeliveryStatusReport:
    """A parsed DSN with what we need to match it: trace, Message-ID, envelope id."""

    reporting_mta: str | None
    original_envelope_id: str | None
    recipients: tuple[RecipientStatus, ...]
    original_message_id: str | None
    trace: str | None

    @property
    def failed(self) -> tuple[RecipientStatus, ...]:
        """Recipients whose delivery failed for good (the ones that may bounce)."""
        return tuple(r for r in self.recipients if r.action == "failed")


@dataclasses.dataclass(frozen=True)
class FeedbackReport:
    """A parsed ARF report (abuse complaint, usually from a feedback loop)."""

    feedback_type: str
    user_agent: str | None
    version: str | None
    original_mail_from: str | None
    original_rcpt_to: tuple[str, ...]
    source_ip: str | None
    reported_domain: str | None
    arrival_date: str | None
    original_message_id: str | None
    trace: str | None
    # Microsoft JMRP keeps the recipient in this header of the returned message.
    original_recipient_hint: str | None


def _parse(raw: bytes, max_bytes: int, max_parts: int) -> email.message.Message:
    """The parsed report, refused before parsing when too big or with too many boundary lines
    (a part needs one; the scan runs at C speed, the parser does not), and after parsing when
    it has more than `max_parts` parts."""
    if not isinstance(raw, bytes | bytearray):
        raise ReportError("not_bytes", "a report is raw bytes")
    if len(raw) > max_bytes:
        raise ReportError("oversized", f"report is {len(raw)} bytes, limit {max_bytes}")
    if not raw.strip():
        raise ReportError("empty", "the report is empty")
    if raw.count(b"\n--") + raw.startswith(b"--") > 16 * max_parts + 16:
        raise ReportError("too_many_parts", f"more boundary lines than {max_parts} parts need")
    msg = email.message_from_bytes(bytes(raw), policy=email.policy.compat32)
    parts = sum(1 for _ in msg.walk())
    if parts > max_parts:
        raise ReportError("too_many_parts", f"{parts} MIME parts, limit {max_parts}")
    return msg


def _report_parts(msg: email.message.Message, report_type: str) -> list[email.message.Message]:
    if msg.get_content_type() != "multipart/report":
        raise ReportError(
            "not_multipart_report", f"content type is {msg.get_content_type()}"
        )
    declared = (msg.get_param("report-type") or "")
    if not isinstance(declared, str) or declared.lower() != report_type:
        raise ReportError("wrong_report_type", f"report-type is {declared!r}")
    payload = msg.get_payload()
    if not isinstance(payload, list) or not payload:
        raise ReportError("no_parts", "multipart/report without parts")
    return [part for part in payload if isinstance(part, email.message.Message)]


def _field_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part.

    The email package parses these into sub-messages; when a sender base64-encodes the part
    (some do) or the parser could not split it, re-read the text ourselves.
    """
    payload = part.get_payload()
    cte = (part.get("Content-Transfer-Encoding") or "").strip().lower()
    if isinstance(payload, list) and cte not in ("base64", "quoted-printable"):
        return [block for block in payload if isinstance(block, email.message.Message)]
    if isinstance(payload, list):
        text = "\n\n".join(
            block.as_string() for block in payload if isinstance(block, email.message.Message)
        )
        raw = text.encode("utf-8", "surrogateescape")
        try:
            decoded = (
                base64.b64decode(b"".join(raw.split()), validate=False)
                if cte == "base64"
                else quopri.decodestring(raw)
            )
        except (binascii.Error, ValueError) as exc:
            raise ReportError("bad_encoding", f"undecodable {cte} report part") from exc
    else:
        decoded_payload = part.get_payload(decode=True)
        decoded = decoded_payload if isinstance(decoded_payload, bytes) else b""
    text = decoded.decode("utf-8", "replace").replace("\r\n", "\n")
    blocks = [chunk for chunk in re.split(r"\n\s*\n", text) if chunk.strip()]
    parser = email.parser.HeaderParser(policy=email.policy.compat32)
    return [parser.parsestr(chunk + "\n") for chunk in blocks]


def _returned_headers(parts: Sequence[email.message.Message]) -> email.message.Message | None:
    """The returned message (or its headers), wherever the report put it."""
    for part in parts:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                first = payload[0]
                return first if isinstance(first, email.message.Message) else None
            if isinstance(payload, str):
                return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(payload)
        if ctype in ("text/rfc822-headers", "text/global-headers"):
            body = part.get_payload(decode=True)
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
            return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
    return None


def _value(block: email.message.Message, name: str) -> str | None:
    value = block.get(name)
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _typed_address(value: str | None) -> str | None:
    """`rfc822; someone@example.com` -> `someone@example.com` (the type is optional in the wild)."""
    if value is None:
        return None
    kind, sep, rest = value.partition(";")
    address = (rest if sep else kind).strip().strip("<>").strip()
    return address or None


def _returned_fields(headers: email.message.Message | None) -> tuple[str | None, str | None]:
    if headers is None:
        return None, None
    trace = _value(headers, TRACE_HEADER)
    message_id = _value(headers, "Message-ID")
    return (trace.replace(" ", "") if trace else None), message_id


def parse_dsn(
    raw: bytes, *, max_bytes: int = MAX_REPORT_BYTES, max_parts: int = MAX_REPORT_PARTS
) -> DeliveryStatusReport:
    """Parse an RFC 3464 DSN; ReportError when it is not one or has no usable recipient."""
    return _dsn(_parse(raw, max_bytes, max_parts))


def parse_report(
    raw: bytes, *, max_bytes: int = MAX_REPORT_BYTES, max_parts: int = MAX_REPORT_PARTS
) -> DeliveryStatusReport | FeedbackReport:
    """A DSN or an ARF report, whichever `report-type` says, parsed once."""
    msg = _parse(raw, max_bytes, max_parts)
    declared = msg.get_param("report-type") if msg.get_content_type() == "multipart/report" else ""
    if isinstance(declared, str) and declared.lower() == "feedback-report":
        return _arf(msg)
    return _dsn(msg)


def _dsn(msg: email.message.Message) -> DeliveryStatusReport:
    parts = _report_parts(msg, "delivery-status")
    status_part = next(
        (p for p in parts if p.get_content_type() in ("message/delivery-status",
                                                      "message/global-delivery-status")),
        None,
    )
    if status_part is None:
        raise ReportError("missing_status_part", "no message/delivery-status part")
    blocks = _field_blocks(status_part)
    if len(blocks) < 2:
        raise ReportError("no_recipients", "the delivery-status part has no recipient block")
    per_message, per_recipient = blocks[0], blocks[1:]
    recipients: list[RecipientStatus] = []
    for block in per_recipient:
        typed = report_addresses.typed_recipient(_value(block, "Final-Recipient"))
        action = (_value(block, "Action") or "").lower()
        status = _value(block, "Status") or ""
        if typed is None or (typed[0] in ("rfc822", "utf-8") and "@" not in typed[1]):
            raise ReportError("bad_recipient", "a recipient block lacks a Final-Recipient")
        final_type, final = typed
        original = report_addresses.typed_recipient(_value(block, "Original-Recipient"))
        if action not in _ACTIONS:
            raise ReportError("bad_action", f"Action {action!r} for {final}")
        match = _STATUS.match(status)
        if match is None:
            raise ReportError("bad_status", f"Status {status!r} for {final}")
        diag_type, diag_code, diag_text = None, None, None
        diagnostic = _value(block, "Diagnostic-Code")
        if diagnostic is not None:
            kind, sep, rest = diagnostic.partition(";")
            diag_type = kind.strip().lower() if sep else None
            diag_text = (rest if sep else kind).strip() or None
            code_match = re.match(r"^(\d{3})(?:[ -]|$)", diag_text or "")
            diag_code = int(code_match.group(1)) if code_match else None
        recipients.append(
            RecipientStatus(
                final_recipient=final,
                action=action,
                status=match.group(0),
                original_recipient=original[1] if original else None,
                final_recipient_type=final_type,
                original_recipient_type=original[0] if original else None,
                diagnostic_type=diag_type,
                diagnostic_code=diag_code,
                diagnostic_text=diag_text,
                remote_mta=_typed_address(_value(block, "Remote-MTA")),
            )
        )
    trace, message_id = _returned_fields(_returned_headers(parts))
    return DeliveryStatusReport(
        reporting_mta=_typed_address(_value(per_message, "Reporting-MTA")),
        original_envelope_id=_value(per_message, "Original-Envelope-Id"),
        recipients=tuple(recipients),
        original_message_id=message_id,
        trace=trace,
    )


def parse_arf(
    raw: bytes, *, max_bytes: int = MAX_REPORT_BYTES, max_parts: int = MAX_REPORT_PARTS
) -> FeedbackReport:
    """Parse an RFC 5965 feedback report; ReportError when it is not one."""
    return _arf(_parse(raw, max_bytes, max_parts))


def _arf(msg: email.message.Message) -> FeedbackReport:
    parts = _report_parts(msg, "feedback-report")
    feedback_part = next(
        (p for p in parts if p.get_content_type() == "message/feedback-report"), None
    )
    if feedback_part is None:
        raise ReportError("missing_feedback_part", "no message/feedback-report part")
    blocks = _field_blocks(feedback_part)
    if not blocks:
        raise ReportError("missing_feedback_fields", "the feedback-report part is empty")
    fields = blocks[0]
    feedback_type = (_value(fields, "Feedback-Type") or "").lower()
    if not feedback_type:
        raise ReportError("missing_feedback_type", "no Feedback-Type field")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", feedback_type):
        raise ReportError("bad_feedback_type", f"Feedback-Type {feedback_type!r}")
    rcpt_to = tuple(
        address
        for value in fields.get_all("Original-Rcpt-To") or []
        if (address := _typed_address(" ".join(str(value).split()))) is not None
    )
    returned = _returned_headers(parts)
    trace, message_id = _returned_fields(returned)
    hint = _value(returned, "X-HmXmrOriginalRecipient") if returned is not None else None
    return FeedbackReport(
        feedback_type=feedback_type,
        user_agent=_value(fields, "User-Agent"),
        version=_value(fields, "Version"),
        original_mail_from=_typed_address(_value(fields, "Original-Mail-From")),
        original_rcpt_to=rcpt_to,
        source_ip=_value(fields, "Source-IP"),
        reported_domain=_value(fields, "Reported-Domain"),
        arrival_date=_value(fields, "Arrival-Date") or _value(fields, "Received-Date"),
        original_message_id=message_id,
        trace=trace,
        original_recipient_hint=_typed_address(hint),
    )
