"""The provider simulators over real loopback SMTP: what the sender's delivery, throttling and
bounce handling tests rely on, and independent SPF/DKIM/DMARC verdicts on what arrives."""

from __future__ import annotations

import asyncio
import base64
import email
import email.message
import json
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import (
    ProviderBehaviour,
    ProviderFleet,
    SmtpReceiver,
    make_self_signed_context,
)

SOURCE_IP = "127.0.0.7"


def message(
    from_addr: str = "news@example.test", to: str = "alice@gmail.test", subject: str = "Hello"
) -> bytes:
    return (
        f"From: {from_addr}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\nHi there.\r\n"
    ).encode()


async def send(
    receiver: SmtpReceiver,
    data: bytes,
    rcpts: list[str],
    *,
    mail_from: str = "bounce@example.test",
    source_ip: str = SOURCE_IP,
    helo: str = "out1.example.test",
    start_tls: bool = False,
    mail_options: list[str] | None = None,
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    client = aiosmtplib.SMTP(
        hostname=receiver.host,
        port=receiver.port,
        source_address=(source_ip, 0),
        local_hostname=helo,
        start_tls=start_tls,
        validate_certs=False,
        timeout=5,
    )
    await client.connect()
    try:
        errors, reply = await client.sendmail(mail_from, rcpts, data, mail_options=mail_options)
    finally:
        if client.is_connected:
            await client.quit()
    return errors, reply


async def test_accepted_message_is_recorded_with_peer_ip_helo_and_envelope(
    tmp_path: Path,
) -> None:
    record_file = tmp_path / "sink.jsonl"
    async with SmtpReceiver(eml_dir=tmp_path / "eml", record_file=record_file) as receiver:
        await send(receiver, message(), ["alice@gmail.test", "bob@gmail.test"])
        [received] = await receiver.wait_for(1)
    assert received.peer_ip == SOURCE_IP
    assert received.helo == "out1.example.test"
    assert received.mail_from == "bounce@example.test"
    assert received.rcpt_to == ("alice@gmail.test", "bob@gmail.test")
    assert received.data == message()
    assert received.tls is False
    assert received.header("Subject") == "Hello"
    assert receiver.received_by_ip() == {SOURCE_IP: 1}
    entry = json.loads(record_file.read_text().splitlines()[0])
    assert entry["peer_ip"] == SOURCE_IP
    assert (tmp_path / "eml" / entry["eml"]).read_bytes() == message()


async def test_several_messages_on_one_connection_are_each_recorded() -> None:
    async with SmtpReceiver() as receiver:
        client = aiosmtplib.SMTP(hostname=receiver.host, port=receiver.port, timeout=5)
        await client.connect()
        for n in range(3):
            await client.sendmail("bounce@example.test", ["a@gmail.test"], message(subject=f"m{n}"))
        await client.quit()
        received = await receiver.wait_for(3)
    assert [m.header("Subject") for m in received] == ["m0", "m1", "m2"]
    assert sum(receiver.connections_total.values()) == 1


async def test_unknown_user_and_full_mailbox_are_answered_per_recipient() -> None:
    behaviour = ProviderBehaviour(
        unknown_users={"ghost@gmail.test"}, full_mailboxes={"full@gmail.test"}
    )
    async with SmtpReceiver("gmail", behaviour=behaviour) as receiver:
        errors, _ = await send(
            receiver, message(), ["ok@gmail.test", "ghost@gmail.test", "full@gmail.test"]
        )
        [received] = await receiver.wait_for(1)
    assert errors["ghost@gmail.test"].code == 550
    assert errors["ghost@gmail.test"].message.startswith("5.1.1 ")
    assert errors["full@gmail.test"].code == 452
    assert errors["full@gmail.test"].message.startswith("4.2.2 ")
    assert received.rcpt_to == ("ok@gmail.test",)
    assert receiver.codes_for("ghost@gmail.test") == [550]
    assert receiver.codes_for("ok@gmail.test", stage=None) == [250, 250]


async def test_above_the_per_ip_rate_the_provider_answers_421_and_closes() -> None:
    behaviour = ProviderBehaviour(rate_limit_per_ip=0.2)  # one message per 5 s
    async with SmtpReceiver("yahoo", behaviour=behaviour) as receiver:
        await send(receiver, message(), ["a@yahoo.test"])
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await send(receiver, message(), ["a@yahoo.test"])
        # another source IP has its own budget
        await send(receiver, message(), ["a@yahoo.test"], source_ip="127.0.0.8")
        await receiver.wait_for(2)
    [(code, text)] = [(r.code, r.message) for r in refused.value.recipients]
    assert code == 421
    assert text.startswith("4.7.0 [TSS04]")
    assert receiver.received_by_ip() == {SOURCE_IP: 1, "127.0.0.8": 1}
    assert receiver.codes_for("a@yahoo.test") == [250, 421, 250]


async def test_scripted_answers_at_rcpt_and_at_data() -> None:
    behaviour = ProviderBehaviour(
        scripted={"blocked@outlook.test": (554, "5.7.1 Service unavailable; Client host blocked")},
        data_scripted={"spamcheck@outlook.test": (550, "5.7.350 Message rejected as spam")},
    )
    async with SmtpReceiver("outlook", behaviour=behaviour) as receiver:
        errors, _ = await send(receiver, message(), ["blocked@outlook.test", "x@outlook.test"])
        with pytest.raises(aiosmtplib.SMTPDataError) as data_error:
            await send(receiver, message(), ["spamcheck@outlook.test"])
    assert errors["blocked@outlook.test"].code == 554
    assert data_error.value.code == 550
    assert len(receiver.messages) == 1
    assert receiver.codes_for("spamcheck@outlook.test", stage="DATA") == [550]


async def test_connections_over_the_per_ip_limit_get_421_at_greeting() -> None:
    behaviour = ProviderBehaviour(max_connections_per_ip=1)
    async with SmtpReceiver("outlook", behaviour=behaviour) as receiver:
        first = aiosmtplib.SMTP(hostname=receiver.host, port=receiver.port, timeout=5)
        await first.connect()
        second = aiosmtplib.SMTP(hostname=receiver.host, port=receiver.port, timeout=5)
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
            await second.connect()
        await first.quit()
    assert refused.value.code == 421
    assert receiver.peak_connections["127.0.0.1"] == 2


async def test_utf8_addresses_and_8bit_bodies_are_accepted() -> None:
    data = "From: news@example.test\r\nTo: josé@orange.test\r\nSubject: été\r\n\r\nCafé\r\n"
    async with SmtpReceiver("orange") as receiver:
        await send(
            receiver,
            data.encode(),
            ["josé@orange.test"],
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
        [received] = await receiver.wait_for(1)
    assert received.rcpt_to == ("josé@orange.test",)
    assert received.data == data.encode()


async def test_greeting_delay_holds_the_banner_back() -> None:
    async with SmtpReceiver(behaviour=ProviderBehaviour(greeting_delay=0.3)) as receiver:
        loop = asyncio.get_running_loop()
        started = loop.time()
        client = aiosmtplib.SMTP(hostname=receiver.host, port=receiver.port, timeout=5)
        await client.connect()
        elapsed = loop.time() - started
        await client.quit()
    assert elapsed >= 0.3


async def test_starttls_is_offered_and_recorded() -> None:
    context = make_self_signed_context("mx.gmail.test")
    async with SmtpReceiver("gmail", starttls_context=context) as receiver:
        await send(receiver, message(), ["a@gmail.test"], start_tls=True)
        [received] = await receiver.wait_for(1)
    assert received.tls is True


async def test_starttls_context_presents_the_hostname_certificate() -> None:
    context = make_self_signed_context("mx.gmail.test")
    async with SmtpReceiver("gmail", starttls_context=context) as receiver:
        client = aiosmtplib.SMTP(
            hostname=receiver.host, port=receiver.port, timeout=5, start_tls=False
        )
        await client.connect()
        await client.starttls(validate_certs=False)
        der = client.get_transport_info("ssl_object").getpeercert(binary_form=True)
        await client.quit()
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["mx.gmail.test"]


# ----------------------------------------------------------------- verification


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def sign(data: bytes, domain: str, selector: str, private: bytes, algorithm: bytes) -> bytes:
    signature = dkim.sign(
        data,
        selector.encode(),
        domain.encode(),
        private,
        signature_algorithm=algorithm,
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"],
        canonicalize=(b"relaxed", b"relaxed"),
    )
    return bytes(signature) + data


def publish_auth(
    dns_server: DNSServer, dkim_record: str, *, dmarc: str = "v=DMARC1; p=reject"
) -> None:
    dns_server.set_records("example.test", "TXT", [f"v=spf1 ip4:{SOURCE_IP} -all"])
    dns_server.set_records("s1._domainkey.example.test", "TXT", [dkim_record])
    dns_server.set_records("_dmarc.example.test", "TXT", [dmarc])


async def test_rsa_signed_aligned_mail_passes_spf_dkim_and_dmarc(
    smtp_receiver: SmtpReceiver, dns_server: DNSServer, rsa_key: tuple[bytes, str]
) -> None:
    private, record = rsa_key
    publish_auth(dns_server, record)
    signed = sign(message(), "example.test", "s1", private, b"rsa-sha256")
    await send(smtp_receiver, signed, ["a@gmail.test"])
    [received] = await smtp_receiver.wait_for(1)
    assert received.verdicts["spf"] == "pass"
    assert received.verdicts["dkim"] == "pass"
    assert received.verdicts["dkim.domains"] == "example.test"
    assert received.verdicts["dmarc"] == "pass"
    assert received.verdicts["dmarc.policy"] == "reject"


async def test_ed25519_signature_verifies(
    smtp_receiver: SmtpReceiver, dns_server: DNSServer
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    publish_auth(dns_server, f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}")
    signed = sign(message(), "example.test", "s1", base64.b64encode(seed), b"ed25519-sha256")
    await send(smtp_receiver, signed, ["a@gmail.test"])
    [received] = await smtp_receiver.wait_for(1)
    assert received.verdicts["dkim"] == "pass"


async def test_altered_body_fails_dkim_but_aligned_spf_still_passes_dmarc(
    smtp_receiver: SmtpReceiver, dns_server: DNSServer, rsa_key: tuple[bytes, str]
) -> None:
    private, record = rsa_key
    publish_auth(dns_server, record)
    signed = sign(message(), "example.test", "s1", private, b"rsa-sha256")
    await send(smtp_receiver, signed.replace(b"Hi there.", b"Hi there!"), ["a@gmail.test"])
    [received] = await smtp_receiver.wait_for(1)
    assert received.verdicts["dkim"] == "fail"
    assert received.verdicts["spf"] == "pass"
    assert received.verdicts["dmarc"] == "pass"


async def test_unlisted_source_ip_fails_spf_and_unsigned_mail_fails_dmarc(
    smtp_receiver: SmtpReceiver, dns_server: DNSServer, rsa_key: tuple[bytes, str]
) -> None:
    publish_auth(dns_server, rsa_key[1])
    await send(smtp_receiver, message(), ["a@gmail.test"], source_ip="127.0.0.9")
    [received] = await smtp_receiver.wait_for(1)
    assert received.verdicts["spf"] == "fail"
    assert received.verdicts["dkim"] == "none"
    assert received.verdicts["dmarc"] == "fail"


async def test_signature_of_an_unaligned_domain_does_not_pass_dmarc(
    smtp_receiver: SmtpReceiver, dns_server: DNSServer, rsa_key: tuple[bytes, str]
) -> None:
    private, record = rsa_key
    publish_auth(dns_server, record)
    dns_server.set_records("s1._domainkey.esp.test", "TXT", [record])
    signed = sign(message(), "esp.test", "s1", private, b"rsa-sha256")
    await send(smtp_receiver, signed, ["a@gmail.test"], source_ip="127.0.0.9")
    [received] = await smtp_receiver.wait_for(1)
    assert received.verdicts["dkim"] == "pass"
    assert received.verdicts["dmarc"] == "fail"


async def test_subdomain_from_uses_the_organizational_policy_and_its_sp(
    smtp_receiver: SmtpReceiver, dns_server: DNSServer, rsa_key: tuple[bytes, str]
) -> None:
    private, record = rsa_key
    publish_auth(dns_server, record, dmarc="v=DMARC1; p=reject; sp=quarantine; adkim=r")
    data = sign(message(from_addr="news@mail.example.test"), "example.test", "s1", private,
                b"rsa-sha256")  # fmt: skip
    await send(smtp_receiver, data, ["a@gmail.test"], source_ip="127.0.0.9")
    [received] = await smtp_receiver.wait_for(1)
    assert received.verdicts["dmarc"] == "pass"  # relaxed: example.test aligns
    assert received.verdicts["dmarc.policy"] == "quarantine"


async def test_strict_dkim_alignment_rejects_the_parent_domain(
    smtp_receiver: SmtpReceiver, dns_server: DNSServer, rsa_key: tuple[bytes, str]
) -> None:
    private, record = rsa_key
    publish_auth(dns_server, record, dmarc="v=DMARC1; p=reject; adkim=s")
    data = sign(message(from_addr="news@mail.example.test"), "example.test", "s1", private,
                b"rsa-sha256")  # fmt: skip
    await send(smtp_receiver, data, ["a@gmail.test"], source_ip="127.0.0.9")
    [received] = await smtp_receiver.wait_for(1)
    assert received.verdicts["dmarc"] == "fail"


async def test_without_a_dmarc_record_the_verdict_is_none(
    smtp_receiver: SmtpReceiver, dns_server: DNSServer
) -> None:
    dns_server.set_records("example.test", "TXT", [f"v=spf1 ip4:{SOURCE_IP} -all"])
    await send(smtp_receiver, message(), ["a@gmail.test"])
    [received] = await smtp_receiver.wait_for(1)
    assert received.verdicts["spf"] == "pass"
    assert received.verdicts["dmarc"] == "none"


# ----------------------------------------------------------------- complaints and fleet


async def test_complaints_are_sent_as_arf_reports_for_the_configured_fraction() -> None:
    async with SmtpReceiver("fbl-inbox", port=0) as inbox:
        behaviour = ProviderBehaviour(complaint_rate=0.5)
        async with SmtpReceiver(
            "yahoo",
            behaviour=behaviour,
            feedback_target=(inbox.host, inbox.port),
            feedback_rcpt="fbl@example.test",
        ) as provider:
            for n in range(4):
                await send(provider, message(subject=f"offer {n}"), [f"u{n}@yahoo.test"])
            reports = await inbox.wait_for(2)
    assert all(r.rcpt_to == ("fbl@example.test",) for r in reports)
    # every second accepted message is reported: offers 1 and 3 (sent concurrently, any order)
    [first] = [r for r in reports if b"offer 1" in r.data]
    assert any(b"offer 3" in r.data for r in reports)
    report = email.message_from_bytes(first.data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "feedback-report"
    parts: Any = report.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/feedback-report",
        "text/rfc822-headers",
    ]
    feedback = parts[1].as_string()
    assert "Feedback-Type: abuse" in feedback
    assert f"Source-IP: {SOURCE_IP}" in feedback
    assert "Original-Rcpt-To: <u1@yahoo.test>" in feedback
    assert "Subject: offer 1" in parts[2].as_string()
    assert len(provider.complaints) == 2


async def test_accepted_then_bounced_recipient_gets_a_dsn_sent_to_the_envelope_sender() -> None:
    async with SmtpReceiver("bounce-inbox") as inbox:
        behaviour = ProviderBehaviour(bounce_after_accept={"gone@orange.test"})
        async with SmtpReceiver("orange", behaviour=behaviour) as provider:
            provider.bounce_target = (inbox.host, inbox.port)
            errors, _ = await send(provider, message(), ["gone@orange.test", "ok@orange.test"])
            [dsn] = await inbox.wait_for(1)
    assert errors == {}
    assert dsn.mail_from == ""
    assert dsn.rcpt_to == ("bounce@example.test",)
    parsed = email.message_from_bytes(dsn.data)
    assert parsed.get_param("report-type") == "delivery-status"
    assert b"Final-Recipient: rfc822; gone@orange.test" in dsn.data
    assert b"Status: 5.1.1" in dsn.data


async def test_fleet_publishes_mx_records_and_serves_every_provider_on_one_port(
    provider_fleet: ProviderFleet, dns_server: DNSServer
) -> None:
    resolver = dns_server.resolver()
    for domain, address in [("gmail.test", "127.0.10.1"), ("orange.test", "127.0.10.4")]:
        mx = await resolver.resolve(domain, "MX")
        a = await resolver.resolve(mx[0].exchange, "A")
        assert a[0].to_text() == address
        receiver = provider_fleet.provider_for(f"someone@{domain}")
        assert receiver is not None
        assert (receiver.host, receiver.port) == (address, provider_fleet.port)
        await send(receiver, message(to=f"someone@{domain}"), [f"someone@{domain}"])
    received = await provider_fleet.wait_for(2)
    assert sorted(m.provider for m in received) == ["gmail", "orange"]
    assert len({r.port for r in provider_fleet}) == 1
