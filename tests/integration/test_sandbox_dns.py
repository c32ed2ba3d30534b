"""The sandbox DNS server answers like an authoritative server over real UDP and TCP sockets:
what the operator's DomainAuth verification and the sender's MX lookups rely on."""

from __future__ import annotations

import asyncio
import socket

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from mailfleet_sandbox.dns import DNSServer, Record


async def ask(
    server: DNSServer, name: str, rtype: str, *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rtype)
    if tcp:
        return await dns.asyncquery.tcp(query, server.host, port=server.port, timeout=2)
    return await dns.asyncquery.udp(query, server.host, port=server.port, timeout=2)


async def test_mx_answer_is_authoritative_and_carries_the_exchange_address(
    dns_server: DNSServer,
) -> None:
    dns_server.set_records("gmail.test", "MX", ["10 gmail-smtp-in.l.google.test"])
    dns_server.set_records("gmail-smtp-in.l.google.test", "A", ["127.0.10.1"])
    response = await ask(dns_server, "gmail.test", "MX")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert [r.to_text() for r in response.answer[0]] == ["10 gmail-smtp-in.l.google.test."]
    assert [r.to_text() for r in response.additional[0]] == ["127.0.10.1"]


async def test_unknown_name_is_nxdomain_with_soa_whose_ttl_bounds_negative_caching(
    dns_server: DNSServer,
) -> None:
    dns_server.set_records("example.test", "A", ["127.0.0.5"])
    response = await ask(dns_server, "missing.example.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.answer == []
    soa = response.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text() == "example.test."
    assert soa.ttl == soa[0].minimum == dns_server.negative_ttl


async def test_existing_name_without_the_type_is_nodata_not_nxdomain(
    dns_server: DNSServer,
) -> None:
    dns_server.set_records("example.test", "A", ["127.0.0.5"])
    response = await ask(dns_server, "example.test", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    assert response.authority[0].rdtype == dns.rdatatype.SOA


async def test_empty_non_terminal_is_nodata(dns_server: DNSServer) -> None:
    dns_server.set_records("s1._domainkey.example.test", "TXT", ["v=DKIM1; p=abc"])
    response = await ask(dns_server, "_domainkey.example.test", "TXT")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []


async def test_zone_soa_is_used_for_negative_answers_when_present(dns_server: DNSServer) -> None:
    dns_server.load_zone_text(
        "@ 3600 IN SOA ns1 admin 7 3600 600 86400 120\n@ 300 IN A 127.0.0.9\n",
        origin="zone.test",
    )
    response = await ask(dns_server, "nope.zone.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].name.to_text() == "zone.test."
    assert response.authority[0].ttl == 120


async def test_cname_is_followed_inside_the_server_data(dns_server: DNSServer) -> None:
    dns_server.set_records("www.example.test", "CNAME", ["target.example.test"])
    dns_server.set_records("target.example.test", "TXT", ["hello"])
    answer = await dns_server.resolver().resolve("www.example.test", "TXT")
    assert answer.canonical_name.to_text() == "target.example.test."
    assert [b"".join(r.strings) for r in answer] == [b"hello"]


async def test_long_plain_txt_is_published_as_255_byte_strings_and_read_back_whole(
    dns_server: DNSServer,
) -> None:
    key = "v=DKIM1; k=rsa; p=" + "A" * 400
    dns_server.set_records("sel._domainkey.example.test", "TXT", [key])
    answer = await dns_server.resolver().resolve("sel._domainkey.example.test", "TXT")
    strings = answer[0].strings
    assert [len(s) for s in strings] == [255, len(key) - 255]
    assert b"".join(strings).decode() == key
    assert dns_server.txt_values("sel._domainkey.example.test") == [key]


async def test_quoted_txt_keeps_the_publisher_split(dns_server: DNSServer) -> None:
    dns_server.set_records("example.test", "TXT", ['"v=spf1 " "ip4:127.0.0.1 -all"'])
    response = await ask(dns_server, "example.test", "TXT")
    assert response.answer[0][0].strings == (b"v=spf1 ", b"ip4:127.0.0.1 -all")


async def test_null_mx_is_served(dns_server: DNSServer) -> None:
    dns_server.set_records("nomail.test", "MX", ["0 ."])
    answer = await dns_server.resolver().resolve("nomail.test", "MX")
    assert answer[0].preference == 0
    assert answer[0].exchange.to_text() == "."


async def test_names_are_case_insensitive(dns_server: DNSServer) -> None:
    dns_server.set_records("Mixed.Example.TEST", "A", ["127.0.0.3"])
    response = await ask(dns_server, "mixed.EXAMPLE.test", "A")
    assert [r.to_text() for r in response.answer[0]] == ["127.0.0.3"]


async def test_dnsbl_listing_and_delisting(dns_server: DNSServer) -> None:
    resolver = dns_server.resolver()
    dns_server.list_on_dnsbl("zen.dnsbl.test", "127.0.0.7", reason="spam trap hit")
    listed = await resolver.resolve("7.0.0.127.zen.dnsbl.test", "A")
    assert [r.to_text() for r in listed] == ["127.0.0.2"]
    reason = await resolver.resolve("7.0.0.127.zen.dnsbl.test", "TXT")
    assert b"".join(reason[0].strings) == b"spam trap hit"
    dns_server.delist_from_dnsbl("zen.dnsbl.test", "127.0.0.7")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("7.0.0.127.zen.dnsbl.test", "A")


async def test_ptr_record(dns_server: DNSServer) -> None:
    dns_server.add_ptr("127.0.0.7", "out1.example.test")
    answer = await dns_server.resolver().resolve_address("127.0.0.7")
    assert answer[0].target.to_text() == "out1.example.test."


async def test_big_answer_is_truncated_over_udp_and_complete_over_tcp(
    dns_server: DNSServer,
) -> None:
    values = [f"record-{i}-" + "x" * 100 for i in range(10)]
    dns_server.set_records("big.example.test", "TXT", values)
    udp = await ask(dns_server, "big.example.test", "TXT")
    assert udp.flags & dns.flags.TC
    assert udp.answer == []
    tcp = await ask(dns_server, "big.example.test", "TXT", tcp=True)
    assert len(tcp.answer[0]) == 10
    dns_server.queries.clear()
    answer = await dns_server.resolver().resolve("big.example.test", "TXT")  # falls back to TCP
    assert len(answer) == 10
    assert dns_server.query_count("big.example.test", "TXT") == 2


async def test_malformed_query_gets_formerr(dns_server: DNSServer) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (dns_server.host, dns_server.port))
        await loop.sock_sendall(sock, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07garb")
        reply = await asyncio.wait_for(loop.sock_recv(sock, 512), 2)
    response = dns.message.from_wire(reply)
    assert response.id == 0x1234
    assert response.rcode() == dns.rcode.FORMERR


async def test_injected_failure_answers_servfail(dns_server: DNSServer) -> None:
    dns_server.set_records("example.test", "TXT", ["v=spf1 -all"])
    dns_server.set_failure("example.test", "SERVFAIL", rtype="TXT")
    assert (await ask(dns_server, "example.test", "TXT")).rcode() == dns.rcode.SERVFAIL
    dns_server.clear_failure("example.test", rtype="TXT")
    assert (await ask(dns_server, "example.test", "TXT")).rcode() == dns.rcode.NOERROR


async def test_attached_source_is_served_and_static_records_win(dns_server: DNSServer) -> None:
    feed = [
        Record("_dmarc.example.test", "TXT", ("v=DMARC1; p=reject",)),
        Record("example.test", "A", ("127.0.0.99",)),
    ]
    dns_server.set_records("example.test", "A", ["127.0.0.5"])
    detach = dns_server.attach_source(lambda: feed)
    assert dns_server.txt_values("_dmarc.example.test") == ["v=DMARC1; p=reject"]
    response = await ask(dns_server, "example.test", "A")
    assert [r.to_text() for r in response.answer[0]] == ["127.0.0.5"]
    detach()
    assert (await ask(dns_server, "_dmarc.example.test", "TXT")).rcode() == dns.rcode.NXDOMAIN


async def test_queries_log_lets_tests_assert_client_side_caching(dns_server: DNSServer) -> None:
    dns_server.set_records("gmail.test", "MX", ["10 mx.gmail.test"])
    resolver = dns_server.resolver()
    resolver.cache = dns.resolver.Cache()
    for _ in range(3):
        await resolver.resolve("gmail.test", "MX")
    assert dns_server.query_count("gmail.test", "MX") == 1


async def test_negative_answers_are_cacheable_by_a_resolver(dns_server: DNSServer) -> None:
    dns_server.set_records("example.test", "A", ["127.0.0.5"])
    resolver = dns_server.resolver()
    resolver.cache = dns.resolver.Cache()
    for _ in range(2):
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve("gone.example.test", "A")
    assert dns_server.query_count("gone.example.test") == 1


def test_run_in_thread_serves_synchronous_callers() -> None:
    server = DNSServer("127.0.0.1")
    server.set_records("sync.test", "A", ["127.0.0.4"])
    with server.run_in_thread():
        answer = server.sync_resolver().resolve("sync.test", "A")
    assert [r.to_text() for r in answer] == ["127.0.0.4"]
