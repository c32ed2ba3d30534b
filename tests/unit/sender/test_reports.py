"""DSN and ARF parsing from real-world shapes, and the trace and VERP marks that match them."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailfleet_sender import reports

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
TRACE = reports.Trace(
    message_id="01HF2Z8M3QK", recipient="Someone@Gmail.com", klass="marketing",
    source_ip="203.0.113.7",
)
TRACE_VALUE = reports.encode_trace(TRACE, KEY, nonce=b"\x01" * 12)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


GMAIL_DSN = f"""\
Return-Path: <>
Received: by mail-sor-f69.google.com with SMTP id a1sor123
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
Message-ID: <65a1b2c3.abc@mx.google.com>
Date: Mon, 15 Jan 2024 10:00:01 -0800 (PST)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000d1e2f3"; report-type=delivery-status

--000000000000d1e2f3
Content-Type: multipart/related; boundary="000000000000d1e2f4"

--000000000000d1e2f4
Content-Type: multipart/alternative; boundary="000000000000d1e2f5"

--000000000000d1e2f5
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to someone@gmail.com because the address couldn't be found.

--000000000000d1e2f5--
--000000000000d1e2f4--
--000000000000d1e2f3
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; mta1.example.com
Arrival-Date: Mon, 15 Jan 2024 10:00:00 -0800 (PST)
X-Original-Message-ID: <0001.msg@example.com>

Final-Recipient: rfc822; someone@gmail.com
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.com. (142.250.102.27, the server for the domain
 gmail.com.)
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.
 Please try 550-5.1.1 double-checking the recipient's email address for typos or
 550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser
Last-Attempt-Date: Mon, 15 Jan 2024 10:00:01 -0800 (PST)

--000000000000d1e2f3
Content-Type: text/rfc822-headers

Return-Path: <b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com>
From: News <news@example.com>
To: someone@gmail.com
Subject: Our January news
Message-ID: <0001.msg@example.com>
{reports.TRACE_HEADER}: {TRACE_VALUE}

--000000000000d1e2f3--
"""

OUTLOOK_DSN = f"""\
From: postmaster@outlook.com
To: <b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com>
Date: Mon, 15 Jan 2024 18:00:05 +0000
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="b6d3a1e0-4f0a-4c55-9a7e-58f1d2a2f0b1"
X-MS-Exchange-Message-Is-Ndr:
Content-Language: en-US
Message-ID: <a2c1f3a0-9f77-4a47-8f0a-1c5e2a7e8c0b@AM0PR01MB1234.eurprd01.prod.exchangelabs.com>
In-Reply-To: <0002.msg@example.com>
Subject: Undeliverable: Your invoice
MIME-Version: 1.0

--b6d3a1e0-4f0a-4c55-9a7e-58f1d2a2f0b1
Content-Type: multipart/alternative;
\tboundary="38c3b4a1-2b1d-4e8b-a0a5-2f7b3cf7e0e2"

--38c3b4a1-2b1d-4e8b-a0a5-2f7b3cf7e0e2
Content-Type: text/plain; charset="us-ascii"

Your message to nobody@outlook.com couldn't be delivered.

--38c3b4a1-2b1d-4e8b-a0a5-2f7b3cf7e0e2--

--b6d3a1e0-4f0a-4c55-9a7e-58f1d2a2f0b1
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com
Received-From-MTA: dns;mta1.example.com
Arrival-Date: Mon, 15 Jan 2024 18:00:04 +0000

Final-Recipient: rfc822;nobody@outlook.com
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP
 address lookup
X-Display-Name: nobody@outlook.com

--b6d3a1e0-4f0a-4c55-9a7e-58f1d2a2f0b1
Content-Type: message/rfc822

Received: from mta1.example.com (203.0.113.7) by AM0PR01MB1234.mail.protection.outlook.com
From: Billing <billing@example.com>
To: <nobody@outlook.com>
Subject: Your invoice
Message-ID: <0002.msg@example.com>
{reports.TRACE_HEADER}: {TRACE_VALUE[:40]}
 {TRACE_VALUE[40:]}
Content-Type: text/plain

Your invoice is attached.

