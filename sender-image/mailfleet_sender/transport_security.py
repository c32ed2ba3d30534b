"""The transport security of each recipient domain, looked up and kept: DNSSEC-validated TLSA
records through the validating resolver the config names (`delivery.tls.daneResolver`),
MTA-STS policies (`mta_sts`), and the decision of `tls_policy` cached for `policyRefresh`.
Also where TLS outcomes are counted: the `mailfleet_sender_tls_sessions_total{result,policy}`
metric, the per-IP and per-provider TLS shares of /v1/stats, and the TLS-RPT aggregate.

Why the AD bit only from the named resolver: any resolver can set it, so it means something
only when the path to a resolver that validates is trusted (RFC 7672 §2.1, RFC 6698 §4.1).
The general resolvers (`dns.nameservers`) are never asked about TLSA.
"""

from __future__ import annotations

import collections
import dataclasses
import ssl
import time
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.nameserver
import dns.resolver
from prometheus_client import Counter

from mailfleet_sender import (
    config,
    dane,
    delivering,
    metrics,
    mta_sts,
    mx,
    tls_policy,
    tlsrpt,
    units,
    wire,
)

MAX_CACHED = 10_000
"""Domains whose decided policy is kept (recipient domains are chosen by submitters)."""


@dataclasses.dataclass
class Share:
    """Connections that carried mail, and how many of them were encrypted."""

    sessions: int = 0
    tls: int = 0


def make_validating_resolver(
    resolver: config.DaneResolver, *, timeout: float
) -> dns.asyncresolver.Resolver:
    """Asks with DO and AD set (RFC 6840 §5.7) so the resolver reports validation in AD."""
    out = dns.asyncresolver.Resolver(configure=False)
    out.nameservers = [dns.nameserver.Do53Nameserver(resolver.address, resolver.port)]
    out.timeout = timeout
    out.lifetime = timeout
    out.use_edns(0, dns.flags.DO, 1232)
    out.flags = dns.flags.RD | dns.flags.AD
    return out


