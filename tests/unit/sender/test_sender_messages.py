"""Validation of submitted mail (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_sender import messages

LIMITS = messages.Limits(max_message_bytes=10_000, max_header_bytes=2_000)


def check(data: bytes) -> messages.Verdict:
    return messages.check_message(data, limits=LIMITS, now=1700000000, hostname="pod-0")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Subject: x\r\n\r\nbody", messages.NO_FROM),
        (b"From: a@x.test\r\nFrom: b@x.test\r\n\r\nbody", messages.MANY_FROM),
        (b"From: not an address\r\n\r\nbody", messages.MANY_FROM),
        (b"From: a@x.test\nSubject: x\r\n\r\nbody", messages.BARE_NEWLINE),
        (b"From: a@x.test\r\n\r\nbody\rmore\r\n", messages.BARE_NEWLINE),
        ("From: a@x.test\r\nSubject: \u00e9\r\n\r\nb".encode(), messages.EIGHT_BIT_HEADER),
        (b"From: a@x.test\r\nX: " + b"y" * 1000 + b"\r\n\r\nb", messages.LINE_TOO_LONG),
        (b"From: a@x.test\r\n" + b"X: yyyyyyyy\r\n" * 200 + b"\r\nb", messages.HEADER_TOO_BIG),
        (b"From: a@x.test\r\n\r\n" + b"z" * 10_001, messages.TOO_BIG),
        (b"From: a@x.test\r\nbad header line\r\n\r\nb", messages.BAD_HEADER),
        (b" folded first\r\nFrom: a@x.test\r\n\r\nb", messages.BAD_HEADER),
        (b"From: a@x.test", messages.NO_BODY_SEPARATOR),
    ],
    ids=["no From", "two From headers", "From without an address", "bare LF in headers",
         "bare CR in body", "8-bit header", "header line over 998", "header section too big",
         "message too big", "header line without colon", "continuation before any header",
         "no header/body separation"],
)
def test_malformed_messages_are_refused_with_their_reason(
    data: bytes, expected: messages.Rejection
) -> None:
    assert check(data) == expected


def test_missing_message_id_and_date_are_added_and_control_headers_removed() -> None:
    verdict = check(b"From: A <a@Sub.X.test>\r\nX-Mailfleet-Class: marketing\r\n"
                    b"X-Mailfleet-Tier: high\r\n\r\nbody\r\n")
    assert isinstance(verdict, messages.Accepted)
    assert (verdict.class_name, verdict.tier, verdict.from_domain) == ("marketing", "high",
                                                                      "sub.x.test")
    assert b"X-Mailfleet" not in verdict.data
    assert b"\r\nMessage-ID: <" in verdict.data and b"@pod-0>" in verdict.data
    assert b"\r\nDate: " in verdict.data
    assert verdict.data.endswith(b"\r\n\r\nbody\r\n")


def test_a_complete_message_is_kept_byte_for_byte() -> None:
    data = (b"From: a@x.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            b"Message-ID: <m@x.test>\r\n\r\nbody\r\n")
    verdict = check(data)
    assert isinstance(verdict, messages.Accepted) and verdict.data is data


def test_json_form_builds_a_valid_mime_message() -> None:
    data = messages.build_message(sender="Shop <s@x.test>", to=["b@y.test"], subject="Héllo",
                                  text="plain", html="<b>html</b>", headers={"X-Tag": "1"},
                                  now=1700000000, hostname="pod-0")
    verdict = check(data)
    assert isinstance(verdict, messages.Accepted)
    assert b"multipart/alternative" in data and b"X-Tag: 1" in data


@given(st.binary(max_size=200))
def test_bare_newline_detection_matches_a_byte_scan(data: bytes) -> None:
    bare = any(
        (b == 0x0A and (i == 0 or data[i - 1] != 0x0D))
        or (b == 0x0D and (i + 1 >= len(data) or data[i + 1] != 0x0A))
        for i, b in enumerate(data)
    )
    assert messages.has_bare_newline(data) == bare
