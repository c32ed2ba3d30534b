"""DNSBL lookups of a pool's egress IPs (I/O, dnspython).

A listing is an A record for the reversed IP under the zone (RFC 5782): 10.2.0.192.zone for
192.0.2.10, nibbles for IPv6. NXDOMAIN means not listed. A lookup that fails (timeout,
SERVFAIL) keeps the last known answer for that zone: a flaky blocklist must neither take an
IP out of service nor put a listed one back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping, Sequence

import dns.asyncresolver
import dns.exception
import dns.resolver

log = logging.getLogger(__name__)


def query_name(ip: str, zone: str) -> str:
    address = ipaddress.ip_address(ip)
    reversed_ip = address.reverse_pointer.rsplit(".", 2)[0]  # drop in-addr.arpa / ip6.arpa
    return f"{reversed_ip}.{zone.rstrip('.')}."


def make_resolver(nameservers: Sequence[str], *, timeout: float) -> dns.asyncresolver.Resolver:
    """A resolver on the given servers ("ip" or "ip:port"), or the system's when empty."""
    if not nameservers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        first = nameservers[0]
        host, _, port = first.rpartition(":") if first.count(":") == 1 else (first, "", "")
        resolver.nameservers = [host or first]
        if port:
            resolver.port = int(port)
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None
    return resolver


async def is_listed(resolver: dns.asyncresolver.Resolver, ip: str, zone: str) -> bool | None:
    """True when listed, False when not, None when the blocklist did not answer."""
    try:
        await resolver.resolve(query_name(ip, zone), "A")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return False
    except (dns.exception.DNSException, OSError) as exc:
        log.warning("dnsbl lookup failed", extra={"zone": zone, "ip": ip, "error": repr(exc)})
        return None
    return True


async def check_ips(
    resolver: dns.asyncresolver.Resolver,
    ips: Sequence[str],
    zones: Sequence[str],
    *,
    previous: Mapping[str, Sequence[str]],
) -> dict[str, tuple[str, ...]]:
    """ip -> zones listing it now (unanswered lookups keep the previous verdict)."""
    pairs = [(ip, zone) for ip in ips for zone in zones]
    answers = await asyncio.gather(*(is_listed(resolver, ip, zone) for ip, zone in pairs))
    listed: dict[str, list[str]] = {ip: [] for ip in ips}
    for (ip, zone), answer in zip(pairs, answers, strict=True):
        if answer is None:
            answer = zone in previous.get(ip, ())
        if answer:
            listed[ip].append(zone)
    return {ip: tuple(zones) for ip, zones in listed.items() if zones}
