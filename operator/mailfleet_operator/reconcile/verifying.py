"""DNS I/O for verification: what resolvers actually answer for the records we want.

The only DNS-talking code of the operator's reconcilers (logic/ stays pure). Queries go to
the DomainAuth's `verification.nameservers` (or the operator-wide override, or the system
resolver), never through a cache: a verification must see DNS as it is now, so a record that
appears late is noticed on the next check. A failed query is reported as such (`error`),
never as an absent record, so a flaky resolver cannot make a key look unpublished.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mailfleet_operator.logic import domainauths, spf_lookups


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


def _values(answer: dns.resolver.Answer, rtype: str) -> tuple[str, ...]:
    if rtype == "TXT":
        return tuple(
            b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in answer
        )
    return tuple(rdata.to_text().rstrip(".") for rdata in answer)


class Verifier:
    """Asks the configured nameservers; one instance per reconcile."""

    def __init__(self, servers: Nameservers, *, timeout: float = 3.0) -> None:
        self.servers = servers
        self.timeout = timeout
        self._async = dns.asyncresolver.Resolver(configure=not servers.servers)
        _configure(self._async, servers, timeout)

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