--b6d3a1e0-4f0a-4c55-9a7e-58f1d2a2f0b1--
"""

YAHOO_DSN = """\
From: MAILER-DAEMON@yahoo.com
To: b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com
Subject: Failure Notice
MIME-Version: 1.0
Content-Type: multipart/report; report-type="delivery-status"; boundary="=_yahoo_1"

--=_yahoo_1
Content-Type: text/plain

Sorry, we were unable to deliver your message to the following address.

<someone@yahoo.com>:
554: delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0]

--=_yahoo_1
Content-Type: message/delivery-status

Reporting-MTA: dns; mta1234.mail.bf1.yahoo.com

Final-Recipient: someone@yahoo.com
Action: FAILED
Status: 5.0.0 (permanent failure)
Diagnostic-Code: smtp; 554 delivery error: dd This user doesn't have a yahoo.com account
 (someone@yahoo.com) [0] - mta1234.mail.bf1.yahoo.com

--=_yahoo_1--
"""

POSTFIX_DELAY_DSN = """\
From: MAILER-DAEMON@relay.example.net (Mail Delivery System)
Subject: Delayed Mail (still being retried)
To: b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
    boundary="D3A1B2C3.1705312800/relay.example.net"

--D3A1B2C3.1705312800/relay.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.example.net.

--D3A1B2C3.1705312800/relay.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net
X-Postfix-Queue-ID: D3A1B2C3
X-Postfix-Sender: rfc822; b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com
Arrival-Date: Mon, 15 Jan 2024 09:00:00 +0100 (CET)
Original-Envelope-Id: 01HF2Z8M3QK

Final-Recipient: rfc822; first@example.org
Original-Recipient: rfc822;First@example.org
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.example.org[198.51.100.1]:25: Connection timed out

Final-Recipient: rfc822; second@example.org
Action: failed
Status: 5.2.2
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 552 5.2.2 <second@example.org>: Mailbox full

--D3A1B2C3.1705312800/relay.example.net--
"""

BASE64_STATUS_BLOCK = base64.encodebytes(
    b"Reporting-MTA: dns; mx.example.de\r\n\r\n"
    b"Final-Recipient: rfc822; weg@example.de\r\nAction: failed\r\nStatus: 5.1.1\r\n"
).decode()

BASE64_DSN = f"""\
From: MAILER-DAEMON@example.de
Content-Type: multipart/report; report-type=delivery-status; boundary="XX"
MIME-Version: 1.0

--XX
Content-Type: text/plain

Unzustellbar.

--XX
Content-Type: message/delivery-status
Content-Transfer-Encoding: base64

{BASE64_STATUS_BLOCK}
--XX--
"""

RFC5965_ARF = f"""\
From: <abusedesk@example.com>
Date: Thu, 8 Mar 2005 17:40:36 EDT
Subject: FW: Earn money
To: <abuse@example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <somespammer@example.net>
Original-Rcpt-To: <user@example.com>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Reporting-MTA: dns; mail.example.com
Source-IP: 192.0.2.1
Authentication-Results: mail.example.com; spf=fail smtp.mailfrom=somespammer@example.com
Reported-Domain: example.net
Reported-Uri: http://example.net/earn_money.html

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: <somespammer@example.net>
Received: from mailserver.example.net (mailserver.example.net [192.0.2.1])
        by example.com with ESMTP id M63d4137594e46;
        Thu, 08 Mar 2005 14:00:00 -0400
To: <Undisclosed Recipients>
Subject: Earn money
MIME-Version: 1.0
Content-type: text/plain
Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net
{reports.TRACE_HEADER}: {TRACE_VALUE}
Date: Thu, 02 Sep 2004 12:31:03 -0500

Spam Spam Spam

--part1_13d.2e68ed54_boundary--
"""

YAHOO_CFL_ARF = f"""\
Return-Path: <feedbackloop@yahoo-inc.com>
From: Yahoo! Mail AntiSpam Feedback <feedbackloop@yahoo-inc.com>
To: fbl@example.com
Subject: Email Feedback Report for IP 203.0.113.7
MIME-Version: 1.0
Content-Type: multipart/report; report-type="feedback-report"; boundary="----=_Part_1_2.3"

------=_Part_1_2.3
Content-Type: text/plain; charset=UTF-8

This is an email abuse report for an email message received from IP 203.0.113.7

