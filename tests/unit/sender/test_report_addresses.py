"""DSN recipient fields with every RFC 3464 / RFC 6533 address type."""

from __future__ import annotations

import pytest
from mailfleet_sender import report_addresses, reports


def _dsn(recipient_block: str) -> bytes:
    return (
        "Content-Type: multipart/report; report-type=delivery-status; boundary=BB\n\n"
        "--BB\nContent-Type: text/plain\n\nbounce\n"
        "--BB\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n"
        f"Original-Envelope-Id: env-42\n\n{recipient_block}\n--BB--\n"
    ).encode()


@pytest.mark.parametrize(
    ("field", "final", "kind", "original", "original_kind"),
    [
        ("Final-Recipient: rfc822; a@example.org\nOriginal-Recipient: rfc822; a+2Bx@example.org",
         "a@example.org", "rfc822", "a+x@example.org", "rfc822"),
        ("Final-Recipient: unknown; nair_s", "nair_s", "unknown", None, None),
        ("Final-Recipient: utf-8; j\\x{00F6}rg@example.de\n"
         "Original-Recipient: utf-8; j\\x{00F6}rg+2B1@example.de",
         "jörg@example.de", "utf-8", "jörg+1@example.de", "utf-8"),
        ("Final-Recipient: x400; /G=A/S=B/O=C/", "/G=A/S=B/O=C/", "x400", None, None),
        ("Final-Recipient: someone@example.org", "someone@example.org", "rfc822", None, None),
        ("Final-Recipient: RFC822; <Some@Example.org>", "Some@Example.org", "rfc822", None, None),
    ],
    ids=[
        "an rfc822 address is kept and an xtext ORCPT is decoded",
        "an unknown address type without an @ is accepted with its type",
        "a utf-8 address is decoded from its unitext escapes",
        "any other atom is a valid type and the address is kept as sent",
        "a missing type is read as rfc822",
        "the type is case-insensitive and angle brackets are dropped",
    ],
)
def test_every_address_type_parses_and_keeps_its_type(
    field: str, final: str, kind: str, original: str | None, original_kind: str | None
) -> None:
    dsn = reports.parse_dsn(_dsn(f"{field}\nAction: failed\nStatus: 5.1.1\n"))
    status = dsn.recipients[0]
    assert (status.final_recipient, status.final_recipient_type) == (final, kind)
    assert (status.original_recipient, status.original_recipient_type) == (original, original_kind)
    assert dsn.original_envelope_id == "env-42"


def test_an_rfc822_recipient_without_an_address_is_still_refused() -> None:
    with pytest.raises(reports.ReportError, match="bad_recipient"):
        reports.parse_dsn(_dsn("Final-Recipient: rfc822; nobody\nAction: failed\nStatus: 5.1.1\n"))


def test_an_empty_typed_value_is_no_recipient() -> None:
    assert report_addresses.typed_recipient("unknown; ") is None
    assert report_addresses.typed_recipient(None) is None
