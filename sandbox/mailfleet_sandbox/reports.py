"""Real-world-shaped delivery reports, built as bytes: DSNs (RFC 3464) and ARF complaint
reports (RFC 5965). No I/O.

The provider simulators send `build_arf` reports back to the pool's feedback address; tests of
the sender's inbound report parser use both builders for samples shaped like what Gmail,
Outlook or Yahoo actually send (multipart/report, a human-readable part, the machine-readable
part, then the original message or its headers). Built by hand rather than with the email
package's generator so the bytes are exactly the CRLF, 7-bit layout the RFCs show.
"""

from __future__ import annotations

import email.utils
import hashlib
import time

CRLF = "\r\n"


def split_original(original: bytes) -> tuple[bytes, bytes]:
    """(header block without the blank line, body) of an RFC 5322 message, CRLF or LF."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = original.find(separator)
        if index >= 0:
            return original[:index], original[index + len(separator) :]
    return original, b""


def header_value(original: bytes, name: str) -> str | None:
    """First value of header `name` in the original message (unfolded), or None."""
    headers, _body = split_original(original)
    current: list[str] = []
    found: list[str] = []
    for raw_line in headers.decode("utf-8", errors="replace").splitlines():
        if raw_line[:1] in (" ", "\t") and current:
            current.append(raw_line.strip())
            continue
        if current:
            found.append(" ".join(current))
        current = [raw_line]
    if current:
        found.append(" ".join(current))
    prefix = name.lower() + ":"
    for line in found:
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip()
    return None


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _boundary(seed: bytes) -> str:
    return "=_report_" + hashlib.sha1(seed).hexdigest()[:24]


def _original_part(original: bytes, headers_only: bool) -> bytes:
    """The third MIME part of a DSN or ARF: the original's headers, or the whole message."""
    headers, body = split_original(original)
    if headers_only:
        return f"Content-Type: text/rfc822-headers{CRLF}{CRLF}".encode() + _crlf(headers) + b"\r\n"
    return (f"Content-Type: message/rfc822{CRLF}{CRLF}".encode() + _crlf(headers) + b"\r\n\r\n"
            + _crlf(body))


def _envelope(
    *, from_addr: str, to_addr: str, subject: str, report_type: str, boundary: str, when: float
) -> str:
    domain = from_addr.rpartition("@")[2] or "sandbox.test"
    return CRLF.join(
        [
            f"From: {from_addr}",
            f"To: {to_addr}",
            f"Subject: {subject}",
            f"Date: {email.utils.formatdate(when)}",
            f"Message-ID: {email.utils.make_msgid(domain=domain)}",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type={report_type}; boundary="{boundary}"',
            "",
            "This is a multi-part message in MIME format.",
            "",
        ]
    )


