"""Reading what comes back to the feedback port: DSNs (RFC 3464), ARF complaint reports
(RFC 5965) and mailto unsubscribes, matched to the recipient we mailed. Pure (no I/O): bytes
and envelope in, typed events out; `deliverability` acts on them.

Matching trusts only our own marks (see `reports`): the sealed trace header in the returned
headers names recipient, class and source IP; failing that, the VERP return path the report
was sent to (or that an ARF report quotes as Original-Mail-From) names the message and binds
one recipient, which must be one the report lists, and the event has no class and no source IP
(an ARF report's `Source-IP` field is the reporter's word, never used for accounting). A
report with neither, or whose marks do not verify, is refused (`ReportError`), so nobody can
suppress an address by mailing us a report we did not cause.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import enum
import re
from collections.abc import Sequence

from mailfleet_sender import bounces, reports

COMPLAINT_TYPES = frozenset({"abuse", "fraud", "other"})
"""ARF feedback types that count as a complaint (not-spam, virus, auth-failure do not)."""

_UNSUBSCRIBE_HEAD_BYTES = 64 * 1024
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*unsubscribe\s+([A-Za-z0-9_-]{20,})\s*$", re.IGNORECASE)


class Kind(enum.StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"


@dataclasses.dataclass(frozen=True)
class Event:
    """One fact about one recipient we mailed, learnt from a report."""

    kind: Kind
    recipient: str
    category: bounces.Category | None = None
    """For bounces: what the remote reply quoted in the DSN means."""
    reason: str = ""
    class_name: str = ""
    """From the trace header; empty when only the VERP address matched."""
    source_ip: str = ""
    message_ref: str = ""
    status: str = ""
    """For bounces: the DSN's RFC 3463 status (e.g. 5.1.1)."""


@dataclasses.dataclass(frozen=True)
class Reading:
    """What a report said: its type and the events it yields (none for e.g. a delay)."""

    report: str  # "dsn" or "arf"
    events: tuple[Event, ...]
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Marks:
    """The keys and names needed to verify our marks."""

    trace_keys: Sequence[bytes]
    verp_prefix: str = "b"


def read_report(
    raw: bytes,
    envelope_rcpts: Sequence[str],
    marks: Marks,
    *,
    max_bytes: int = reports.MAX_REPORT_BYTES,
    max_parts: int = reports.MAX_REPORT_PARTS,
) -> Reading:
    """Parse a DSN or an ARF report and match it; ReportError when unusable or not ours.

    CPU-bound on big reports and free of shared state: callers run it off the event loop.
    """
    report = reports.parse_report(raw, max_bytes=max_bytes, max_parts=max_parts)
    if isinstance(report, reports.FeedbackReport):
        return _read_arf(report, envelope_rcpts, marks)
    return _read_dsn(report, envelope_rcpts, marks)


def unsubscribe_token(raw: bytes) -> str | None:
    """The token of a mailto unsubscribe (`Subject: unsubscribe <token>`), if it is one.

    Runs on the event loop: only the first `_UNSUBSCRIBE_HEAD_BYTES` are parsed (a mailto
    unsubscribe is a few hundred bytes; a 10 MB header section would stall the loop).
    """
    head = raw[:_UNSUBSCRIBE_HEAD_BYTES].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    message = email.message_from_bytes(head + b"\r\n\r\n", policy=email.policy.compat32)
    subject = " ".join(str(message.get("Subject", "")).split())
    match = _UNSUBSCRIBE_SUBJECT.match(subject)
    return match.group(1) if match else None


def _trace(value: str | None, marks: Marks) -> reports.Trace | None:
    return None if value is None else reports.decode_trace(value, list(marks.trace_keys))


def _verp(addresses: Sequence[str | None], marks: Marks) -> reports.VerpTag | None:
    for address in addresses:
        if not address:
            continue
        try:
            return reports.decode_verp(address, prefix=marks.verp_prefix)
        except reports.ReportError:
            continue
    return None


def _verp_recipient(
    tag: reports.VerpTag, candidates: Sequence[str | None], marks: Marks
) -> str | None:
    for candidate in candidates:
        if candidate and any(tag.matches(candidate, key) for key in marks.trace_keys):
            return candidate
    return None


def _bounce_category(status: reports.RecipientStatus) -> tuple[bounces.Category, str]:
    """Classify the remote reply a DSN quotes; the Status code alone when it quotes none."""
    klass = int(status.status[0])
    code = status.diagnostic_code or (550 if klass == 5 else 450)
    text = status.diagnostic_text or status.status
    if status.status not in text:
        text = f"{status.status} {text}"
    verdict = bounces.classify_reply(code, text)
    if klass == 5 and verdict.category in (bounces.Category.DEFERRED, bounces.Category.THROTTLED):
        # The DSN says the delivery failed for good, whatever the quoted reply looked like.
        return bounces.Category.SOFT_BOUNCE, f"failed DSN quoting a temporary reply: {text}"
    return verdict.category, verdict.reason


def _read_dsn(
    dsn: reports.DeliveryStatusReport, envelope_rcpts: Sequence[str], marks: Marks
) -> Reading:
    failed = dsn.failed
    trace = _trace(dsn.trace, marks)
    tag = None if trace is not None else _verp(envelope_rcpts, marks)
    if trace is None and tag is None:
        raise reports.ReportError(
            "unknown_message", "no trace header or VERP return path of ours in the DSN"
        )
    if not failed:
        return Reading("dsn", (), note="no failed recipient (delayed or delivered)")
    events: list[Event] = []
    if trace is not None:
        # One copy per recipient: the trace names it, whatever the DSN calls it.
        category, reason = _bounce_category(failed[0])
        events.append(
            Event(Kind.BOUNCE, trace.recipient, category, reason, trace.klass, trace.source_ip,
                  trace.message_id, failed[0].status)
        )
        return Reading("dsn", tuple(events))
    assert tag is not None
    for status in failed:
        recipient = _verp_recipient(
            tag, [status.final_recipient, status.original_recipient], marks
        )
        if recipient is None:
            raise reports.ForgedMark(
                "verp_mismatch", "the VERP tag does not match the DSN's recipient"
            )
        category, reason = _bounce_category(status)
        events.append(Event(Kind.BOUNCE, recipient, category, reason, message_ref=tag.message_id,
                            status=status.status))
    return Reading("dsn", tuple(events))


def _read_arf(
    arf: reports.FeedbackReport, envelope_rcpts: Sequence[str], marks: Marks
) -> Reading:
    trace = _trace(arf.trace, marks)
    if trace is not None:
        event = Event(Kind.COMPLAINT, trace.recipient, reason=arf.feedback_type,
                      class_name=trace.klass, source_ip=trace.source_ip,
                      message_ref=trace.message_id)
    else:
        tag = _verp([arf.original_mail_from, *envelope_rcpts], marks)
        if tag is None:
            raise reports.ReportError(
                "unknown_message", "no trace header or VERP return path of ours in the report"
            )
        recipient = _verp_recipient(
            tag, [*arf.original_rcpt_to, arf.original_recipient_hint], marks
        )
        if recipient is None:
            raise reports.ReportError(
                "unknown_recipient", "the report names no recipient matching its VERP tag"
            )
        # The report's Source-IP is whatever the reporter wrote: never used for accounting.
        event = Event(Kind.COMPLAINT, recipient, reason=arf.feedback_type,
                      message_ref=tag.message_id)
    if arf.feedback_type not in COMPLAINT_TYPES:
        return Reading("arf", (), note=f"feedback type {arf.feedback_type} is not a complaint")
    return Reading("arf", (event,))
