"""An address with a line break never reaches aiosmtplib, which writes addresses verbatim
(GHSA-v3q9-hj7j-63hq: the bytes after the break would run as SMTP commands)."""

from __future__ import annotations

from typing import Any, cast

import aiosmtplib.protocol
import pytest
from mailfleet_sender import delivering


class RecordingSMTP:
    def __init__(self) -> None:
        self.commands: list[str] = []

    async def mail(self, sender: str, **kwargs: Any) -> None:
        self.commands.append(f"MAIL {sender}")

    async def rcpt(self, recipient: str, **kwargs: Any) -> None:
        self.commands.append(f"RCPT {recipient}")

    def supports_extension(self, name: str) -> bool:
        return False


@pytest.mark.parametrize(("sender", "recipient", "stage"), [
    ("a@example.test\r\nRCPT TO:<victim@example.org>", "x@gmail.test", "mail"),
    ("a@example.test", "x@gmail.test\nDATA", "rcpt"),
    ("", "x@gmail.test\r", "rcpt"),
])
async def test_an_address_with_a_line_break_is_refused_before_any_command(
    sender: str, recipient: str, stage: str
) -> None:
    smtp = RecordingSMTP()
    session = delivering.Session(cast(Any, smtp), "mx.gmail.test")
    reply = await session.send(sender=sender, recipient=recipient, data=b"x\r\n")
    assert smtp.commands == []
    # A soft bounce of this message: nobody is suppressed over a local refusal.
    assert (reply.code, reply.enhanced, reply.stage) == (554, "5.5.2", stage)
    assert not session.broken


@pytest.mark.parametrize(
    "data",
    [b"a\r\nb\r\n", b"a\r\n.b\r\n", b".a\r\n", b"a\nb", b"a\rb\r\n", b"a\r\n..\r\n", b"", b"x"],
    ids=["plain", "a line with a dot", "a first line with a dot", "bare LF, no final CRLF",
         "bare CR", "a stuffed dot", "empty", "no line end"],
)
def test_the_wire_form_is_what_aiosmtplib_would_send(data: bytes) -> None:
    expected = aiosmtplib.protocol.PERIOD_REGEX.sub(
        b"..", aiosmtplib.protocol.normalize_message_line_endings(data)) + b".\r\n"
    assert delivering._wire_form(data) == expected
