"""The external-dns stand-in: DNSEndpoint objects in the API emulator are what the sandbox DNS
server answers, including TXT updates and deletions (what DomainAuth's ExternalDNS mode uses)."""

from __future__ import annotations

import ssl
import time
from typing import Any

import dns.asyncresolver
import dns.resolver
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.external_dns import ExternalDNS, endpoint_records
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.node_agent import eventually

API_VERSION = "externaldns.k8s.io/v1alpha1"


def _endpoint(name: str, *endpoints: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "DNSEndpoint",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"endpoints": list(endpoints)}}


async def _txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[str] | None:
    """TXT strings at `name` (joined per record), None for NXDOMAIN/no data."""
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return sorted(b"".join(r.strings).decode() for r in answer)


async def test_dnsendpoint_records_are_served_updated_and_deleted(
        kube_api: ApiServer, dns_server: DNSServer, external_dns: ExternalDNS) -> None:
    resolver = dns_server.resolver()
    dkim = "v=DKIM1; k=rsa; p=" + "A" * 400  # longer than one TXT string
    kube_api.create(_endpoint(
        "example-auth",
        {"dnsName": "example.test", "recordType": "TXT", "recordTTL": 60,
         "targets": ["v=spf1 ip4:127.0.100.1 ~all"]},
        {"dnsName": "sel1._domainkey.example.test", "recordType": "TXT", "targets": [dkim]},
        {"dnsName": "example.test", "recordType": "MX", "targets": ["10 mx.example.test"]}))

    assert await eventually(lambda: _txt(resolver, "example.test")) == [
        "v=spf1 ip4:127.0.100.1 ~all"]
    assert await _txt(resolver, "sel1._domainkey.example.test") == [dkim]
    mx = await resolver.resolve("example.test", "MX")
    assert [r.to_text() for r in mx] == ["10 mx.example.test."]
    assert mx.rrset is not None and mx.rrset.ttl == 300

    kube_api.patch(API_VERSION, "DNSEndpoint", "example-auth", {"spec": {"endpoints": [
        {"dnsName": "example.test", "recordType": "TXT", "recordTTL": 60,
         "targets": ["v=spf1 ip4:127.0.100.2 -all"]}]}}, "default")
    assert await eventually(
        lambda: _spf_is(resolver, "v=spf1 ip4:127.0.100.2 -all"))
    assert await eventually(lambda: _gone(resolver, "sel1._domainkey.example.test"))
    obj = kube_api.get(API_VERSION, "DNSEndpoint", "example-auth", "default")
    await eventually(lambda: kube_api.get(API_VERSION, "DNSEndpoint", "example-auth",
                                          "default").get("status", {})
                     .get("observedGeneration") == obj["metadata"]["generation"])

    kube_api.delete(API_VERSION, "DNSEndpoint", "example-auth", "default")
    assert await eventually(lambda: _gone(resolver, "example.test"))


async def _spf_is(resolver: dns.asyncresolver.Resolver, value: str) -> bool:
    return await _txt(resolver, "example.test") == [value]


async def _gone(resolver: dns.asyncresolver.Resolver, name: str) -> bool:
    return await _txt(resolver, name) is None


async def test_lag_delays_visibility(kube_api: ApiServer, dns_server: DNSServer,
                                     kube_tls: ssl.SSLContext | None) -> None:
    resolver = dns_server.resolver()
    async with ExternalDNS(kube_api.url, dns_server, lag=0.6, ssl_context=kube_tls):
        created = time.monotonic()
        kube_api.create(_endpoint("slow", {"dnsName": "slow.example.test", "recordType": "TXT",
                                           "targets": ["pending"]}))
        assert await eventually(lambda: _txt(resolver, "slow.example.test")) == ["pending"]
        assert time.monotonic() - created >= 0.6


def test_endpoints_with_one_name_and_type_merge_and_invalid_targets_are_dropped() -> None:
    objects = [
        _endpoint("a", {"dnsName": "Example.test.", "recordType": "txt", "targets": ["one"]},
                  {"dnsName": "example.test", "recordType": "A", "targets": ["not-an-ip"]}),
        _endpoint("b", {"dnsName": "example.test", "recordType": "TXT",
                        "targets": ["two", "one"]}),
    ]
    records = endpoint_records(objects)
    assert [(r.name, r.rtype, r.values) for r in records] == [
        ("example.test", "TXT", ("one", "two"))]
