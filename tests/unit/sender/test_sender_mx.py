"""MX resolution against the sandbox DNS server (real packets)."""

from __future__ import annotations

import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sender import mx


async def test_routes_null_mx_implicit_mx_and_ttl_cache(dns_server: DNSServer) -> None:
    dns_server.set_records("a.test", "MX", ["20 mx2.a.test.", "10 mx1.a.test."], ttl=60)
    dns_server.set_records("mx1.a.test", "A", ["127.0.0.1"])
    dns_server.set_records("mx2.a.test", "A", ["127.0.0.2"])
    dns_server.set_records("b.a.test", "MX", ["5 mx1.a.test.", "7 mx2.a.test."])
    dns_server.set_records("null.test", "MX", ["0 ."])
    dns_server.set_records("plain.test", "A", ["127.0.0.9"])
    now = [0.0]
    resolver = mx.MXResolver(dns_server.resolver(), clock=lambda: now[0], min_ttl=1)

    route = await resolver.resolve("A.test")
    assert route.host_names == ["mx1.a.test", "mx2.a.test"]
    assert route.site == (await resolver.resolve("b.a.test")).site  # same MX set, same site
    implicit = await resolver.resolve("plain.test")
    assert implicit.hosts[0].addresses == ("127.0.0.9",)
    with pytest.raises(mx.RouteError) as null:
        await resolver.resolve("null.test")
    assert (null.value.permanent, null.value.code, null.value.enhanced) == (True, 556, "5.1.10")
    with pytest.raises(mx.RouteError) as missing:
        await resolver.resolve("nowhere.test")
    assert missing.value.permanent and missing.value.enhanced == "5.1.2"

    queries = dns_server.query_count("a.test", "MX")
    await resolver.resolve("a.test")
    assert dns_server.query_count("a.test", "MX") == queries  # cached for the TTL
    now[0] = 61
    await resolver.resolve("a.test")
    assert dns_server.query_count("a.test", "MX") == queries + 1


async def test_servfail_is_temporary_and_not_cached(dns_server: DNSServer) -> None:
    dns_server.set_failure("broken.test", "SERVFAIL")
    resolver = mx.MXResolver(dns_server.resolver(timeout=1, lifetime=1))
    with pytest.raises(mx.RouteError) as failure:
        await resolver.resolve("broken.test")
    assert not failure.value.permanent and failure.value.code == 451
    assert resolver.cached("broken.test") is None
