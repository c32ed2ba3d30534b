"""DSN and ARF samples built by the sandbox parse like the real thing with the standard library
(what the sender's inbound report parser will be tested against)."""

from __future__ import annotations

import email
import email.message
from typing import Any

import pytest
from mailfleet_sandbox import reports

ORIGINAL = (
    b"Return-Path: <bounce+123@example.test>\r\n"
    b"From: News <news@mail.example.test>\r\n"
    b"To: alice@gmail.test\r\n"
    b"Subject: Spring offers\r\n"
    b"Message-ID: <abc@example.test>\r\n"
    b"\r\n"
    b"Body line\r\n"
)


def parts_of(raw: bytes) -> tuple[email.message.Message, list[Any]]:
    """The report and its parts (Any: the email package types payloads loosely)."""
    message = email.message_from_bytes(raw)
    payload: Any = message.get_payload()
    assert isinstance(payload, list)
    return message, payload


def test_dsn_for_an_unknown_user_is_a_failed_delivery_status_report() -> None:
    raw = reports.build_dsn(ORIGINAL, "ghost@gmail.test", remote_mta="gmail-smtp-in.l.google.test")
    message, parts = parts_of(raw)
    assert message["To"] == "bounce+123@example.test"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    per_message, per_recipient = parts[1].get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.sandbox.test"
    assert per_recipient["Final-Recipient"] == "rfc822; ghost@gmail.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 user unknown"
    assert "Message-ID: <abc@example.test>" in parts[2].get_payload()
    assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize(("status", "action"), [("4.2.2", "delayed"), ("2.0.0", "delivered")])
def test_dsn_action_follows_the_status_class(status: str, action: str) -> None:
    _, parts = parts_of(reports.build_dsn(ORIGINAL, "a@gmail.test", status=status))
    assert parts[1].get_payload()[1]["Action"] == action


def test_arf_report_carries_the_feedback_fields_and_the_full_original_when_asked() -> None:
    raw = reports.build_arf(
        ORIGINAL,
        source_ip="127.0.0.7",
        mail_from="bounce+123@example.test",
        rcpt_to="alice@gmail.test",
        headers_only=False,
    )
    message, parts = parts_of(raw)
    assert message.get_param("report-type") == "feedback-report"
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/feedback-report",
        "message/rfc822",
    ]
    feedback = email.message_from_string(parts[1].get_payload()[0].as_string())
    assert feedback["Feedback-Type"] == "abuse"
    assert feedback["Version"] == "1"
    assert feedback["Original-Mail-From"] == "<bounce+123@example.test>"
    assert feedback["Original-Rcpt-To"] == "<alice@gmail.test>"
    assert feedback["Source-IP"] == "127.0.0.7"
    assert feedback["Reported-Domain"] == "mail.example.test"
    assert feedback["Arrival-Date"]
    embedded = parts[2].get_payload()[0]
    assert embedded["Subject"] == "Spring offers"
    assert embedded.get_payload() == "Body line\r\n"


def test_header_value_unfolds_continuation_lines() -> None:
    folded = b"Subject: a long\r\n subject line\r\nFrom: x@example.test\r\n\r\nbody"
    assert reports.header_value(folded, "subject") == "a long subject line"
    assert reports.header_value(folded, "To") is None