class TransportSecurity:
    """Policies per domain and the counters of what happened. `clock`: monotonic seconds."""

    def __init__(
        self,
        cfg: config.SenderConfig,
        *,
        resolver: dns.asyncresolver.Resolver,
        metric_set: metrics.Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._resolver = resolver
        self.sessions = Counter(
            f"{metrics.PREFIX}_tls_sessions",
            "Outbound connections by TLS result (tls, fallback, plaintext, failed) and the "
            "policy that governed them (dane, mta-sts, require-tls, opportunistic, none).",
            ["result", "policy"],
            registry=metric_set.registry,
        )
        self.by_ip: dict[str, Share] = collections.defaultdict(Share)
        self.by_provider: dict[str, Share] = collections.defaultdict(Share)
        self.refused = 0
        self.fallbacks = 0
        self.reports = tlsrpt.Aggregator(wall=wall)
        self._cache: collections.OrderedDict[tuple[str, str], tuple[float, tls_policy.DomainPolicy]]
        self._cache = collections.OrderedDict()
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self.reconfigure(cfg)

    def reconfigure(self, cfg: config.SenderConfig) -> None:
        self.cfg = cfg
        tls = cfg.delivery.tls
        timeout = units.duration_seconds(tls.policy_fetch_timeout)
        self._validating = (
            make_validating_resolver(tls.dane_resolver, timeout=timeout)
            if tls.dane_resolver is not None else None
        )
        self.sts = mta_sts.StsFetcher(
            resolver=self._resolver,
            ssl_context=delivering.make_context("webpki", "TLSv1.2", tls.ca_file),
            port=tls.mta_sts_port,
            timeout=timeout,
            clock=self._clock,
        )
        self._contexts.clear()
        self._cache.clear()

    def context(self, verify: str, min_version: str) -> ssl.SSLContext:
        key = (verify, min_version)
        found = self._contexts.get(key)
        if found is None:
            found = self._contexts[key] = delivering.make_context(
                verify, min_version, self.cfg.delivery.tls.ca_file
            )
        return found

    # --- policies ---------------------------------------------------------------------------

    def cached(self, domain: str, provider: str) -> tls_policy.DomainPolicy | None:
        entry = self._cache.get((domain, provider))
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def policy(
        self, domain: str, route: mx.Route, provider: str
    ) -> tls_policy.DomainPolicy:
        """The domain's policy for its current MX hosts (cached for `policyRefresh`)."""
        found = self.cached(domain, provider)
        if found is not None and set(found.hosts) == set(route.host_names):
            return found
        settings = self.cfg.delivery.tls.settings_for(
            provider, opportunistic=self.cfg.delivery.opportunistic_tls
        )
        dane_answer = await self._dane(domain, route) if settings.dane else None
        sts_answer = await self.sts.lookup(domain) if settings.mta_sts else None
        decided = tls_policy.decide(
            domain=domain, mx_hosts=route.host_names, settings=settings,
            dane_answer=dane_answer, sts_answer=sts_answer,
        )
        if sts_answer is not None and sts_answer.error is not None:
            self.reports.policy_error(domain, sts_answer.error, sts_answer.detail)
        refresh = units.duration_seconds(self.cfg.delivery.tls.policy_refresh)
        self._cache[(domain, provider)] = (self._clock() + refresh, decided)
        self._cache.move_to_end((domain, provider))
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return decided

    async def _dane(self, domain: str, route: mx.Route) -> tls_policy.DaneAnswer | None:
        resolver = self._validating
        if resolver is None:
            return None
        try:
            mx_secure = await self._secure(resolver, domain, "MX")
        except dns.exception.DNSException:
            # Bogus or unanswerable under the validating resolver: no host is trusted.
            bogus = tls_policy.TlsaAnswer(status="bogus")
            return tls_policy.DaneAnswer(True, {h: bogus for h in route.host_names})
        if not mx_secure:
            return tls_policy.DaneAnswer(False)
        port = self.cfg.delivery.smtp_port
        answers: dict[str, tls_policy.TlsaAnswer] = {}
        for host in route.host_names:
            answers[host] = await self._tlsa(resolver, f"_{port}._tcp.{host}")
        return tls_policy.DaneAnswer(True, answers)

    @staticmethod
    async def _secure(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> bool:
        """Whether the answer (or the denial) for name/rdtype was validated."""
        try:
            answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return False  # the general resolver found a route: no DANE on a disagreement
        if answer.rrset is None and rdtype == "MX":
            return await TransportSecurity._secure(resolver, name, "A")  # implicit MX
        return bool(answer.response.flags & dns.flags.AD)

    @staticmethod
    async def _tlsa(resolver: dns.asyncresolver.Resolver, name: str) -> tls_policy.TlsaAnswer:
        try:
            answer = await resolver.resolve(name, "TLSA", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return tls_policy.TlsaAnswer(status="insecure")
        except dns.exception.DNSException:
            return tls_policy.TlsaAnswer(status="bogus")
        if not answer.response.flags & dns.flags.AD or answer.rrset is None:
            return tls_policy.TlsaAnswer(status="insecure")
        records = tuple(
            dane.TLSA(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
            for r in answer
        )
        return tls_policy.TlsaAnswer(status="secure", records=records)

    def stats(self) -> wire.TLSStats:
        def share(s: Share) -> wire.TLSShare:
            return wire.TLSShare(sessions=s.sessions, tls=s.tls,
                                 share=s.tls / s.sessions if s.sessions else None)

        return wire.TLSStats(
            by_ip={k: share(v) for k, v in self.by_ip.items()},
            by_provider={k: share(v) for k, v in self.by_provider.items()},
            refused=self.refused, fallbacks=self.fallbacks,
        )

    # --- outcomes ---------------------------------------------------------------------------

    def observer(
        self, *, domain: str, source_ip: str, provider: str, policy: tls_policy.DomainPolicy
    ) -> Callable[[delivering.TlsEvent], None]:
        """The callback one connection attempt reports its TLS outcomes to."""

        def observe(event: delivering.TlsEvent) -> None:
            if event.refused:
                result = "failed"
            elif event.tls:
                result = "tls"
            elif event.fallback:
                result = "fallback"
            else:
                result = "plaintext"
            self.sessions.labels(result=result, policy=str(event.mode)).inc()
            self.refused += int(event.refused)
            self.fallbacks += int(event.fallback and not event.tls)
            if not event.refused:
                for share in (self.by_ip[source_ip], self.by_provider[provider]):
                    share.sessions += 1
                    share.tls += int(event.tls)
            if event.mode in (tls_policy.Mode.DANE, tls_policy.Mode.MTA_STS):
                self.reports.session(domain=domain, policy=policy, event=event,
                                     source_ip=source_ip)

        return observe
