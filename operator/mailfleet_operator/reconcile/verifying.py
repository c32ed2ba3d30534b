"""DNS I/O for verification: what resolvers and the zone's authoritative servers answer.

The only DNS-talking code of the operator's reconcilers (logic/ stays pure). Resolver queries
go to the DomainAuth's `verification.nameservers` (or the operator-wide override, or the
system resolver), never through a cache: a verification must see DNS as it is now, so a
record that appears late is noticed on the next check. A failed query is reported as such
(`error`), never as an absent record, so a flaky resolver cannot make a key look unpublished.

DKIM keys are verified at the source (`authoritative`): the resolver finds the record's zone
(SOA) and its nameservers (NS, then their addresses), and each nameserver is asked directly,
without recursion, on the authoritative port. One resolver's answer proves only that one
server had the record; receivers' resolvers may ask any of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from mailfleet_operator.logic import authoritative_answers, domainauths, spf_lookups


@dataclasses.dataclass(frozen=True)
class Nameservers:
    """Where to ask: (ip, port) pairs, or empty for the system resolver."""

    servers: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str], *, default_port: int = 53) -> Nameservers:
        """`1.2.3.4`, `1.2.3.4:5353`, `[2001:db8::1]:53` or a bare IPv6 address."""
        servers: list[tuple[str, int]] = []
        for entry in entries:
            text = entry.strip()
            if text.startswith("["):
                host, _, rest = text[1:].partition("]")
                port = int(rest.lstrip(":") or default_port)
            elif text.count(":") == 1:
                host, _, port_text = text.partition(":")
                port = int(port_text)
            else:
                host, port = text, default_port
            servers.append((host, port))
        return cls(tuple(servers))


def _configure(resolver: dns.resolver.BaseResolver, servers: Nameservers, timeout: float) -> None:
    if servers.servers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in servers.servers
        ]
    resolver.timeout = timeout
    resolver.lifetime = timeout * 2
    resolver.cache = None


def _values(answer: Iterable[Any], rtype: str) -> tuple[str, ...]:
    if rtype == "TXT":
        return tuple(
            b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in answer
        )
    return tuple(rdata.to_text().rstrip(".") for rdata in answer)


EDNS_PAYLOAD = 1232
"""UDP payload size offered to authoritative servers (the DNS flag day 2020 value); larger
answers come back truncated and are asked again over TCP."""


class Verifier:
    """Asks the configured nameservers; one instance per reconcile (zones found once)."""

    def __init__(
        self, servers: Nameservers, *, timeout: float = 3.0, authoritative_port: int = 53
    ) -> None:
        self.servers = servers
        self.timeout = timeout
        self.authoritative_port = authoritative_port
        self._async = dns.asyncresolver.Resolver(configure=not servers.servers)
        _configure(self._async, servers, timeout)
        self._zones: dict[
            str, tuple[tuple[tuple[str, tuple[str, ...]], ...], str | None]
        ] = {}

    async def authoritative(
        self, questions: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], authoritative_answers.AtServers]:
        """Each question asked at every authoritative nameserver of its zone."""
        results = await asyncio.gather(*(self._at_servers(n, t) for n, t in questions))
        return {
            domainauths.answer_key(name, rtype): result
            for (name, rtype), result in zip(questions, results, strict=True)
        }

    async def _at_servers(self, name: str, rtype: str) -> authoritative_answers.AtServers:
        servers, error = await self._servers_for(name)
        if error is not None:
            return authoritative_answers.AtServers(error=error)
        answers = await asyncio.gather(
            *(self._ask_host(host, addresses, name, rtype) for host, addresses in servers)
        )
        return authoritative_answers.AtServers(answers=tuple(answers))

    async def _ask_host(
        self, host: str, addresses: tuple[str, ...], name: str, rtype: str
    ) -> authoritative_answers.ServerAnswer:
        """A nameserver answers through any of its addresses (IPv4 first): a cluster without
        IPv6 egress still reaches a server that also has an AAAA record."""
        answer = domainauths.Answer(error="no address")
        address = ""
        for address in addresses:
            answer = await self._ask_server(address, name, rtype)
            if answer.error is None:
                break
        return authoritative_answers.ServerAnswer(server=f"{host} ({address})", answer=answer)

    async def _servers_for(
        self, name: str
    ) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], str | None]:
        """(host, addresses) of every nameserver of the zone holding `name`."""
        try:
            zone = await dns.asyncresolver.zone_for_name(
                name, resolver=self._async, lifetime=self.timeout * 2
            )
        except dns.exception.DNSException as error:
            return (), f"no zone found for {name}: {type(error).__name__}"
        key = zone.to_text()
        if key not in self._zones:
            self._zones[key] = await self._nameservers_of(zone)
        return self._zones[key]

    async def _nameservers_of(
        self, zone: dns.name.Name
    ) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], str | None]:
        text = zone.to_text(omit_final_dot=True)
        try:
            answer = await self._async.resolve(zone, "NS")
        except dns.exception.DNSException as error:
            return (), f"NS of {text}: {type(error).__name__}"
        hosts = sorted({rdata.target.to_text(omit_final_dot=True).lower() for rdata in answer})
        found: list[tuple[str, tuple[str, ...]]] = []
        for host in hosts:
            addresses: list[str] = []
            for rtype in ("A", "AAAA"):
                result = await self.answer(host, rtype)
                addresses += sorted(result.values)
            if not addresses:
                return (), f"nameserver {host} of {text} has no address"
            found.append((host, tuple(addresses)))
        return tuple(found), None

    async def _ask_server(self, address: str, name: str, rtype: str) -> domainauths.Answer:
        """One non-recursive question to one authoritative server."""
        query = dns.message.make_query(name, rtype, use_edns=0, payload=EDNS_PAYLOAD)
        query.flags &= ~dns.flags.RD
        try:
            response, _tcp = await dns.asyncquery.udp_with_fallback(
                query, address, timeout=self.timeout, port=self.authoritative_port
            )
        except (dns.exception.DNSException, OSError) as error:
            return domainauths.Answer(error=type(error).__name__)
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return domainauths.Answer(values=())
        if rcode != dns.rcode.NOERROR:
            return domainauths.Answer(error=dns.rcode.to_text(rcode))
        if not response.flags & dns.flags.AA:
            return domainauths.Answer(error="not authoritative for the zone")
        wanted = dns.rdatatype.from_text(rtype)
        for rrset in response.answer:
            if rrset.rdtype == wanted:
                return domainauths.Answer(values=_values(rrset, rtype), ttl=rrset.ttl)
        if any(rrset.rdtype == dns.rdatatype.CNAME for rrset in response.answer):
            # Delegated elsewhere (a CNAME to a provider's key): what a receiver reads is
            # at the target, outside this zone, so the resolver's answer is the one to judge.
            return await self.answer(name, rtype)
        return domainauths.Answer(values=())

    async def answer(self, name: str, rtype: str) -> domainauths.Answer:
        try:
            result = await self._async.resolve(name, rtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return domainauths.Answer(values=())
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as error:
            return domainauths.Answer(error=type(error).__name__)
        except dns.exception.DNSException as error:
            return domainauths.Answer(error=f"{type(error).__name__}: {error}")
        if result.rrset is None:
            return domainauths.Answer(values=())
        # A CNAME chain answers for the target; the values are what a verifier would read.
        return domainauths.Answer(values=_values(result, rtype))

    async def answers(
        self, questions: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], domainauths.Answer]:
        results = await asyncio.gather(*(self.answer(name, rtype) for name, rtype in questions))
        return {
            domainauths.answer_key(name, rtype): result
            for (name, rtype), result in zip(questions, results, strict=True)
        }

    def spf_resolver(self) -> SyncSpfResolver:
        """A blocking resolver for the SPF walk, to be run in a worker thread."""
        return SyncSpfResolver(self.servers, timeout=self.timeout)


class SyncSpfResolver:
    """`spf_lookups.SpfResolver` over dnspython's blocking resolver (run it in a thread)."""

    def __init__(self, servers: Nameservers, *, timeout: float) -> None:
        self._resolver = dns.resolver.Resolver(configure=not servers.servers)
        _configure(self._resolver, servers, timeout)

    def _ask(self, name: str, rtype: str) -> tuple[str, ...]:
        try:
            result = self._resolver.resolve(name, rtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return ()
        except dns.exception.DNSException as error:
            raise spf_lookups.LookupFailed(f"{rtype} {name}: {type(error).__name__}") from error
        if result.rrset is None:
            return ()
        if rtype == "MX":
            return tuple(rdata.exchange.to_text().rstrip(".") for rdata in result)
        return _values(result, rtype)

    def txt(self, name: str) -> list[str]:
        return list(self._ask(name, "TXT"))

    def addresses(self, name: str) -> list[str]:
        return [*self._ask(name, "A"), *self._ask(name, "AAAA")]

    def mx(self, name: str) -> list[str]:
        return list(self._ask(name, "MX"))