------=_Part_1_2.3
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 0.1
Original-Mail-From: <b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com>
Received-Date: Mon, 15 Jan 2024 12:00:00 PST
Authentication-Results: mta1.mail.gq1.yahoo.com  header.i=@example.com; dkim=pass
Reported-Domain: example.com

------=_Part_1_2.3
Content-Type: message/rfc822

X-Apparently-To: redacted@yahoo.com; Mon, 15 Jan 2024 12:00:00 +0000
Return-Path: <b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com>
From: News <news@example.com>
To: redacted
Subject: Our January news
Message-ID: <0001.msg@example.com>
{reports.TRACE_HEADER}: {TRACE_VALUE}

Hello

------=_Part_1_2.3--
"""

AOL_ARF = """\
From: scomp@aol.net
To: fbl@example.com
Subject: Client TOS Notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="boundary-aol"

--boundary-aol
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message with the message-id of 0003.msg

--boundary-aol
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: AOL SComp
Version: 0.1
Received-Date: Mon, 15 Jan 2024 13:00:00 -0500
Source-IP: 203.0.113.7
Reported-Domain: example.com
Redacted-Address: redacted

--boundary-aol
Content-Type: message/rfc822

From: News <news@example.com>
To: redacted@aol.com
Subject: Weekly deals
Message-ID: <0003.msg@example.com>

Deals

--boundary-aol--
"""

MICROSOFT_JMRP_ARF = f"""\
From: staff@hotmail.com
To: fbl@example.com
Subject: complaint about message from 203.0.113.7
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="jmrp"

--jmrp
Content-Type: text/plain

This is an email abuse report for an email message received from IP 203.0.113.7.

--jmrp
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Hotmail FBL
Version: 0.1

--jmrp
Content-Type: message/rfc822

X-HmXmrOriginalRecipient: <someone@hotmail.com>
From: News <news@example.com>
To: someone@hotmail.com
Message-ID: <0004.msg@example.com>
{reports.TRACE_HEADER}: {TRACE_VALUE}

Body

--jmrp--
"""


@pytest.mark.parametrize(
    ("raw", "recipient", "action", "status", "code", "has_trace", "message_id"),
    [
        (GMAIL_DSN.encode(), "someone@gmail.com", "failed", "5.1.1", 550, True,
         "<0001.msg@example.com>"),
        (crlf(GMAIL_DSN), "someone@gmail.com", "failed", "5.1.1", 550, True,
         "<0001.msg@example.com>"),
        (OUTLOOK_DSN.encode(), "nobody@outlook.com", "failed", "5.1.10", 550, True,
         "<0002.msg@example.com>"),
        (YAHOO_DSN.encode(), "someone@yahoo.com", "failed", "5.0.0", 554, False, None),
        (BASE64_DSN.encode(), "weg@example.de", "failed", "5.1.1", None, False, None),
    ],
    ids=[
        "a gmail DSN with returned headers yields recipient, diagnostic and trace",
        "the same gmail DSN with CRLF line ends parses the same",
        "an outlook NDR with a folded trace header in the returned message is matched",
        "a yahoo DSN with an untyped final recipient and upper-case action is accepted",
        "a base64-encoded delivery-status part is decoded",
    ],
)
def test_real_world_dsns_are_parsed(
    raw: bytes,
    recipient: str,
    action: str,
    status: str,
    code: int | None,
    has_trace: bool,
    message_id: str | None,
) -> None:
    report = reports.parse_dsn(raw)
    assert [r.final_recipient for r in report.recipients] == [recipient]
    first = report.recipients[0]
    assert (first.action, first.status, first.diagnostic_code) == (action, status, code)
    assert report.original_message_id == message_id
    if has_trace:
        assert report.trace is not None
        assert reports.decode_trace(report.trace, KEY) == TRACE
    else:
        assert report.trace is None


def test_a_gmail_dsn_keeps_the_whole_folded_diagnostic() -> None:
    first = reports.parse_dsn(GMAIL_DSN.encode()).recipients[0]
    assert first.diagnostic_type == "smtp"
    assert first.diagnostic_text is not None
    assert first.diagnostic_text.startswith("550-5.1.1 The email account")
    assert first.diagnostic_text.endswith("?p=NoSuchUser")
    assert first.remote_mta is not None and first.remote_mta.startswith("gmail-smtp-in")


def test_a_postfix_dsn_reports_each_recipient_and_the_envelope_id() -> None:
    report = reports.parse_dsn(POSTFIX_DELAY_DSN.encode())
    assert report.reporting_mta == "relay.example.net"
    assert report.original_envelope_id == "01HF2Z8M3QK"
    assert [(r.final_recipient, r.action, r.status) for r in report.recipients] == [
        ("first@example.org", "delayed", "4.4.1"),
        ("second@example.org", "failed", "5.2.2"),
    ]
    assert report.recipients[0].original_recipient == "First@example.org"
    assert report.recipients[0].diagnostic_type == "x-postfix"
    assert report.recipients[0].diagnostic_code is None
    assert [r.final_recipient for r in report.failed] == ["second@example.org"]


def _dsn(status_block: str, *, ctype: str = "multipart/report; report-type=delivery-status",
         status_type: str = "message/delivery-status") -> bytes:
    return f"""\
