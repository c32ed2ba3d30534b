"""Closed by default (issue 16 item 1), over real loopback sockets: a sender without
credentials refuses every submission; an empty password never logs in; AUTH is not offered
in clear; credentials are held to their From domains; each listener serves only its paths."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    API_KEY,
    PEER_TOKEN,
    RunningSender,
    SenderFactory,
    base_config,
)

MESSAGE = {"from": "App <app@example.test>", "to": ["x@gmail.test"], "subject": "s",
           "text": "hello"}


def closed_config(tmp: Path, dns: DNSServer, port: int, **submission: Any) -> dict[str, Any]:
    """The test config without its open-SMTP switch and without an API key: what the
    operator renders for a pool that names no Secret (before its generated one)."""
    cfg = base_config(tmp, dns=dns, destination_port=port)
    cfg["submission"].pop("allowUnauthenticated")
    cfg["submission"].pop("apiKeyFile")
    cfg["submission"].update(submission)
    return cfg


class Conversation:
    """A raw SMTP session: every reply read whole (code, text)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conversation:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        talk = cls(reader, writer)
        await talk.reply()
        return talk

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode()
            lines.append(line[4:].strip())
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    async def say(self, command: str | bytes) -> tuple[int, str]:
        raw = command.encode() if isinstance(command, str) else command
        self.writer.write(raw + b"\r\n")
        return await self.reply()

    async def login(self, user: str, password: str) -> tuple[int, str]:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return await self.say(f"AUTH PLAIN {token}")

    async def send(self, sender: str, data: bytes) -> tuple[int, str]:
        """MAIL, RCPT, DATA; the first refusal, else the answer to the data."""
        for command in (f"MAIL FROM:<{sender}>", "RCPT TO:<x@gmail.test>", "DATA"):
            code, text = await self.say(command)
            if code >= 400:
                return code, text
        return await self.say(data + b"\r\n.")

    def close(self) -> None:
        self.writer.close()


def message(from_header: str) -> bytes:
    return (f"From: {from_header}\r\nTo: x@gmail.test\r\nSubject: s\r\n\r\nhello").encode()


async def accepted(sender: RunningSender) -> int:
    return int((await sender.client.stats())["totals"]["accepted"])


