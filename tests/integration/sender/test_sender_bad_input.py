"""Bad input gets the right refusal, leaves nothing half-written in the spool, and the sender
keeps serving well-behaved clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosmtplib
import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    API_KEY,
    RunningSender,
    SenderFactory,
    base_config,
    lease,
    make_dkim_keys,
)

GOOD = b"From: a@example.test\r\nTo: ok@gmail.test\r\nSubject: fine\r\n\r\nhello\r\n"


@pytest.fixture
async def sender(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> RunningSender:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["submission"].update(maxMessageSize=64 * 1024, maxHeaderSize=8 * 1024, maxRecipients=3,
                             maxConnections=20)
    running = await sender_factory(cfg)
    await running.client.assign([lease("127.0.0.41")])
    return running


async def _smtp_data(port: int, data: bytes) -> tuple[int, str]:
    """Send one message with raw DATA bytes (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        for command in (b"EHLO client.test", b"MAIL FROM:<a@example.test>",
                        b"RCPT TO:<x@gmail.test>", b"DATA"):
            writer.write(command + b"\r\n")
            await _reply(reader)
        writer.write(data + b"\r\n.\r\n")
        code, text = await _reply(reader)
        writer.write(b"QUIT\r\n")
        return code, text
    finally:
        writer.close()


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = (await asyncio.wait_for(reader.readline(), 10)).decode()
        lines.append(line[4:].strip())
        if line[3:4] != "-":
            return int(line[:3]), " ".join(lines)


@pytest.mark.parametrize(
    ("data", "code", "enhanced"),
    [
        (b"To: x@gmail.test\r\nSubject: no from\r\n\r\nbody", 554, "5.6.0"),
        (b"From: a@example.test\r\nSubject: bare lf\n\r\nbody", 554, "5.6.0"),
        (b"From: a@example.test\r\nSubject: bare cr\r\rX: y\r\n\r\nbody", 554, "5.6.0"),
        ("From: a@example.test\r\nSubject: caf\u00e9\r\n\r\nbody".encode(), 554, "5.6.7"),
        (b"From: a@example.test\r\n" + b"X-Big: " + b"y" * 900 + b"\r\n" +
         b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\nbody", 552, "5.3.4"),
        (b"From: a@example.test, b@example.test\r\n\r\nbody", 554, "5.6.0"),
    ],
    ids=["no From header", "bare LF", "bare CR", "8-bit header without SMTPUTF8",
         "header section over the limit", "two From addresses"],
)
async def test_malformed_messages_are_refused_over_smtp(
    sender: RunningSender, data: bytes, code: int, enhanced: str
) -> None:
    got_code, text = await _smtp_data(sender.smtp_port, data)
    assert (got_code, text.split()[0]) == (code, enhanced), text
    assert sender.service.spool.count_pending() == 0


async def test_smuggled_end_of_data_is_not_honoured(
    sender: RunningSender, provider_fleet: ProviderFleet
) -> None:
    smuggling = (
        b"From: a@example.test\r\nTo: x@gmail.test\r\n\r\nhello\n.\n"
        b"MAIL FROM:<evil@example.test>\r\nRCPT TO:<victim@gmail.test>\r\nDATA\r\n"
        b"From: ceo@example.test\r\n\r\nsmuggled\r\n"
    )
    code, _ = await _smtp_data(sender.smtp_port, smuggling)
    assert code == 554
    smuggling_cr = smuggling.replace(b"\n.\n", b"\r\n.\r")  # <CR><LF>.<CR> variant
    code, _ = await _smtp_data(sender.smtp_port, smuggling_cr)
    assert code == 554
    assert sender.service.spool.count_pending() == 0
    await asyncio.sleep(0.3)
    assert provider_fleet.messages == []


async def test_oversized_body_too_many_recipients_and_bad_login_are_refused(
    sender: RunningSender,
) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sender.smtp_port) as client:
        big = GOOD + b"z" * 70 * 1024 + b"\r\n"
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.sendmail("a@example.test", ["x@gmail.test"], big)
        assert refused.value.code == 552
        await client.rset()
        await client.mail("a@example.test")
        for n in range(3):
            await client.rcpt(f"r{n}@gmail.test")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as too_many:
            await client.rcpt("r3@gmail.test")
        assert too_many.value.code == 452
        await client.rset()
    assert sender.service.spool.count_pending() == 0


async def test_command_floods_are_cut_off_and_others_are_still_served(
    sender: RunningSender, provider_fleet: ProviderFleet
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sender.smtp_port)
    await _reply(reader)
    writer.write(b"EHLO flood.test\r\n" + b"VRFY someone\r\n" * 2000)  # pipelined flood
    closed_with = None
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line:
            break
        if line.startswith(b"421"):
            closed_with = line
    writer.close()
    assert closed_with is not None  # the session was ended, not served 2,000 times

    # Meanwhile a normal client submits fine.
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sender.smtp_port) as client:
        await client.sendmail("a@example.test", ["ok@gmail.test"], GOOD)
    await provider_fleet["gmail"].wait_for(1)


async def test_http_refusals_have_the_right_status(
    sender: RunningSender, provider_fleet: ProviderFleet
) -> None:
    client = sender.client
    ok = {"from": "a@example.test", "to": ["ok@gmail.test"], "subject": "s", "text": "t"}
    cases = [
        (dict(json=ok, token="wrong-key"), 401),
        (dict(json=ok, token=None), 401),
        (dict(data=b"{not json", token=API_KEY,
              headers={"Content-Type": "application/json"}), 400),
        (dict(json={**ok, "unexpected": 1}, token=API_KEY), 400),
        (dict(json={**ok, "to": []}, token=API_KEY), 400),
        (dict(json={**ok, "to": ["not an address"]}, token=API_KEY), 400),
        (dict(json={**ok, "class": "nope"}, token=API_KEY), 400),
        (dict(json={**ok, "headers": {"X-Evil": "a\r\nBcc: x@y.test"}}, token=API_KEY), 400),
        (dict(data=b"From: a@example.test\n\nbare lf", token=API_KEY,
              params={"to": "ok@gmail.test"}, headers={"Content-Type": "message/rfc822"}), 400),
        # Raw without ?to= takes the recipients from To/Cc/Bcc; here there are none.
        (dict(data=GOOD.replace(b"To: ok@gmail.test\r\n", b""), token=API_KEY,
              headers={"Content-Type": "message/rfc822"}), 400),
        (dict(data=GOOD, token=API_KEY, params={"to": "ok@gmail.test"},
              headers={"Content-Type": "message/rfc822", "X-Mailfleet-Handoff": "k" * 200}), 400),
        (dict(data=GOOD + b"z" * 200 * 1024, token=API_KEY, params={"to": "ok@gmail.test"},
              headers={"Content-Type": "message/rfc822"}), 413),
        (dict(data=b"x", token=API_KEY, headers={"Content-Type": "image/png"}), 415),
    ]
    for kwargs, expected in cases:
        status, body = await client.request("POST", "/v1/messages", **kwargs)  # type: ignore[arg-type]
        assert status == expected, (kwargs, body)
    assert sender.service.spool.count_pending() == 0

    status, _ = await client.request(
        "POST", "/v1/messages", data=GOOD, token=API_KEY, params={"to": "ok@gmail.test"},
        headers={"Content-Type": "message/rfc822"})
    assert status == 202
    await provider_fleet["gmail"].wait_for(1)
    status, _ = await client.request("GET", "/v1/stats", admin=True, token="nope")
    assert status == 401
