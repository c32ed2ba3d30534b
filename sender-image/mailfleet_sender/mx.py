"""Where mail for a domain goes: MX resolution with dnspython, cached for the record's TTL.

RFC 5321 §5.1: MX hosts in preference order (equal preferences shuffled); no MX record means
the domain itself is the implicit MX (its A records). RFC 7505: a single MX of "." is a null MX,
the domain accepts no mail, which is a permanent failure (556 5.1.10) without any connection.
A domain that does not exist is permanent too (NXDOMAIN: 550 5.1.2); timeouts and SERVFAIL are
temporary (451 4.4.3) and are not cached, so the next attempt asks again.

A *site* is the set of MX host names (sorted and joined): gmail.com and googlemail.com share
one, so connection limits and rates apply to what is really one destination (KumoMTA's model).
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time
from collections.abc import Callable, Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver


@dataclasses.dataclass(frozen=True)
class MXHost:
    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Route:
    """Resolved destination of a domain: hosts to try in order, and the site they form."""

    domain: str
    site: str
    hosts: tuple[MXHost, ...]

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]


class RouteError(Exception):
    """No route: `permanent` decides bounce or retry; code/enhanced/text are the reply."""

    def __init__(self, *, permanent: bool, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.permanent = permanent
        self.code = code
        self.enhanced = enhanced
        self.text = text


def make_resolver(
    nameservers: Sequence[tuple[str, int]], *, timeout: float
) -> dns.asyncresolver.Resolver:
    """A resolver asking the given servers, or the system's when none are given."""
    if not nameservers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def site_name(hosts: Sequence[MXHost]) -> str:
    return ",".join(sorted({h.name for h in hosts}))


def order_hosts(hosts: Sequence[MXHost], rng: random.Random) -> tuple[MXHost, ...]:
    """Lowest preference first; equal preferences in random order (RFC 5321 §5.1)."""
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    return tuple(sorted(shuffled, key=lambda h: h.preference))


MAX_CACHED_DOMAINS = 10_000
"""Domains whose route is cached at once. Recipients' domains are chosen by whoever submits
mail, so the cache must not grow with them: beyond the cap expired entries go first, then the
least recently used."""


class MXResolver:
    """Resolve and cache routes (at most `max_entries` domains, LRU). `clock` is monotonic
    seconds (injectable for tests)."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        *,
        min_ttl: float = 5.0,
        max_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_entries: int = MAX_CACHED_DOMAINS,
    ) -> None:
        self.resolver = resolver
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._clock = clock
        self._rng = rng or random.Random()
        self.max_entries = max_entries
        self._cache: collections.OrderedDict[str, tuple[float, Route | RouteError]] = (
            collections.OrderedDict()
        )
        self.lookups = 0

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, domain: str) -> Route | RouteError | None:
        entry = self._cache.get(domain)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return entry[1]

    def _remember(self, domain: str, until: float, value: Route | RouteError) -> None:
        self._cache[domain] = (until, value)
        self._cache.move_to_end(domain)
        if len(self._cache) <= self.max_entries:
            return
        now = self._clock()
        for name in [n for n, (t, _) in self._cache.items() if t <= now]:
            del self._cache[name]
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    async def resolve(self, domain: str) -> Route:
        """The route for a domain; raises RouteError."""
        domain = domain.lower().rstrip(".")
        hit = self.cached(domain)
        if isinstance(hit, RouteError):
            raise hit
        if hit is not None:
            return hit
        self.lookups += 1
        try:
            route, ttl = await self._lookup(domain)
        except RouteError as error:
            if error.permanent:
                self._remember(domain, self._clock() + self.min_ttl, error)
            raise
        self._remember(domain, self._clock() + self._clamp(ttl), route)
        return route

    def _clamp(self, ttl: float) -> float:
        return min(max(ttl, self.min_ttl), self.max_ttl)

    async def _lookup(self, domain: str) -> tuple[Route, float]:
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise RouteError(
                permanent=True, code=550, enhanced="5.1.2", text=f"domain {domain} does not exist"
            ) from exc
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.exception.DNSException) as e:
            raise RouteError(
                permanent=False, code=451, enhanced="4.4.3", text=f"MX lookup for {domain}: {e}"
            ) from e
        records = [(int(r.preference), r.exchange.to_text().rstrip(".").lower()) for r in answer]
        if any(name in ("", ".") for _, name in records):
            if len(records) == 1:
                raise RouteError(
                    permanent=True,
                    code=556,
                    enhanced="5.1.10",
                    text=f"domain {domain} accepts no mail (null MX)",
                )
            records = [(p, n) for p, n in records if n not in ("", ".")]
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else self.min_ttl
        hosts: list[MXHost] = []
        for preference, name in records:
            addresses, address_ttl = await self._addresses(name)
            ttl = min(ttl, address_ttl)
            if addresses:
                hosts.append(MXHost(name=name, preference=preference, addresses=addresses))
        if not hosts:
            raise RouteError(
                permanent=False,
                code=451,
                enhanced="4.4.4",
                text=f"no address for any MX host of {domain}",
            )
        ordered = order_hosts(hosts, self._rng)
        return Route(domain=domain, site=site_name(ordered), hosts=ordered), ttl

    async def _implicit_mx(self, domain: str) -> tuple[Route, float]:
        addresses, ttl = await self._addresses(domain)
        if not addresses:
            raise RouteError(
                permanent=True,
                code=550,
                enhanced="5.1.2",
                text=f"domain {domain} has neither MX nor address records",
            )
        host = MXHost(name=domain, preference=0, addresses=addresses)
        return Route(domain=domain, site=domain, hosts=(host,)), ttl

    async def _addresses(self, name: str) -> tuple[tuple[str, ...], float]:
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(name, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                raise RouteError(
                    permanent=False,
                    code=451,
                    enhanced="4.4.3",
                    text=f"address lookup for {name}: {exc}",
                ) from exc
            ttl = float(answer.rrset.ttl) if answer.rrset is not None else self.min_ttl
            return tuple(r.to_text() for r in answer), ttl
        return (), self.min_ttl