From: MAILER-DAEMON@example.net
MIME-Version: 1.0
Content-Type: {ctype}; boundary="BB"

--BB
Content-Type: text/plain

Failed.

--BB
Content-Type: {status_type}

{status_block}
--BB--
""".encode()


GOOD_BLOCK = "Reporting-MTA: dns; mx\n\nFinal-Recipient: rfc822; a@example.org\n" \
             "Action: failed\nStatus: 5.1.1\n"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\x00\xff garbage that is no mail at all", "not_multipart_report"),
        (b"From: a@example.org\nSubject: hi\n\nplain text bounce", "not_multipart_report"),
        (_dsn(GOOD_BLOCK, ctype="multipart/report; report-type=feedback-report"),
         "wrong_report_type"),
        (_dsn(GOOD_BLOCK, ctype="multipart/report"), "wrong_report_type"),
        (_dsn(GOOD_BLOCK, status_type="text/plain"), "missing_status_part"),
        (_dsn("Reporting-MTA: dns; mx\n"), "no_recipients"),
        (_dsn("Reporting-MTA: dns; mx\n\nAction: failed\nStatus: 5.1.1\n"), "bad_recipient"),
        (_dsn(GOOD_BLOCK.replace("Action: failed", "Action: bounced")), "bad_action"),
        (_dsn(GOOD_BLOCK.replace("Status: 5.1.1", "Status: failed")), "bad_status"),
        (_dsn(GOOD_BLOCK.replace("Status: 5.1.1\n", "")), "bad_status"),
        (b"Content-Type: multipart/report; report-type=delivery-status; boundary=Z\n\n",
         "no_parts"),
        (b"x" * (reports.MAX_REPORT_BYTES + 1), "oversized"),
    ],
    ids=[
        "an empty report is refused",
        "binary garbage is refused as not a report",
        "a plain-text bounce without structure is refused",
        "a feedback report is not a DSN",
        "a multipart/report without report-type is refused",
        "a report without a delivery-status part is refused",
        "a delivery-status part without recipient blocks is refused",
        "a recipient block without Final-Recipient is refused",
        "an unknown Action is refused",
        "a Status that is not an enhanced code is refused",
        "a missing Status is refused",
        "a multipart/report without parts is refused",
        "a report over the size limit is refused before parsing",
    ],
)
def test_malformed_dsns_raise_a_typed_error_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(reports.ReportError) as caught:
        reports.parse_dsn(raw)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("raw", "user_agent", "rcpt_to", "hint", "has_trace", "message_id"),
    [
        (RFC5965_ARF.encode(), "SomeGenerator/1.0", ("user@example.com",), None, True,
         "8787KJKJ3K4J3K4J3K4J3.mail@example.net"),
        (YAHOO_CFL_ARF.encode(), "Yahoo!-Mail-Feedback/2.0", (), None, True,
         "<0001.msg@example.com>"),
        (crlf(YAHOO_CFL_ARF), "Yahoo!-Mail-Feedback/2.0", (), None, True,
         "<0001.msg@example.com>"),
        (AOL_ARF.encode(), "AOL SComp", (), None, False, "<0003.msg@example.com>"),
        (MICROSOFT_JMRP_ARF.encode(), "Hotmail FBL", (), "someone@hotmail.com", True,
         "<0004.msg@example.com>"),
    ],
    ids=[
        "the RFC 5965 example yields its fields and the returned message's trace",
        "a yahoo CFL report with a redacted recipient is matched by the trace header",
        "the same yahoo report with CRLF line ends parses the same",
        "an AOL report without our trace still yields the Message-ID",
        "a microsoft JMRP report yields the X-HmXmrOriginalRecipient hint",
    ],
)
def test_real_world_arf_reports_are_parsed(
    raw: bytes,
    user_agent: str,
    rcpt_to: tuple[str, ...],
    hint: str | None,
    has_trace: bool,
    message_id: str,
) -> None:
    report = reports.parse_arf(raw)
    assert report.feedback_type == "abuse"
    assert report.user_agent == user_agent
    assert report.original_rcpt_to == rcpt_to
    assert report.original_recipient_hint == hint
    assert report.original_message_id == message_id
    assert (report.trace is not None) == has_trace
    if report.trace is not None:
        assert reports.decode_trace(report.trace, KEY).recipient == "Someone@Gmail.com"


def test_arf_fields_are_exposed() -> None:
    report = reports.parse_arf(RFC5965_ARF.encode())
    assert report.source_ip == "192.0.2.1"
    assert report.reported_domain == "example.net"
    assert report.original_mail_from == "somespammer@example.net"
    assert report.version == "1"
    assert reports.parse_arf(AOL_ARF.encode()).arrival_date == "Mon, 15 Jan 2024 13:00:00 -0500"


def _arf(fields: str, *, report_type: str = "feedback-report",
         part_type: str = "message/feedback-report") -> bytes:
    return f"""\
