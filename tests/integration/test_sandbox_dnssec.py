"""DNSSEC in the sandbox over real sockets: the DNS server signs a zone (RRSIG, DNSKEY, DS,
black-lie NSEC denials) and the validating resolver sets AD only on answers it proved from
its trust anchor, answers SERVFAIL on bogus ones and passes unsigned names without AD: what
the sender's DANE path trusts through `delivery.tls.daneResolver`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import dns.asyncquery
import dns.asyncresolver
import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.dnssec_signing import ZoneSigner
from mailfleet_sandbox.validating_resolver import ValidatingResolver

TLSA_NAME = "_25._tcp.mx.signed.test"


@pytest.fixture
async def signed(dns_server: DNSServer) -> ZoneSigner:
    dns_server.set_records("signed.test", "MX", ["10 mx.signed.test."])
    dns_server.set_records("mx.signed.test", "A", ["127.0.0.90"])
    dns_server.set_records(TLSA_NAME, "TLSA", ["3 1 1 " + "ab" * 32])
    dns_server.set_records("plain.test", "MX", ["10 mx.plain.test."])
    return dns_server.sign_zone("signed.test")


@pytest.fixture
async def resolver(dns_server: DNSServer, signed: ZoneSigner
                   ) -> AsyncIterator[ValidatingResolver]:
    async with ValidatingResolver((dns_server.host, dns_server.port),
                                  {"signed.test": signed.ds}, "127.0.0.91") as running:
        yield running


async def ask(host: str, port: int, name: str, rtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rtype, want_dnssec=True)
    query.flags |= dns.flags.AD
    return await dns.asyncquery.udp(query, host, port=port, timeout=3)


async def test_the_signed_zone_serves_verifiable_signatures_and_its_keys(
    dns_server: DNSServer, signed: ZoneSigner,
) -> None:
    reply = await ask(dns_server.host, dns_server.port, TLSA_NAME, "TLSA")
    tlsa = reply.find_rrset(reply.answer, dns.name.from_text(TLSA_NAME), dns.rdataclass.IN,
                            dns.rdatatype.TLSA)
    sig = reply.find_rrset(reply.answer, tlsa.name, dns.rdataclass.IN, dns.rdatatype.RRSIG,
                           dns.rdatatype.TLSA)
    keys = await ask(dns_server.host, dns_server.port, "signed.test", "DNSKEY")
    dnskeys = keys.answer[0]
    dns.dnssec.validate(tlsa, sig, {dns.name.from_text("signed.test"): dnskeys})
    ds = await ask(dns_server.host, dns_server.port, "signed.test", "DS")
    assert ds.answer[0][0] == signed.ds
    unsigned = await dns.asyncquery.udp(dns.message.make_query(TLSA_NAME, "TLSA"),
                                        dns_server.host, port=dns_server.port, timeout=3)
    assert all(r.rdtype != dns.rdatatype.RRSIG for r in unsigned.answer)  # no DO: no RRSIG


async def test_validated_answers_carry_ad_and_unsigned_names_do_not(
    resolver: ValidatingResolver,
) -> None:
    for name, rtype in (("signed.test", "MX"), (TLSA_NAME, "TLSA")):
        reply = await ask(resolver.host, resolver.port, name, rtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AD, name
    plain = await ask(resolver.host, resolver.port, "plain.test", "MX")
    assert plain.rcode() == dns.rcode.NOERROR and plain.answer
    assert not plain.flags & dns.flags.AD
    assert resolver.outcomes["secure"] == 2 and resolver.outcomes["insecure"] == 1


async def test_a_signed_denial_is_secure_nodata(resolver: ValidatingResolver) -> None:
    for name in ("_25._tcp.nothing.signed.test", "mx.signed.test"):
        reply = await ask(resolver.host, resolver.port, name, "TLSA")
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer, name
        assert reply.flags & dns.flags.AD, name


async def test_a_bogus_signature_is_servfail_and_recovers_when_repaired(
    resolver: ValidatingResolver, signed: ZoneSigner,
) -> None:
    signed.corrupt(TLSA_NAME, "TLSA")
    reply = await ask(resolver.host, resolver.port, TLSA_NAME, "TLSA")
    assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer
    assert resolver.outcomes["bogus"] == 1
    signed.repair(TLSA_NAME, "TLSA")
    reply = await ask(resolver.host, resolver.port, TLSA_NAME, "TLSA")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AD


async def test_a_key_that_does_not_match_the_anchor_makes_the_zone_bogus(
    dns_server: DNSServer, resolver: ValidatingResolver,
) -> None:
    dns_server.sign_zone("signed.test")  # a new key the resolver's anchor does not know
    reply = await ask(resolver.host, resolver.port, "signed.test", "MX")
    assert reply.rcode() == dns.rcode.SERVFAIL


async def test_a_dnspython_resolver_sees_ad_like_the_sender_does(
    resolver: ValidatingResolver,
) -> None:
    client = dns.asyncresolver.Resolver(configure=False)
    client.nameservers = [dns.nameserver.Do53Nameserver(resolver.host, resolver.port)]
    client.use_edns(0, dns.flags.DO, 1232)
    client.flags = dns.flags.RD | dns.flags.AD
    answer = await client.resolve(TLSA_NAME, "TLSA")
    assert answer.response.flags & dns.flags.AD
    assert answer.rrset is not None and answer.rrset[0].usage == 3
