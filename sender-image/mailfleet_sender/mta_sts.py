"""MTA-STS discovery (RFC 8461 §3, §5): the `_mta-sts.<domain>` TXT record, the policy fetched
over HTTPS from `https://mta-sts.<domain>/.well-known/mta-sts.txt`, and a cache kept for the
policy's `max_age`. Parsing and matching are in `tls_policy`; this module does the I/O.

RFC 8461 rules kept here: a policy is fetched again only when the TXT `id` changes or the
cached copy expired; while a cached policy is fresh it keeps applying when the TXT record
disappears or the fetch fails (an attacker who blocks the fetch gains nothing once the
policy was seen); redirects are not followed; the policy host's certificate must be valid
for `mta-sts.<domain>` (WebPKI); the body is `text/plain` and at most 64 KiB. Names are
resolved through the sender's own resolver, like every other lookup.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import aiohttp.abc
import dns.asyncresolver
import dns.exception
import dns.resolver

from mailfleet_sender import tls_policy

log = logging.getLogger(__name__)

MAX_ENTRIES = 10_000
"""Domains whose policy is cached at once (recipient domains are chosen by submitters)."""


@dataclasses.dataclass
class _Cached:
    policy: tls_policy.StsPolicy
    sts_id: str
    expires: float


class NameResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's name lookups through the sender's dnspython resolver."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        try:
            answer = await self._resolver.resolve(host, "A")
        except dns.exception.DNSException as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        return [
            aiohttp.abc.ResolveResult(
                hostname=host, host=r.to_text(), port=port, family=socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
            for r in answer
        ]

    async def close(self) -> None:
        return None


class StsFetcher:
    """Look up a domain's MTA-STS policy (cached). `clock` is monotonic seconds."""

    def __init__(
        self,
        *,
        resolver: dns.asyncresolver.Resolver,
        ssl_context: ssl.SSLContext,
        port: int = 443,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.resolver = resolver
        self.ssl_context = ssl_context
        self.port = port
        self.timeout = timeout
        self._clock = clock
        self.max_entries = max_entries
        self._cache: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self.fetches = 0

    def _fresh(self, domain: str) -> _Cached | None:
        entry = self._cache.get(domain)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return entry

    async def lookup(self, domain: str) -> tls_policy.StsAnswer:
        domain = domain.lower().rstrip(".")
        cached = self._fresh(domain)
        try:
            sts_id = await self._record_id(domain)
        except tls_policy.PolicyError as exc:
            return tls_policy.StsAnswer(
                cached.policy if cached else None, tls_policy.Result.STS_POLICY_INVALID, str(exc)
            )
        except dns.exception.DNSException:
            # No answer we can trust either way: keep what we know (RFC 8461 §5.1).
            return tls_policy.StsAnswer(cached.policy if cached else None)
        if sts_id is None:
            return tls_policy.StsAnswer(cached.policy if cached else None)
        if cached is not None and cached.sts_id == sts_id:
            return tls_policy.StsAnswer(cached.policy)
        try:
            policy = await self._fetch(domain)
        except _FetchError as error:
            log.info("MTA-STS policy fetch failed",
                     extra={"domain": domain, "reason": str(error.result)})
            return tls_policy.StsAnswer(
                cached.policy if cached else None, error.result, error.detail
            )
        if policy.mode == "none" or policy.max_age == 0:
            self._cache.pop(domain, None)
        else:
            self._remember(domain, _Cached(policy, sts_id, self._clock() + policy.max_age))
        return tls_policy.StsAnswer(policy)

    def _remember(self, domain: str, entry: _Cached) -> None:
        self._cache[domain] = entry
        self._cache.move_to_end(domain)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    async def _record_id(self, domain: str) -> str | None:
        try:
            answer = await self.resolver.resolve(f"_mta-sts.{domain}", "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return tls_policy.parse_sts_record(texts)

    async def _fetch(self, domain: str) -> tls_policy.StsPolicy:
        self.fetches += 1
        host = f"mta-sts.{domain}"
        port = "" if self.port == 443 else f":{self.port}"
        url = f"https://{host}{port}/.well-known/mta-sts.txt"
        connector = aiohttp.TCPConnector(
            resolver=NameResolver(self.resolver), ssl=self.ssl_context, use_dns_cache=False
        )
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                async with http.get(url, allow_redirects=False) as response:
                    if response.status != 200:
                        raise _FetchError(tls_policy.Result.STS_POLICY_FETCH_ERROR,
                                          f"HTTP {response.status} from {host}")
                    if response.content_type != "text/plain":
                        raise _FetchError(tls_policy.Result.STS_POLICY_INVALID,
                                          f"content type {response.content_type}")
                    body = await response.content.read(tls_policy.STS_MAX_BYTES + 1)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _FetchError(tls_policy.Result.STS_WEBPKI_INVALID, _short(exc)) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _FetchError(tls_policy.Result.STS_POLICY_FETCH_ERROR, _short(exc)) from exc
        try:
            return tls_policy.parse_sts_policy(body.decode("utf-8"))
        except (tls_policy.PolicyError, UnicodeDecodeError) as exc:
            raise _FetchError(tls_policy.Result.STS_POLICY_INVALID, str(exc)) from exc


class _FetchError(Exception):
    def __init__(self, result: tls_policy.Result, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


def _short(exc: Any) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