def build_dsn(
    original: bytes,
    rcpt: str,
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 user unknown",
    *,
    reporting_mta: str = "mx.sandbox.test",
    remote_mta: str | None = None,
    from_addr: str = "MAILER-DAEMON@mx.sandbox.test",
    to_addr: str | None = None,
    arrival: float | None = None,
    headers_only: bool = True,
) -> bytes:
    """A delivery status notification for one recipient (RFC 3464 multipart/report).

    `status` 5.x.x gives Action: failed, 4.x.x Action: delayed, 2.x.x Action: delivered.
    `to_addr` defaults to the original's Return-Path/From, as a bounce is sent to the envelope
    sender. With `headers_only` the third part is text/rfc822-headers, else message/rfc822.
    """
    when = arrival if arrival is not None else time.time()
    action = {"2": "delivered", "4": "delayed"}.get(status[:1], "failed")
    recipient = to_addr or (
        (header_value(original, "Return-Path") or header_value(original, "From") or "")
        .strip("<>")
        .strip()
        or "postmaster@sandbox.test"
    )
    boundary = _boundary(original + rcpt.encode() + status.encode())
    subject = (
        "Delivery Status Notification (Failure)"
        if action == "failed"
        else f"Delivery Status Notification ({action.capitalize()})"
    )
    human = (
        f"Your message to <{rcpt}> could not be delivered.{CRLF}{CRLF}"
        f"The remote server answered: {diagnostic.partition(';')[2].strip() or diagnostic}{CRLF}"
        if action == "failed"
        else f"Delivery to <{rcpt}> is {action}: {diagnostic}{CRLF}"
    )
    per_message = [f"Reporting-MTA: dns; {reporting_mta}"]
    original_id = header_value(original, "Message-ID")
    if original_id:
        per_message.append(f"X-Original-Message-ID: {original_id}")
    per_message.append(f"Arrival-Date: {email.utils.formatdate(when)}")
    per_recipient = [
        f"Final-Recipient: rfc822; {rcpt}",
        f"Original-Recipient: rfc822; {rcpt}",
        f"Action: {action}",
        f"Status: {status}",
    ]
    if remote_mta:
        per_recipient.append(f"Remote-MTA: dns; {remote_mta}")
    per_recipient.append(f"Diagnostic-Code: {diagnostic}")
    per_recipient.append(f"Last-Attempt-Date: {email.utils.formatdate(when)}")
    third = _original_part(original, headers_only)
    parts = [
        _envelope(
            from_addr=from_addr,
            to_addr=recipient,
            subject=subject,
            report_type="delivery-status",
            boundary=boundary,
            when=when,
        ).encode(),
        f"--{boundary}{CRLF}Content-Type: text/plain; charset=us-ascii{CRLF}{CRLF}".encode(),
        human.encode(),
        f"{CRLF}--{boundary}{CRLF}Content-Type: message/delivery-status{CRLF}{CRLF}".encode(),
        (CRLF.join(per_message) + CRLF + CRLF + CRLF.join(per_recipient) + CRLF).encode(),
        f"{CRLF}--{boundary}{CRLF}".encode(),
        third,
        f"{CRLF}--{boundary}--{CRLF}".encode(),
    ]
    return b"".join(parts)


def build_arf(
    original: bytes,
    *,
    source_ip: str,
    mail_from: str,
    rcpt_to: str,
    feedback_type: str = "abuse",
    user_agent: str = "mailfleet-sandbox-fbl/1.0",
    reporting_mta: str = "fbl.sandbox.test",
    from_addr: str = "fbl@sandbox.test",
    to_addr: str = "abuse@sandbox.test",
    arrival: float | None = None,
    headers_only: bool = True,
) -> bytes:
    """An ARF feedback report (RFC 5965) about `original`, as a mailbox provider's FBL sends it.

    The third part is text/rfc822-headers (what most FBLs send, they redact bodies) or the full
    message/rfc822 when `headers_only` is False. Reported-Domain is taken from the From: header.
    """
    when = arrival if arrival is not None else time.time()
    boundary = _boundary(original + rcpt_to.encode() + feedback_type.encode())
    from_header = header_value(original, "From") or ""
    reported_domain = email.utils.parseaddr(from_header)[1].rpartition("@")[2]
    fields = [
        f"Feedback-Type: {feedback_type}",
        f"User-Agent: {user_agent}",
        "Version: 1",
        f"Original-Mail-From: <{mail_from}>",
        f"Original-Rcpt-To: <{rcpt_to}>",
        f"Arrival-Date: {email.utils.formatdate(when)}",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Source-IP: {source_ip}",
    ]
    if reported_domain:
        fields.append(f"Reported-Domain: {reported_domain}")
    third = _original_part(original, headers_only)
    human = (
        f"This is an email abuse report for an email message received from IP {source_ip} "
        f"on {email.utils.formatdate(when)}.{CRLF}"
    )
    parts = [
        _envelope(
            from_addr=from_addr,
            to_addr=to_addr,
            subject=f"FW: {header_value(original, 'Subject') or 'complaint'}",
            report_type="feedback-report",
            boundary=boundary,
            when=when,
        ).encode(),
        f"--{boundary}{CRLF}Content-Type: text/plain; charset=us-ascii{CRLF}{CRLF}".encode(),
        human.encode(),
        f"{CRLF}--{boundary}{CRLF}Content-Type: message/feedback-report{CRLF}{CRLF}".encode(),
        (CRLF.join(fields) + CRLF).encode(),
        f"{CRLF}--{boundary}{CRLF}".encode(),
        third,
        f"{CRLF}--{boundary}--{CRLF}".encode(),
    ]
    return b"".join(parts)