MIME-Version: 1.0
Content-Type: multipart/report; report-type={report_type}; boundary="AA"

--AA
Content-Type: text/plain

Complaint.

--AA
Content-Type: {part_type}

{fields}
--AA--
""".encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_arf("User-Agent: x\nVersion: 1\n"), "missing_feedback_type"),
        (_arf("Feedback-Type: <script>\n"), "bad_feedback_type"),
        (_arf("Feedback-Type: abuse\n", report_type="delivery-status"), "wrong_report_type"),
        (_arf("Feedback-Type: abuse\n", part_type="text/plain"), "missing_feedback_part"),
        (GMAIL_DSN.encode(), "wrong_report_type"),
        (b"Subject: spam complaint\n\nI hate this mail", "not_multipart_report"),
    ],
    ids=[
        "a report without Feedback-Type is refused",
        "a Feedback-Type that is not a token is refused",
        "a DSN report-type is not a complaint",
        "a report without a feedback-report part is refused",
        "a real DSN is not mistaken for a complaint",
        "a free-text complaint is refused",
    ],
)
def test_malformed_arf_reports_raise_a_typed_error(raw: bytes, reason: str) -> None:
    with pytest.raises(reports.ReportError) as caught:
        reports.parse_arf(raw)
    assert caught.value.reason == reason


def test_a_trace_round_trips_and_hides_the_recipient() -> None:
    value = reports.encode_trace(TRACE, KEY)
    assert "gmail" not in value.lower()
    assert reports.decode_trace(value, KEY) == TRACE
    assert reports.encode_trace(TRACE, KEY) != value  # fresh nonce each time


def test_a_trace_verifies_under_a_retired_key_during_rotation() -> None:
    value = reports.encode_trace(TRACE, OTHER_KEY)
    assert reports.decode_trace(value, [KEY, OTHER_KEY]) == TRACE


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (TRACE_VALUE[:-2] + ("AA" if not TRACE_VALUE.endswith("AA") else "BB"), "forged_trace"),
        (reports.encode_trace(TRACE, OTHER_KEY), "forged_trace"),
        ("t1.", "bad_trace"),
        ("t1.!!!!", "bad_trace"),
        ("t1.AAAA", "bad_trace"),
        ("v9." + TRACE_VALUE[3:], "bad_trace"),
        ("01HF2Z8M3QK.3", "bad_trace"),
    ],
    ids=[
        "an edited trace does not verify",
        "a trace sealed with another pool's key does not verify",
        "an empty trace body is refused",
        "a trace that is not base64url is refused",
        "a truncated trace is refused",
        "an unknown trace version is refused",
        "a plain id pair is not a trace",
    ],
)
def test_forged_or_broken_traces_are_refused(value: str, reason: str) -> None:
    with pytest.raises(reports.ForgedMark) as caught:
        reports.decode_trace(value, KEY)
    assert caught.value.reason == reason


def test_a_verp_return_path_round_trips_and_binds_the_recipient() -> None:
    address = reports.encode_verp_return_path(
        "Bounce.Example.com", "01HF2Z8M3QK", "Someone@Gmail.com", key=KEY
    )
    local, _, domain = address.partition("@")
    assert domain == "bounce.example.com"
    assert len(local) <= 64
    tag = reports.decode_verp(address)
    assert tag.message_id == "01HF2Z8M3QK"
    assert tag.matches("someone@gmail.com", KEY)
    assert tag.matches("<SOMEONE@gmail.com>", KEY)
    assert not tag.matches("victim@gmail.com", KEY)
    assert not tag.matches("someone@gmail.com", OTHER_KEY)


@pytest.mark.parametrize(
    "address",
    [
        "someone@example.com",
        "b-01HF2Z8M3QK@bounce.example.com",
        "x-01HF2Z8M3QK-abcdefghijklm@bounce.example.com",
        "b-01HF-2Z8M3QK-abcdefghijklm@bounce.example.com",
        "b-01HF2Z8M3QK-short@bounce.example.com",
        "not an address",
    ],
    ids=[
        "an ordinary address is not a VERP return path",
        "a return path without a tag is refused",
        "another prefix is refused",
        "an extra dash makes the address ambiguous and it is refused",
        "a tag of the wrong length is refused",
        "a string without @ is refused",
    ],
)
def test_foreign_verp_addresses_are_refused(address: str) -> None:
    with pytest.raises(reports.ReportError) as caught:
        reports.decode_verp(address)
    assert caught.value.reason == "bad_verp"


def test_verp_refuses_message_ids_that_would_be_ambiguous() -> None:
    with pytest.raises(ValueError, match="message id"):
        reports.encode_verp_return_path("b.example.com", "a-b", "x@example.com", key=KEY)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        reports.encode_trace(TRACE, b"short")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_parsers(raw: bytes) -> None:
    for parse in (reports.parse_dsn, reports.parse_arf):
        try:
            parse(raw)
        except reports.ReportError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_status_parts_never_crash_the_dsn_parser(block: str) -> None:
    try:
        reports.parse_dsn(_dsn(block))
    except reports.ReportError:
        pass


def test_a_base64_status_part_that_does_not_decode_is_refused() -> None:
    broken = BASE64_DSN.replace(BASE64_STATUS_BLOCK, "QUJD=x=\n")
    with pytest.raises(reports.ReportError) as caught:
        reports.parse_dsn(broken.encode())
    assert caught.value.reason in ("bad_encoding", "no_recipients")


ORIGINAL = (
    "Return-Path: <b-01HF2Z8M3QK-abcdefghijklm@bounce.example.com>\r\n"
    "From: News <news@example.com>\r\nTo: someone@gmail.com\r\n"
    "Message-ID: <0009.msg@example.com>\r\n"
    f"{reports.TRACE_HEADER}: {TRACE_VALUE}\r\n\r\nHello\r\n"
).encode()


@pytest.mark.parametrize("headers_only", [True, False], ids=["headers only", "whole message"])
def test_the_sandbox_simulators_reports_parse_and_match(headers_only: bool) -> None:
    sandbox_reports = pytest.importorskip("mailfleet_sandbox.reports")
    dsn = reports.parse_dsn(sandbox_reports.build_dsn(
        ORIGINAL, "someone@gmail.com", "5.2.2", "smtp; 552 5.2.2 mailbox full",
        headers_only=headers_only,
    ))
    assert [(r.final_recipient, r.action, r.status) for r in dsn.recipients] == [
        ("someone@gmail.com", "failed", "5.2.2")
    ]
    assert dsn.trace is not None and reports.decode_trace(dsn.trace, KEY) == TRACE
    arf = reports.parse_arf(sandbox_reports.build_arf(
        ORIGINAL, source_ip="203.0.113.7", mail_from="b@bounce.example.com",
        rcpt_to="someone@gmail.com", headers_only=headers_only,
    ))
    assert arf.feedback_type == "abuse"
    assert arf.original_message_id == "<0009.msg@example.com>"
    assert arf.trace is not None and reports.decode_trace(arf.trace, KEY) == TRACE