async def test_without_credentials_smtp_answers_530_and_http_401_and_nothing_is_queued(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING")
    sender = await sender_factory(
        closed_config(tmp_path, dns_server, provider_fleet.port, allowPlaintextAuth=True)
    )
    talk = await Conversation.open(sender.smtp_port)
    try:
        await talk.say("EHLO app.test")
        code, text = await talk.send("app@example.test", message("app@example.test"))
        assert (code, text.split()[0]) == (530, "5.7.0")
        assert (await talk.login("mailfleet", ""))[0] == 535  # no user can log in
        assert (await talk.send("app@example.test", message("app@example.test")))[0] == 530
    finally:
        talk.close()
    for key in (None, "guess", API_KEY):
        status, body = await sender.client.request("POST", "/v1/messages", json=MESSAGE,
                                                   token=key)
        assert (status, body["code"]) == (401, "auth")
    assert await accepted(sender) == 0
    said = caplog.text
    assert "AUTH never succeeds" in said and "answers 401" in said


async def test_allow_unauthenticated_keeps_the_open_behaviour_for_trusted_networks(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await sender_factory(
        closed_config(tmp_path, dns_server, provider_fleet.port, allowUnauthenticated=True)
    )
    talk = await Conversation.open(sender.smtp_port)
    try:
        await talk.say("EHLO app.test")
        code, _ = await talk.send("app@example.test", message("app@example.test"))
        assert code == 250
    finally:
        talk.close()
    status, _ = await sender.client.request("POST", "/v1/messages", json=MESSAGE)
    assert status == 202
    assert await accepted(sender) == 2


async def test_an_empty_password_never_logs_in_and_auth_is_not_offered_in_clear(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    users = tmp_path / "smtp-users"  # a mounted Secret: one file per user
    users.mkdir()
    (users / "empty").write_text("")
    (users / "app").write_text("s3cret\n")
    cfg = closed_config(tmp_path, dns_server, provider_fleet.port,
                        credentialsFile=str(users))
    sender = await sender_factory(cfg)
    talk = await Conversation.open(sender.smtp_port)
    try:
        code, ehlo = await talk.say("EHLO app.test")
        assert code == 250 and "AUTH" not in ehlo  # no TLS, no allowPlaintextAuth
        assert (await talk.login("app", "s3cret"))[0] == 538
        assert (await talk.send("app@example.test", message("app@example.test")))[0] == 530
    finally:
        talk.close()

    cfg["submission"]["allowPlaintextAuth"] = True
    plain = await sender_factory(cfg, pod="sender-plain")
    talk = await Conversation.open(plain.smtp_port)
    try:
        code, ehlo = await talk.say("EHLO app.test")
        assert "AUTH" in ehlo
        assert (await talk.login("empty", ""))[0] == 535
        assert (await talk.login("app", ""))[0] == 535
        assert (await talk.login("app", "s3cret"))[0] == 235
        assert (await talk.send("app@example.test", message("app@example.test")))[0] == 250
    finally:
        talk.close()


async def test_credentials_are_held_to_their_from_domains(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    cfg["submission"].update(smtpFromDomains=["example.test"],
                             httpFromDomains=["Example.TEST."])
    sender = await sender_factory(cfg)
    talk = await Conversation.open(sender.smtp_port)
    try:
        await talk.say("EHLO app.test")
        for envelope, header in (
            ("app@example.test", "boss@bank.test"),  # From header outside
            ("app@bank.test", "app@example.test"),  # envelope sender outside
            ("app@news.example.test", "app@news.example.test"),  # a subdomain not listed
        ):
            code, text = await talk.send(envelope, message(header))
            assert (code, text.split()[0]) == (550, "5.7.1"), (envelope, header)
            await talk.say("RSET")
        assert (await talk.send("app@example.test", message("App <app@example.test>")))[0] \
            == 250
    finally:
        talk.close()
    for payload in (
        {**MESSAGE, "from": "boss@bank.test"},
        {**MESSAGE, "envelopeFrom": "bounce@bank.test"},
        {**MESSAGE, "from": "app@news.example.test"},
    ):
        status, body = await sender.client.submit(payload)
        assert status == 403, (payload, body)
    raw = message("boss@bank.test") + b"\r\n"
    status, _ = await sender.client.request(
        "POST", "/v1/messages?to=x@gmail.test", data=raw, token=API_KEY,
        headers={"Content-Type": "message/rfc822"})
    assert status == 403
    assert (await sender.client.submit(MESSAGE))[0] == 202
    assert await accepted(sender) == 2  # only the two allowed messages were queued


async def test_each_listener_serves_only_its_own_paths(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await sender_factory(
        base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    )
    c = sender.client
    assert len({c.base, c.admin, c.public}) == 3
    for path, wrong in (
        ("/metrics", ("submission", "public")),
        ("/healthz", ("submission", "public")),
        ("/v1/stats", ("submission", "public")),
        ("/v1/suppressions", ("submission", "public")),
        ("/v1/unsubscribe/abc", ("submission", "admin")),
    ):
        for listener in wrong:
            status, _ = await c.request("GET", path, via=listener, token=ADMIN_TOKEN)
            assert status == 404, (path, listener)
    status, _ = await c.request("POST", "/v1/messages", via="public", json=MESSAGE,
                                token=API_KEY)
    assert status == 404
    assert (await c.request("GET", "/metrics"))[0] == 200
    assert (await c.request("GET", "/v1/unsubscribe/abc"))[0] == 200  # the form page
    # The admin listener takes hand-offs from the pool's pods, with the peer token only.
    # Each secret has one purpose: neither the API key nor the admin token hands off.
    for wrong_token in (API_KEY, ADMIN_TOKEN):
        status, _ = await c.request("POST", "/v1/messages", admin=True, json=MESSAGE,
                                    token=wrong_token)
        assert status == 401
    status, _ = await c.request("POST", "/v1/messages", admin=True, json=MESSAGE,
                                token=PEER_TOKEN)
    assert status == 202
