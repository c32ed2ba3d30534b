"""Table tests for reply classification, from reply lines seen in the wild."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_sender import bounces

C = bounces.Category

# (id, code, reply text as seen on the wire, provider, expected category)
REPLIES: list[tuple[str, int, str, str | None, bounces.Category]] = [
    # --- Gmail
    ("gmail unknown account is a hard bounce", 550,
     "550-5.1.1 The email account that you tried to reach does not exist. Please try\n"
     "550-5.1.1 double-checking the recipient's email address for typos or\n"
     "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser",
     "gmail", C.HARD_BOUNCE),
    ("gmail disabled account is a hard bounce", 550,
     "550-5.2.1 The email account that you tried to reach is disabled. "
     "https://support.google.com/mail/?p=DisabledUser", "gmail", C.HARD_BOUNCE),
    ("gmail inactive account is a hard bounce", 550,
     "550 5.2.1 The email account that you tried to reach is inactive and is not accepting"
     " messages.", "gmail", C.HARD_BOUNCE),
    ("gmail over quota as 452 is a soft bounce", 452,
     "452-4.2.2 The email account that you tried to reach is over quota. Please direct\n"
     "452 4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp",
     "gmail", C.SOFT_BOUNCE),
    ("gmail over quota as 552 is a soft bounce", 552,
     "552-5.2.2 The email account that you tried to reach is over quota and inactive.",
     "gmail", C.SOFT_BOUNCE),
    ("gmail unusual rate of unsolicited mail is throttling", 421,
     "421-4.7.28 [203.0.113.7] Our system has detected an unusual rate of unsolicited mail\n"
     "421-4.7.28 originating from your IP address. To protect our users from spam, mail sent\n"
     "421 4.7.28 from your IP address has been temporarily rate limited.",
     "gmail", C.THROTTLED),
    ("gmail receiving mail at a rate is throttling", 450,
     "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\n"
     "450 4.2.1 prevents additional messages from being delivered.", "gmail", C.THROTTLED),
    ("gmail try again later closing connection is throttling", 421,
     "421-4.7.0 Try again later, closing connection. (EHLO)", "gmail", C.THROTTLED),
    ("gmail very low reputation is a temporary block", 421,
     "421-4.7.0 This message is suspicious due to the very low reputation of the sending IP"
     " address.", "gmail", C.BLOCKED),
    ("gmail likely unsolicited mail is a block", 550,
     "550-5.7.1 [203.0.113.7] Our system has detected that this message is likely\n"
     "550 5.7.1 unsolicited mail. To reduce the amount of spam sent to Gmail, this message"
     " has been blocked.", "gmail", C.BLOCKED),
    ("gmail unauthenticated mail is a block", 550,
     "550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and"
     " Gmail users, and has been blocked.", "gmail", C.BLOCKED),
    ("gmail missing PTR record is a block", 550,
     "550-5.7.25 [203.0.113.7] The IP address sending this message does not have a PTR"
     " record setup.", "gmail", C.BLOCKED),
    ("gmail unauthenticated rate limit is throttling", 421,
     "421-4.7.26 This mail has been rate limited because it is unauthenticated.",
     "gmail", C.THROTTLED),
    ("gmail message too large is a soft bounce", 552,
     "552-5.3.4 Your message exceeded Google's message size limits.", "gmail", C.SOFT_BOUNCE),
    # Our own malformed message is a sender-side fault: it must not count against the address.
    ("gmail malformed message is a block not a bounce", 554,
     "554 5.6.0 Mail message is malformed. Not accepted.", "gmail", C.BLOCKED),
    ("gmail temporary system problem is a deferral", 451,
     "451-4.3.0 Mail server temporarily rejected message.", "gmail", C.DEFERRED),
    ("gmail recipient domain policy is a block", 550,
     "550-5.7.1 The user or domain that you are sending to (or from) has a policy that\n"
     "550 5.7.1 prohibited the mail that you sent.", "gmail", C.BLOCKED),
    ("gmail accepted is delivered", 250,
     "250 2.0.0 OK  1700000000 a1-20020a170902b00100b001cc1b2b3c4dsi123456plg.123 - gsmtp",
     "gmail", C.DELIVERED),
    # --- Microsoft
    ("outlook network on block list S3150 is a block", 550,
     "550 5.7.1 Unfortunately, messages from [203.0.113.7] weren't sent. Please contact your"
     " Internet service provider since part of their network is on our block list (S3150)."
     " You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
     "outlook", C.BLOCKED),
    ("outlook server busy 4.7.500 is throttling", 451,
     "451 4.7.500 Server busy. Please try again later from [203.0.113.7]. (S77714)",
     "outlook", C.THROTTLED),
    ("outlook IP reputation rate limit 4.7.650 is throttling", 451,
     "451 4.7.650 The mail server [203.0.113.7] has been temporarily rate limited due to IP"
     " reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
     "outlook", C.THROTTLED),
    ("outlook banned sending IP 5.7.606 is a block", 550,
     "550 5.7.606 Access denied, banned sending IP [203.0.113.7]. To request removal from this"
     " list please visit https://sender.office.com/", "outlook", C.BLOCKED),
    ("office365 traffic not accepted 5.7.708 is a block", 550,
     "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
     "outlook", C.BLOCKED),
    ("office365 RecipientNotFound is a hard bounce", 550,
     "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "outlook", C.HARD_BOUNCE),
    ("office365 directory based edge blocking is a hard bounce", 550,
     "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) "
     "[DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]", "outlook", C.HARD_BOUNCE),
    ("hotmail mailbox unavailable is a hard bounce", 550,
     "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).",
     "outlook", C.HARD_BOUNCE),
    ("exchange quota exceeded is a soft bounce", 554,
     "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException."
     "MapiExceptionShutoffQuotaExceeded", "outlook", C.SOFT_BOUNCE),
    ("outlook service unavailable 4.3.2 is a deferral", 421,
     "421 4.3.2 Service not available", "outlook", C.DEFERRED),
    ("outlook accepted queued is delivered", 250,
     "250 2.6.0 <abc@example.com> [InternalId=123] Queued mail for delivery", "outlook",
     C.DELIVERED),
    # --- Yahoo / AOL
    ("yahoo TSS04 unexpected volume is throttling", 421,
     "421 4.7.0 [TSS04] Messages from 203.0.113.7 temporarily deferred due to unexpected"
     " volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
     "yahoo", C.THROTTLED),
    ("yahoo TS01 user complaints is throttling", 421,
     "421 4.7.0 [TS01] Messages from 203.0.113.7 temporarily deferred due to user complaints"
     " - 4.16.55.1", "yahoo", C.THROTTLED),
    ("yahoo TSS09 permanently deferred is a block", 553,
     "553 5.7.2 [TSS09] All messages from 203.0.113.7 will be permanently deferred; Retrying"
     " will NOT succeed. See https://postmaster.yahooinc.com/error-codes", "yahoo", C.BLOCKED),
    ("yahoo policy reasons 5.7.9 is a block", 554,
     "554 5.7.9 Message not accepted for policy reasons.  See"
     " https://postmaster.yahooinc.com/error-codes", "yahoo", C.BLOCKED),
    ("yahoo no account dd is a hard bounce", 554,
     "554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com)"
     " [0] - mta1234.mail.gq1.yahoo.com", "yahoo", C.HARD_BOUNCE),
    ("aol no account dd is a hard bounce", 554,
     "554 delivery error: dd This user doesn't have a aol.com account (someone@aol.com) [0]"
     " - mta4011.aol.mail.bf1.yahoo.com", "aol", C.HARD_BOUNCE),
    ("yahoo mailbox not found is a hard bounce", 552,
     "552 1 Requested mail action aborted, mailbox not found", "yahoo", C.HARD_BOUNCE),
    ("yahoo plain temporarily deferred is throttling at yahoo", 421,
     "421 Message from (203.0.113.7) temporarily deferred - 4.16.50. Please refer to"
     " https://help.yahoo.com/kb/postmaster", "yahoo", C.THROTTLED),
    ("plain temporarily deferred elsewhere is a deferral", 421,
     "421 Message temporarily deferred", None, C.DEFERRED),
    ("yahoo mailbox over quota is a soft bounce", 452,
     "452 4.2.2 Mailbox over quota", "yahoo", C.SOFT_BOUNCE),
    # --- Apple iCloud
    ("icloud user does not exist is a hard bounce", 550,
     "550 5.1.1 <someone@icloud.com>: user does not exist", "apple", C.HARD_BOUNCE),
    ("icloud CS01 local policy is a block", 554,
     "554 5.7.1 [CS01] Message rejected due to local policy. Please visit"
     " https://support.apple.com/en-us/HT204137", "apple", C.BLOCKED),
    ("icloud over quota is a soft bounce", 552,
     "552 5.2.2 <someone@icloud.com>: user is over quota", "apple", C.SOFT_BOUNCE),
    ("icloud proofpoint block is a block", 550,
     "550 5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.7", "apple",
     C.BLOCKED),
    # --- Orange
    ("orange OFR004_104 is a block", 550,
     "550 5.7.1 Service refuse. Veuillez essayer plus tard. service refused, please try"
     " later. OFR004_104 [104]", "orange", C.BLOCKED),
    ("orange temporary OFR refusal is throttling", 421,
     "421 mwinf5c79 ME Service refuse. Veuillez essayer plus tard. service refused, please"
     " try later. OFR005_102 [102]", "orange", C.THROTTLED),
    ("orange trop de connexions is throttling", 421,
     "421 mwinf5c12 ME Trop de connexions, veuillez verifier votre configuration. Too many"
     " connections, slow down. OFR005_104 [104]", "orange", C.THROTTLED),
    ("orange unknown user in french is a hard bounce", 550,
     "550 5.1.1 <someone@orange.fr>: Adresse d au moins un destinataire invalide. Invalid"
     " recipient. OFR_416 [416]", "orange", C.HARD_BOUNCE),
    # --- Free
    ("free too many spams is a block", 421,
     "421 4.7.0 Too many spams from your IP (203.0.113.7), please visit"
     " http://postmaster.free.fr/", "free", C.BLOCKED),
    ("free unknown user is a hard bounce", 550,
     "550 5.1.1 <someone@free.fr>: Recipient address rejected: user unknown", "free",
     C.HARD_BOUNCE),
    ("free too many connections is throttling", 421,
     "421 Too many connections from your IP (203.0.113.7)", "free", C.THROTTLED),
    # --- GMX / Web.de
    ("gmx policy restrictions is a block", 554,
     "554-gmx.net (mxgmx017) Nemesis ESMTP Service not available\n554-No SMTP service\n"
     "554 Reject due to policy restrictions.", "gmx", C.BLOCKED),
    ("gmx mailbox unavailable is a hard bounce", 550,
     "550 Requested action not taken: mailbox unavailable", "gmx", C.HARD_BOUNCE),
    ("gmx storage allocation exceeded is a soft bounce", 552,
     "552 Requested mail action aborted: exceeded storage allocation", "gmx", C.SOFT_BOUNCE),
    ("web.de unknown user in german is a hard bounce", 550,
     "550 Empfaenger unbekannt / mailbox unavailable", "webde", C.HARD_BOUNCE),
    # --- Block lists and generic MTAs (Postfix, Exim, Sendmail)
    ("spamhaus listing is a block", 554,
     "554 5.7.1 Service unavailable; Client host [203.0.113.7] blocked using zen.spamhaus.org;"
     " https://www.spamhaus.org/query/ip/203.0.113.7", None, C.BLOCKED),
    ("barracuda reputation is a block", 554,
     "554 Service unavailable; Client host [203.0.113.7] blocked using Barracuda Reputation;"
     " http://www.barracudanetworks.com/reputation/?r=1&ip=203.0.113.7", None, C.BLOCKED),
    ("temporary spamcop listing is a temporary block", 451,
     "451 4.7.1 Service unavailable; Client host [203.0.113.7] blocked using bl.spamcop.net",
     None, C.BLOCKED),
    ("postfix unknown local recipient is a hard bounce", 550,
     "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in local"
     " recipient table", None, C.HARD_BOUNCE),
    ("postfix virtual mailbox unknown is a hard bounce", 550,
     "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in virtual"
     " mailbox table", None, C.HARD_BOUNCE),
    ("exim unrouteable address is a hard bounce", 550,
     "550 Unrouteable address", None, C.HARD_BOUNCE),
    ("domain not found is a hard bounce", 550,
     "550 5.1.2 <x@nonexistent.example>: Host or domain name not found.", None,
     C.HARD_BOUNCE),
    ("unable to route 5.4.4 is a hard bounce", 550,
     "550 5.4.4 Unable to route: no mail hosts for domain", None, C.HARD_BOUNCE),
    ("mailbox moved 5.1.6 is a hard bounce", 550,
     "550 5.1.6 Recipient addresses in this domain no longer accept mail", None,
     C.HARD_BOUNCE),
    ("postgrey greylisting is a deferral", 450,
     "450 4.2.0 <x@example.org>: Recipient address rejected: Greylisted, see"
     " http://postgrey.schweikert.ch/help/example.org.html", None, C.DEFERRED),
    ("greylisting with 4.7.1 is a deferral not a block", 451,
     "451 4.7.1 Greylisting in action, please come back later", None, C.DEFERRED),
    ("too many recipients is a deferral not throttling", 452,
     "452 4.5.3 Too many recipients", None, C.DEFERRED),
    ("local processing error is a deferral", 451,
     "451 4.3.0 Error: queue file write error", None, C.DEFERRED),
    ("connection timed out 4.4.1 is a deferral", 421,
     "421 4.4.1 Connection timed out", None, C.DEFERRED),
    ("plain 421 service not available is a deferral", 421,
     "421 Service not available, closing transmission channel", None, C.DEFERRED),
    ("generic rate limit exceeded is throttling", 450,
     "450 4.7.1 Rate limit exceeded for 203.0.113.7, try again later", None, C.THROTTLED),
    ("a 5xx rate limit is still throttling", 550,
     "550 5.7.1 Message rejected: too many messages from your IP, rate limited", None,
     C.THROTTLED),
    ("DMARC reject is a block", 550,
     "550 5.7.1 Email rejected per DMARC policy for example.com", None, C.BLOCKED),
    ("virus found is a block", 554,
     "554 5.7.1 Rejected: virus found in message (Eicar-Test-Signature)", None, C.BLOCKED),
    ("message size exceeds limit without code is a soft bounce", 552,
     "552 Message size exceeds fixed maximum message size", None, C.SOFT_BOUNCE),
    ("mailbox full without enhanced code is a soft bounce", 550,
     "550 Mailbox is full", None, C.SOFT_BOUNCE),
    ("unreadable 554 transaction failed is a soft bounce", 554,
     "554 Transaction failed", None, C.SOFT_BOUNCE),
    ("sendmail user unknown with status is a hard bounce", 550,
     "550 5.1.1 <someone@example.net>... User unknown", None, C.HARD_BOUNCE),
    ("comcast blocked by reputation is a block", 554,
     "554 resimta-ch2-18v.sys.comcast.net comcast 203.0.113.7 Comcast block for spam."
     " Please see http://postmaster.comcast.net/smtp-error-codes.php#BL000000", None,
     C.BLOCKED),
    ("plain 250 ok is delivered", 250, "250 OK id=1abcde-0001Xy-2Z", None, C.DELIVERED),
    ("a 3xx as a final reply is a deferral", 354, "354 go ahead", None, C.DEFERRED),
]


def test_the_table_has_at_least_sixty_real_world_lines() -> None:
    assert len(REPLIES) >= 60
    assert len({case[0] for case in REPLIES}) == len(REPLIES)


@pytest.mark.parametrize(
    ("code", "text", "provider", "expected"),
    [case[1:] for case in REPLIES],
    ids=[case[0] for case in REPLIES],
)
def test_real_world_replies_are_classified(
    code: int, text: str, provider: str | None, expected: bounces.Category
) -> None:
    verdict = bounces.classify_reply(code, text, provider=provider)
    assert verdict.category is expected, verdict.reason
    assert verdict.code == code
    assert verdict.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("550-5.1.1 The email account", bounces.EnhancedCode(5, 1, 1)),
        ("5.1.10 RESOLVER.ADR.RecipientNotFound", bounces.EnhancedCode(5, 1, 10)),
        ("Message from 203.0.113.7 refused 4.7.650", bounces.EnhancedCode(4, 7, 650)),
        ("no code here, just 203.0.113.7", None),
        ("version 1.2 only", None),
    ],
    ids=[
        "a gmail wire line yields its enhanced code",
        "a three digit detail is read whole",
        "a code after an IP address is found and the IP is not mistaken for a code",
        "an IP address alone is not an enhanced code",
        "a two part number is not an enhanced code",
    ],
)
def test_enhanced_codes_are_parsed(text: str, expected: bounces.EnhancedCode | None) -> None:
    assert bounces.parse_enhanced_code(text) == expected


def test_classification_tells_the_scheduler_what_to_do() -> None:
    hard = bounces.classify_reply(550, "5.1.1 user unknown")
    full = bounces.classify_reply(452, "4.2.2 over quota")
    full_perm = bounces.classify_reply(552, "5.2.2 mailbox full")
    throttled = bounces.classify_reply(421, "4.7.0 rate limited")
    blocked = bounces.classify_reply(554, "5.7.1 blocked using zen.spamhaus.org")
    assert (hard.retryable, hard.suppresses) == (False, True)
    assert (full.retryable, full.suppresses) == (True, False)
    assert (full_perm.retryable, full_perm.suppresses) == (False, False)
    # The reply code's class decides retry versus final, never the category alone.
    assert bounces.classify_reply(550, "5.7.1 rate limited").retryable is False
    assert bounces.classify_reply(450, "5.1.1 user unknown").category is C.DEFERRED
    assert bounces.classify_reply(450, "4.1.1 user unknown").retryable is True
    assert (throttled.retryable, throttled.suppresses) == (True, False)
    assert (blocked.retryable, blocked.suppresses) == (False, False)
    assert str(hard.enhanced) == "5.1.1"


@pytest.mark.parametrize(
    ("code", "text", "provider"),
    [
        (450, "5.1.1 <x@example.org>: Recipient address rejected: User unknown", None),
        (450, "5.1.1 The email account that you tried to reach does not exist", "gmail"),
        (451, "5.2.1 mailbox disabled", None),
        (421, "5.4.4 unable to route", None),
        (452, "5.1.10 RESOLVER.ADR.RecipientNotFound", "outlook"),
    ],
    ids=[
        "450 with 5.1.1 is a deferral, not a hard bounce",
        "450 with 5.1.1 at a named provider is still retried",
        "451 with 5.2.1 mailbox disabled does not suppress",
        "421 with 5.4.4 no route is retried",
        "452 with 5.1.10 recipient not found is retried",
    ],
)
def test_an_enhanced_code_that_contradicts_the_reply_code_defers_to_the_code(
    code: int, text: str, provider: str | None
) -> None:
    verdict = bounces.classify_reply(code, text, provider=provider)
    assert verdict.category is not C.HARD_BOUNCE, verdict.reason
    assert verdict.retryable
    assert not verdict.suppresses


def test_the_provider_name_is_recorded_lowercase() -> None:
    assert bounces.classify_reply(250, "ok", provider="Gmail").provider == "gmail"


@pytest.mark.parametrize(
    ("previous", "after", "expected"),
    [
        (0, 3, C.SOFT_BOUNCE),
        (1, 3, C.SOFT_BOUNCE),
        (2, 3, C.HARD_BOUNCE),
        (7, 3, C.HARD_BOUNCE),
        (0, 1, C.HARD_BOUNCE),
        (50, 0, C.SOFT_BOUNCE),
    ],
    ids=[
        "a first soft bounce stays soft",
        "a second soft bounce of three stays soft",
        "the third soft bounce in a row becomes hard",
        "soft bounces beyond the limit stay hard",
        "a limit of one makes every soft bounce hard",
        "a limit of zero disables escalation",
    ],
)
def test_repeated_soft_bounces_escalate(previous: int, after: int, expected: C) -> None:
    assert bounces.escalate_soft(previous, after) is expected


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="previous_soft_count"):
        bounces.escalate_soft(-1, 3)
    with pytest.raises(ValueError, match="soft_to_hard_after"):
        bounces.escalate_soft(0, -3)


@given(code=st.integers(min_value=100, max_value=699), text=st.text(max_size=300))
def test_any_reply_gets_a_category_and_2xx_is_always_delivered(code: int, text: str) -> None:
    verdict = bounces.classify_reply(code, text)
    assert isinstance(verdict.category, bounces.Category)
    assert (verdict.category is C.DELIVERED) == (200 <= code < 300)


@pytest.mark.parametrize("code", [*range(400, 405), 450, 452, 499, *range(500, 505), 550, 599])
def test_an_enhanced_code_of_the_reply_codes_class_decides_for_every_code_of_that_class(
    code: int,
) -> None:
    # A policy rejection (5.7.1) is "blocked", never a hard bounce that would suppress a good
    # address, whatever the 5xx; a full mailbox (4.2.2) is a soft bounce for every 4xx.
    enhanced = "5.7.1" if code >= 500 else "4.2.2"
    verdict = bounces.classify_reply(code, f"{enhanced} xyzzy")
    expected = "blocked" if code >= 500 else "soft_bounce"
    assert (verdict.category.value, verdict.reason.endswith(f"({enhanced})")) == (expected, True)


@pytest.mark.parametrize(
    ("code", "category", "reason"),
    [
        (200, "delivered", "accepted"),
        (299, "delivered", "accepted"),
        (199, "deferred", "unexpected reply code 199"),
        (300, "deferred", "unexpected reply code 300"),
        (600, "deferred", "unexpected reply code 600"),
        (400, "deferred", "temporary failure"),
        (499, "deferred", "temporary failure"),
        (556, "hard_bounce", "domain does not accept mail"),
        (552, "soft_bounce", "exceeded storage allocation"),
        (553, "soft_bounce", "unclassified permanent failure"),
        (599, "soft_bounce", "unclassified permanent failure"),
    ],
)
def test_a_reply_nothing_else_explains_is_read_by_its_code_alone(
    code: int, category: str, reason: str
) -> None:
    verdict = bounces.classify_reply(code, "xyzzy")
    assert (verdict.category.value, verdict.reason) == (category, reason)
