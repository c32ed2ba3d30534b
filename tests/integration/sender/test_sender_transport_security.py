"""A whole sender against the sandbox over loopback: MX and MTA-STS records in the sandbox DNS,
the policy served over HTTPS by the sandbox policy host, certificates from the sandbox CA
(trusted only through `delivery.tls.caFile`), TLSA records vouched for by a stand-in
validating resolver named in `delivery.tls.daneResolver`. Mail to a domain whose policy is not
met is deferred with a 4.7.5 reason, never sent in clear, and goes out once it is met."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.mta_sts_server import PolicyServer
from mailfleet_sandbox.providers import SmtpReceiver
from mailfleet_sandbox.validating_resolver import ValidatingResolver
from mailfleet_sender import hooks
from sandbox_fixtures.sender import (
    RunningSender,
    SenderFactory,
    base_config,
    lease,
    make_dkim_keys,
)

CA = SandboxCA()


class World:
    """One receiving domain `name` with its MX on `address` (shared port), and what the
    sender did with its mail."""

    def __init__(self, dns: DNSServer, policies: PolicyServer, port: int) -> None:
        self.dns = dns
        self.policies = policies
        self.port = port
        self.receivers: list[SmtpReceiver] = []

    async def domain(self, name: str, address: str, *, certificate: bool = True,
                     expired: bool = False) -> SmtpReceiver:
        mx = f"mx.{name}"
        self.dns.set_records(name, "MX", [f"10 {mx}."])
        self.dns.set_records(mx, "A", [address])
        context = CA.issue([mx], expired=expired).server_context() if certificate else None
        receiver = SmtpReceiver(name, address, self.port, starttls_context=context, hostname=mx)
        await receiver.start()
        self.receivers.append(receiver)
        return receiver

    def publish_sts(self, name: str, mode: str = "enforce", sts_id: str = "1") -> None:
        self.dns.set_records(f"_mta-sts.{name}", "TXT", [f'"v=STSv1; id={sts_id}"'])
        self.dns.set_records(f"mta-sts.{name}", "A", [self.policies.host])
        self.policies.set_policy(name, mode=mode, mx=[f"mx.{name}"])


@pytest.fixture
async def world(dns_server: DNSServer) -> AsyncIterator[World]:
    async with PolicyServer(CA, "127.0.0.70") as policies:
        probe = SmtpReceiver("probe", "127.0.0.71", 0)
        await probe.start()
        port = probe.port
        await probe.stop()
        w = World(dns_server, policies, port)
        yield w
        for receiver in w.receivers:
            await receiver.stop()


class Outcomes:
    """Every outcome the engine reports, with a wait for one that matches."""

    def __init__(self, sender: RunningSender) -> None:
        self.seen: list[hooks.Outcome] = []
        self._changed = asyncio.Event()
        engine = sender.service.engine
        observe = engine.hooks.observe

        def spy(outcome: hooks.Outcome) -> None:
            self.seen.append(outcome)
            self._changed.set()
            observe(outcome)

        engine.hooks.observe = spy  # type: ignore[method-assign]

    async def deferred(self, recipient: str) -> hooks.Outcome:
        async with asyncio.timeout(20):
            while True:
                for outcome in self.seen:
                    if outcome.recipient == recipient and outcome.verdict == "deferred":
                        return outcome
                self._changed.clear()
                await self._changed.wait()


def _config(tmp_path: Path, world: World, **tls: Any) -> dict[str, Any]:
    keys = make_dkim_keys(tmp_path / "keys", "example.net", world.dns)
    cfg = base_config(tmp_path, dns=world.dns, destination_port=world.port, keys=keys)
    cfg["delivery"]["tls"] = {"caFile": str(CA.write(tmp_path / "ca.pem")),
                              "mtaStsPort": world.policies.port, "policyRefresh": "1s", **tls}
    return cfg


async def _send(sender: RunningSender, recipient: str) -> None:
    status, body = await sender.client.submit(
        {"from": "news@example.net", "to": [recipient], "subject": "tls", "text": "t",
         "class": "transactional"})
    assert status == 202, body


async def test_enforce_domain_with_a_bad_certificate_is_deferred_then_delivered_when_fixed(
    tmp_path: Path, world: World, sender_factory: SenderFactory
) -> None:
    receiver = await world.domain("enforce.test", "127.0.0.72", expired=True)
    world.publish_sts("enforce.test")
    sender = await sender_factory(_config(tmp_path, world))
    outcomes = Outcomes(sender)
    await sender.client.assign([lease("127.0.0.73")])
    await _send(sender, "rcpt@enforce.test")

    deferred = await outcomes.deferred("rcpt@enforce.test")
    assert deferred.reply is not None and deferred.reply.enhanced == "4.7.5"
    assert "MTA-STS" in deferred.reply.text and "certificate-expired" in deferred.reply.text
    assert receiver.messages == []
    assert world.policies.requests == ["enforce.test"]

    receiver.starttls_context = CA.issue(["mx.enforce.test"]).server_context()
    [message] = await receiver.wait_for(1, timeout=20)
    assert message.tls is True
    assert world.policies.requests == ["enforce.test"]  # same id: the cached policy applies
    metrics = sender.service.metrics.render().decode()
    assert 'mailfleet_sender_tls_sessions_total{policy="mta-sts",result="failed"}' in metrics
    assert 'mailfleet_sender_tls_sessions_total{policy="mta-sts",result="tls"} 1.0' in metrics
    stats = sender.service.stats().tls
    assert stats.by_ip["127.0.0.73"].share == 1.0 and stats.refused >= 1


async def test_a_failing_policy_fetch_falls_back_to_opportunistic_tls(
    tmp_path: Path, world: World, sender_factory: SenderFactory
) -> None:
    receiver = await world.domain("broken-sts.test", "127.0.0.74")
    world.publish_sts("broken-sts.test")
    world.policies.broken.add("broken-sts.test")
    sender = await sender_factory(_config(tmp_path, world))
    await sender.client.assign([lease("127.0.0.75")])
    await _send(sender, "rcpt@broken-sts.test")
    [message] = await receiver.wait_for(1, timeout=20)
    assert message.tls is True
    assert world.policies.requests == ["broken-sts.test"]
    assert 'policy="opportunistic",result="tls"' in sender.service.metrics.render().decode()


async def test_a_domain_without_starttls_gets_mail_in_clear_unless_tls_is_required(
    tmp_path: Path, world: World, sender_factory: SenderFactory
) -> None:
    receiver = await world.domain("plain.test", "127.0.0.76", certificate=False)
    sender = await sender_factory(_config(tmp_path, world, providers=[
        {"name": "other", "requireTLS": True}]))
    outcomes = Outcomes(sender)
    await sender.client.assign([lease("127.0.0.77")])
    await _send(sender, "rcpt@plain.test")
    deferred = await outcomes.deferred("rcpt@plain.test")
    assert deferred.reply is not None and "starttls-not-supported" in deferred.reply.text
    assert receiver.messages == []

    sender.cfg["delivery"]["tls"]["providers"] = []
    sender.rewrite_config()
    assert sender.service.check_reload()
    [message] = await receiver.wait_for(1, timeout=20)
    assert message.tls is False
    assert sender.service.stats().tls.by_provider["other"].share == 0.0


@pytest.fixture
async def validating_resolver(dns_server: DNSServer) -> AsyncIterator[DNSServer]:
    """A stand-in for a DNSSEC-validating resolver: the same data, AD on the secure zone."""
    async with DNSServer("127.0.0.78") as resolver:
        yield resolver


async def test_dane_tlsa_is_honoured_only_from_the_named_validating_resolver(
    tmp_path: Path, world: World, sender_factory: SenderFactory,
    validating_resolver: DNSServer,
) -> None:
    receiver = await world.domain("dane.test", "127.0.0.79")
    wrong = "3 1 1 " + hashlib.sha256(b"not this key").hexdigest()
    for server in (world.dns, validating_resolver):
        server.set_records("dane.test", "MX", ["10 mx.dane.test."])
        server.set_records("mx.dane.test", "A", ["127.0.0.79"])
        server.set_records(f"_{world.port}._tcp.mx.dane.test", "TLSA", [wrong])
    world.dns.mark_secure("dane.test")  # AD from the general resolver is never trusted
    cfg = _config(tmp_path, world, daneResolver={"address": validating_resolver.host,
                                                 "port": validating_resolver.port})
    sender = await sender_factory(cfg)
    outcomes = Outcomes(sender)
    await sender.client.assign([lease("127.0.0.80")])
    await _send(sender, "first@dane.test")
    [message] = await receiver.wait_for(1, timeout=20)
    assert message.tls is True  # the validating resolver did not vouch: opportunistic

    validating_resolver.mark_secure("dane.test")
    sender.service.engine.transport.reconfigure(sender.service.cfg)  # drop cached policies
    await _send(sender, "second@dane.test")
    deferred = await outcomes.deferred("second@dane.test")
    assert deferred.reply is not None and "DANE" in deferred.reply.text
    assert "validation-failure" in deferred.reply.text

    validating_resolver.set_failure(f"_{world.port}._tcp.mx.dane.test", "SERVFAIL")
    outcomes.seen.clear()
    bogus = await outcomes.deferred("second@dane.test")
    assert bogus.reply is not None and "dnssec-invalid" in bogus.reply.text
    assert len(receiver.messages) == 1

    validating_resolver.clear_failure(f"_{world.port}._tcp.mx.dane.test")
    issued = CA.issue(["mx.dane.test"])
    receiver.starttls_context = issued.server_context()
    right = "3 0 1 " + hashlib.sha256(issued.der).hexdigest()
    validating_resolver.set_records(f"_{world.port}._tcp.mx.dane.test", "TLSA", [right])
    messages = await receiver.wait_for(2, timeout=20)
    assert [m.tls for m in messages] == [True, True]


async def test_dane_from_a_dnssec_signed_zone_through_a_validating_resolver(
    tmp_path: Path, world: World, sender_factory: SenderFactory,
) -> None:
    """Real DNSSEC: the sandbox DNS signs the zone, the validating resolver the config names
    checks the signatures against the zone's DS. A TLSA mismatch and a bogus signature both
    defer the mail (never sent in clear); a matching, validly signed record lets it go."""
    receiver = await world.domain("signed-dane.test", "127.0.0.81")
    issued = CA.issue(["mx.signed-dane.test"])
    receiver.starttls_context = issued.server_context()
    tlsa = f"_{world.port}._tcp.mx.signed-dane.test"
    world.dns.set_records(tlsa, "TLSA", ["3 1 1 " + hashlib.sha256(b"another key").hexdigest()])
    signer = world.dns.sign_zone("signed-dane.test")
    async with ValidatingResolver((world.dns.host, world.dns.port),
                                  {"signed-dane.test": signer.ds}, "127.0.0.82") as resolver:
        cfg = _config(tmp_path, world, daneResolver={"address": resolver.host,
                                                     "port": resolver.port})
        sender = await sender_factory(cfg)
        outcomes = Outcomes(sender)
        await sender.client.assign([lease("127.0.0.83")])
        await _send(sender, "rcpt@signed-dane.test")
        mismatch = await outcomes.deferred("rcpt@signed-dane.test")
        assert mismatch.reply is not None and mismatch.reply.enhanced == "4.7.5"
        assert "DANE" in mismatch.reply.text and "validation-failure" in mismatch.reply.text
        assert resolver.outcomes["secure"] >= 2 and receiver.messages == []

        world.dns.set_records(tlsa, "TLSA", ["3 0 1 " + hashlib.sha256(issued.der).hexdigest()])
        signer.corrupt(tlsa, "TLSA")
        sender.service.engine.transport.reconfigure(sender.service.cfg)  # drop cached policy
        outcomes.seen.clear()
        bogus = await outcomes.deferred("rcpt@signed-dane.test")
        assert bogus.reply is not None and "dnssec-invalid" in bogus.reply.text
        assert resolver.outcomes["bogus"] >= 1 and receiver.messages == []

        signer.repair(tlsa, "TLSA")
        [message] = await receiver.wait_for(1, timeout=20)
        assert message.tls is True
        assert 'policy="dane",result="tls"' in sender.service.metrics.render().decode()
