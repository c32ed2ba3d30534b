"""Fuzzing SMTP submission through a real aiosmtpd session on 127.0.0.1: arbitrary command lines
and DATA bodies. Every answer is a well-formed SMTP reply with a valid code, no exception escapes
into aiosmtpd's catch-all ("500 Error: (SomeException) ..." and a logged traceback), nothing
hangs, and afterwards the sender still takes a well-behaved client's mail.

Hypothesis runs in a worker thread with blocking sockets while the sender serves on the test's
event loop. Budget: a fixed number of examples, derandomized, no example database.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import RunningSender, SenderFactory, base_config, lease, make_dkim_keys

REPLY_LINE = re.compile(rb"^([2-5][0-5][0-9])([ -])(.*)$", re.DOTALL)
HANG = 30.0
"""Seconds without an answer that count as a hang (far above any honest reply under load)."""
GOOD = (b"From: a@example.test\r\nTo: ok@gmail.test\r\nSubject: fine\r\n"
        b"Message-ID: <fuzz-good@example.test>\r\n\r\nhello\r\n")

text_bytes = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass").replace(b"\n", b"")),
    st.sampled_from([b"", b"<>", b"<a@example.test>", b"<x@gmail.test>", b"<@a,@b:c@d>",
                     b"<a@[127.0.0.1]>", b"<\"q uo\"@example.test>", b"<a@b> SIZE=99999999999",
                     b"<a@b> BODY=8BITMIME", b"<a@b> SMTPUTF8", b"<a@b> SIZE=-1",
                     b"<" + b"a" * 300 + b"@example.test>", b"<a@example.test> X=\x00"]),
)
verbs = st.sampled_from([
    b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"MAIL FROM: ", b"RCPT TO: ", b"DATA",
    b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP", b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH",
    b"STARTTLS", b"BDAT", b"ETRN", b"mail from:", b"XCLIENT", b"\x00", b"",
])
command = st.one_of(
    st.builds(lambda verb, arg: verb + (b" " if verb and not verb.endswith(b":") else b"") + arg,
              verbs, text_bytes),
    st.builds(lambda arg: b"AUTH PLAIN " + base64.b64encode(arg), st.binary(max_size=60)),
    st.binary(min_size=1, max_size=3000).map(lambda b: b.replace(b"\n", b"")),
)
body = st.one_of(
    st.just(GOOD),
    st.binary(max_size=3000),
    st.lists(st.one_of(text_bytes, st.sampled_from([b"From: a@example.test", b"To: x@gmail.test",
                                                    b"", b".", b"..", b"Subject: \xff",
                                                    b"X: " + b"y" * 2000, b" folded"])),
             max_size=30).map(lambda lines: b"\r\n".join(lines)),
)
opening = [b"EHLO fuzz.test", b"MAIL FROM:<a@example.test>", b"RCPT TO:<x@gmail.test>"]


def _dot_stuffed(data: bytes) -> bytes:
    """The DATA payload as a client sends it: every line starting with a dot doubled (under
    either line ending, so no fuzzed body ends the transfer early)."""
    lines = data.split(b"\n")
    return b"\n".join(b"." + line if line.startswith(b".") else line for line in lines)


class Session:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HANG)
        self.file = self.sock.makefile("rb")
        self.closed = False

    def reply(self) -> int | None:
        """One reply, checked line by line; None when the server closed the connection."""
        code: bytes | None = None
        while True:
            line = self.file.readline(70000)
            if not line:
                self.closed = True
                assert code is None, "connection closed in the middle of a reply"
                return None
            assert line.endswith(b"\r\n"), f"reply line without CRLF: {line!r}"
            match = REPLY_LINE.match(line[:-2])
            assert match is not None, f"not an SMTP reply line: {line!r}"
            assert code is None or match.group(1) == code, "codes differ within one reply"
            assert not match.group(3).startswith(b"Error: ("), f"an exception escaped: {line!r}"
            code = match.group(1)
            if match.group(2) == b" ":
                return int(code)

    def send(self, line: bytes) -> int | None:
        try:
            self.sock.sendall(line + b"\r\n")
        except OSError:
            self.closed = True
            return None
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _run(port: int, commands: list[bytes], data: bytes, with_opening: bool) -> None:
    session = Session(port)
    try:
        assert session.reply() == 220
        for line in (opening if with_opening else []) + commands + [b"DATA"]:
            code = session.send(line)
            if session.closed:
                return
            if code == 354:
                session.sock.sendall(_dot_stuffed(data) + b"\r\n.\r\n")
                session.reply()
            elif code == 334:  # AUTH asks for more: answer with a cancel
                session.send(b"*")
            if session.closed:
                return
        session.send(b"QUIT")
    finally:
        session.close()


FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture
async def sender(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> RunningSender:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["submission"].update(maxMessageSize=16 * 1024, maxHeaderSize=4 * 1024, maxRecipients=3)
    running = await sender_factory(cfg)
    await running.client.assign([lease("127.0.0.41")])
    return running


async def test_arbitrary_smtp_sessions_get_valid_replies(
    sender: RunningSender, caplog: pytest.LogCaptureFixture
) -> None:
    port = sender.smtp_port

    @FUZZ
    @given(commands=st.lists(command, max_size=12), data=body, with_opening=st.booleans())
    @example(commands=[], data=b"From: a@example.test\r\n\r\n" + b"x" * 40000, with_opening=True)
    @example(commands=[b"RCPT TO:<a@b>"] * 5, data=GOOD, with_opening=True)
    @example(commands=[b"AUTH PLAIN " + base64.b64encode(b"\x00u\x00")], data=GOOD,
             with_opening=False)
    @example(commands=[b"MAIL FROM:<a@example.test> SIZE=1"], data=GOOD, with_opening=False)
    @example(commands=[b"\xff\xfe"], data=b"\xff\r\n\r\n\xfe", with_opening=True)
    def fuzz(commands: list[bytes], data: bytes, with_opening: bool) -> None:
        _run(port, commands, data, with_opening)

    with caplog.at_level(logging.ERROR):
        await asyncio.to_thread(fuzz)
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]

    # The sender still serves: a well-behaved client's message is queued.
    def good_client() -> int | None:
        session = Session(port)
        try:
            session.reply()
            for line in [*opening, b"DATA"]:
                session.send(line)
            session.sock.sendall(GOOD + b".\r\n")
            return session.reply()
        finally:
            session.close()

    assert await asyncio.to_thread(good_client) == 250
