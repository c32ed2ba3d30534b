"""End to end over loopback: submit by HTTP or SMTP, the sender signs and delivers to the
sandbox providers through the sandbox DNS; every signature is verified with dkimpy."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiosmtplib
import dkim
import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet, SmtpReceiver, make_self_signed_cert
from sandbox_fixtures.sender import SenderFactory, base_config, lease, make_dkim_keys
from sandbox_fixtures.waiting import eventually


def _verify_all(data: bytes, keys_dnsfunc: object, count: int) -> None:
    signer = dkim.DKIM(data)
    for index in range(count):
        assert signer.verify(idx=index, dnsfunc=keys_dnsfunc), f"signature {index} fails"


@pytest.mark.parametrize(
    ("rsa_key", "ed_key", "algorithms"),
    [
        (True, False, ["rsa-sha256"]),
        (False, True, ["ed25519-sha256"]),
        (True, True, ["rsa-sha256", "ed25519-sha256"]),
    ],
    ids=["rsa-2048 signature verifies", "ed25519 signature verifies", "dual signing verifies"],
)
async def test_http_message_is_signed_and_delivered_from_the_leased_ip(
    tmp_path: Path,
    dns_server: DNSServer,
    provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
    rsa_key: bool,
    ed_key: bool,
    algorithms: list[str],
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    cfg["dkim"] = {"domains": [keys.config(rsa_key=rsa_key, ed_key=ed_key)]}
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.21", helo="mta21.example.test")])

    status, body = await sender.client.submit(
        {"from": "Shop <news@example.test>", "to": ["alice@gmail.test"], "subject": "Héllo",
         "text": "plain body\n", "html": "<p>html body</p>", "class": "transactional"}
    )
    assert status == 202, body
    [message] = await provider_fleet["gmail"].wait_for(1)

    assert message.peer_ip == "127.0.0.21"
    assert message.helo == "mta21.example.test"
    assert message.rcpt_to == ("alice@gmail.test",)
    signatures = [v for k, v in _headers(message.data) if k == "dkim-signature"]
    assert [s.split("a=")[1].split(";")[0] for s in signatures] == algorithms
    _verify_all(message.data, keys.dnsfunc, len(algorithms))
    assert message.verdicts.get("dkim") == "pass"


async def test_smtp_submission_with_auth_and_starttls_is_delivered_signed(
    tmp_path: Path,
    dns_server: DNSServer,
    provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cert, key = make_self_signed_cert("submit.example.test")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    creds = tmp_path / "smtp-users"
    creds.mkdir()
    (creds / "app").write_text("s3cret\n")
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["submission"].update(
        credentialsFile=str(creds), tlsCertFile=str(tmp_path / "tls.crt"),
        tlsKeyFile=str(tmp_path / "tls.key"),
    )
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.22")])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    raw = (
        b"From: App <app@mail.example.test>\r\nTo: bob@outlook.test\r\nSubject: receipt\r\n"
        b"X-Mailfleet-Class: transactional\r\n\r\nThanks.\r\n.leading dot line\r\n"
    )
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sender.smtp_port,
                               start_tls=True, tls_context=context) as client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await client.login("app", "wrong")
        await client.login("app", "s3cret")
        await client.sendmail("app@mail.example.test", ["bob@outlook.test"], raw)

    [message] = await provider_fleet["outlook"].wait_for(1)
    assert b".leading dot line" in message.data
    assert b"X-Mailfleet-Class" not in message.data
    assert _header(message.data, "message-id") is not None
    assert _header(message.data, "date") is not None
    # mail.example.test is signed by its parent domain's key (relaxed DMARC alignment).
    assert "d=example.test" in (_header(message.data, "dkim-signature") or "")
    _verify_all(message.data, keys.dnsfunc, 1)


async def test_mail_for_a_domain_without_key_is_held_until_a_key_appears(
    tmp_path: Path,
    dns_server: DNSServer,
    provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    missing = tmp_path / "keys" / "later.pem"
    cfg["dkim"] = {"domains": [{"domain": "example.test", "keys": [
        {"selector": keys.rsa_selector, "algorithm": "rsa", "keyFile": str(missing)}]}]}
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.23")])

    status, _ = await sender.client.submit(
        {"from": "a@example.test", "to": ["held@yahoo.test"], "subject": "s", "text": "t"}
    )
    assert status == 202

    async def held() -> bool:
        stats = await sender.client.stats()
        return bool(stats["queues"]["transactional"]["held"] == 1)

    await eventually(held, "the message held")
    assert provider_fleet["yahoo"].messages == []

    missing.write_bytes(keys.rsa_file.read_bytes())  # the Secret gets its key
    [message] = await provider_fleet["yahoo"].wait_for(1, timeout=10)
    _verify_all(message.data, keys.dnsfunc, 1)


async def test_relay_mode_sends_everything_to_the_smarthost_over_starttls(
    tmp_path: Path, dns_server: DNSServer, sender_factory: SenderFactory
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cert, key = make_self_signed_cert("relay.example.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    (tmp_path / "r.crt").write_bytes(cert)
    (tmp_path / "r.key").write_bytes(key)
    context.load_cert_chain(tmp_path / "r.crt", tmp_path / "r.key")
    async with SmtpReceiver("relay", "127.0.0.1", starttls_context=context) as relay:
        cfg = base_config(tmp_path, dns=dns_server, destination_port=1, keys=keys)
        cfg["delivery"].update(mode="relay", requireLease=False, relay={
            "host": "127.0.0.1", "port": relay.port, "tls": "starttls",
            "verifyCertificate": False})
        sender = await sender_factory(cfg)
        status, _ = await sender.client.submit(
            {"from": "a@example.test", "to": ["x@nowhere.invalid", "y@gmail.test"],
             "subject": "s", "text": "t"}
        )
        assert status == 202
        messages = await relay.wait_for(2)
        assert sorted(r for m in messages for r in m.rcpt_to) == [
            "x@nowhere.invalid", "y@gmail.test"]
        assert all(m.tls for m in messages)


async def test_relay_login_uses_the_mounted_credentials(
    tmp_path: Path, dns_server: DNSServer, sender_factory: SenderFactory
) -> None:
    # SmtpReceiver has no AUTH yet (reported to the lead); a bare aiosmtpd server checks it.
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    logins: list[tuple[bytes, bytes]] = []
    received: list[bytes] = []

    def authenticator(server, session, envelope, mechanism, data):  # type: ignore[no-untyped-def]
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"relaypass")

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            received.append(envelope.original_content)
            return "250 OK"

    import asyncio

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), authenticator=authenticator, auth_required=True,
                     auth_require_tls=False),
        "127.0.0.1", 0,
    )
    port = server.sockets[0].getsockname()[1]
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    (tmp_path / "user").write_text("relayuser\n")
    (tmp_path / "pass").write_text("relaypass\n")
    cfg = base_config(tmp_path, dns=dns_server, destination_port=1, keys=keys)
    cfg["delivery"].update(mode="relay", requireLease=False, relay={
        "host": "127.0.0.1", "port": port, "tls": "none",
        "usernameFile": str(tmp_path / "user"), "passwordFile": str(tmp_path / "pass")})
    try:
        sender = await sender_factory(cfg)
        status, _ = await sender.client.submit(
            {"from": "a@example.test", "to": ["y@gmail.test"], "subject": "s", "text": "t"})
        assert status == 202

        async def arrived() -> bool:
            return len(received) == 1

        await eventually(arrived, "the message at the relay")
        assert logins == [(b"relayuser", b"relaypass")]
    finally:
        server.close()



def _headers(data: bytes) -> list[tuple[str, str]]:
    from mailfleet_sender import messages

    split = messages.split_header_section(data)
    assert split is not None
    fields = messages.header_fields(split[0]) or []
    return [(name, messages.header_value(raw)) for name, raw in fields]


def _header(data: bytes, name: str) -> str | None:
    return next((v for k, v in _headers(data) if k == name), None)
