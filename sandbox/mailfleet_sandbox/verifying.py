"""Independent SPF, DKIM and DMARC verification of a received message, as a mailbox provider
does it on receipt. The provider simulators call `verify_message`; tests read the verdicts.

DNS goes through an async dnspython resolver (normally the sandbox DNSServer's), because the
receivers share the event loop with that server. dkimpy's verifier is synchronous, so the
selector keys are fetched first, asynchronously, and handed to dkimpy from a dict.

DMARC's organizational domain is approximated as the last two labels of a name ("mail.example
.test" -> "example.test"); the Public Suffix List is not consulted. Good enough for `.test`
names in the sandbox, wrong for e.g. `example.co.uk`.
"""

from __future__ import annotations

import email.utils
import logging
import re
from dataclasses import dataclass

import dkim
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from mailfleet_sandbox import reports, spf_check

log = logging.getLogger(__name__)


def make_lookup(resolver: dns.asyncresolver.Resolver) -> spf_check.Lookup:
    """Adapt a dnspython async resolver to the `spf_check.Lookup` interface."""

    async def lookup(name: str, rtype: str) -> list[str]:
        try:
            answer = await resolver.resolve(name, rtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as error:
            raise spf_check.TempDNSError(f"{name} {rtype}: {error}") from error
        except dns.exception.DNSException as error:  # e.g. an invalid name
            raise spf_check.PermError(f"{name} {rtype}: {error}") from error
        if answer.rrset is None:
            return []
        values: list[str] = []
        for rdata in answer.rrset:
            if rdata.rdtype == dns.rdatatype.TXT:
                values.append(b"".join(rdata.strings).decode("utf-8", errors="replace"))
            elif rdata.rdtype == dns.rdatatype.MX:
                exchange = rdata.exchange
                values.append("" if exchange == dns.name.root else exchange.to_text(True))
            elif rdata.rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME):
                values.append(rdata.target.to_text(True))
            else:
                values.append(rdata.to_text())
        return values

    return lookup


@dataclass(frozen=True)
class DmarcPolicy:
    """The tags of a DMARC record that alignment and reporting need (RFC 7489 §6.3)."""

    domain: str
    """Where the record was found (the From domain or its organizational domain)."""
    policy: str
    subdomain_policy: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


def organizational_domain(domain: str) -> str:
    """Last two labels: the sandbox's stand-in for a Public Suffix List lookup."""
    labels = domain.rstrip(".").lower().split(".")
    return ".".join(labels[-2:])


def parse_dmarc(domain: str, record: str) -> DmarcPolicy | None:
    """Tags of a `v=DMARC1` record; None when it is not one or has no valid p= (RFC 7489 §6.6.3)."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip()
    if tags.get("v") != "DMARC1":
        return None
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return None
    pct_text = tags.get("pct", "100")
    return DmarcPolicy(
        domain=domain,
        policy=policy,
        subdomain_policy=tags.get("sp", policy).lower(),
        adkim=tags.get("adkim", "r").lower(),
        aspf=tags.get("aspf", "r").lower(),
        pct=int(pct_text) if pct_text.isdigit() else 100,
    )


async def find_dmarc_policy(lookup: spf_check.Lookup, from_domain: str) -> DmarcPolicy | None:
    """_dmarc.<From domain>, then _dmarc.<organizational domain> (RFC 7489 §6.6.3)."""
    candidates = [from_domain]
    org = organizational_domain(from_domain)
    if org != from_domain:
        candidates.append(org)
    for domain in candidates:
        records = await lookup(f"_dmarc.{domain}", "TXT")
        policies = [p for p in (parse_dmarc(domain, r) for r in records) if p is not None]
        if len(policies) == 1:
            return policies[0]
    return None


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Strict: same name; relaxed: same organizational domain (RFC 7489 §3.1)."""
    a, b = identifier.rstrip(".").lower(), from_domain.rstrip(".").lower()
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


_TAG = re.compile(rb"\s*([a-z]+)\s*=\s*([^;]*)", re.IGNORECASE)


def dkim_signatures(data: bytes) -> list[tuple[str, str]]:
    """(d=, s=) of every DKIM-Signature header, top first."""
    headers, _body = reports.split_original(data)
    found: list[tuple[str, str]] = []
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", headers)
    for line in unfolded.splitlines():
        name, sep, value = line.partition(b":")
        if not sep or name.strip().lower() != b"dkim-signature":
            continue
        tags = {m.group(1).lower(): m.group(2).strip() for m in _TAG.finditer(value)}
        domain = re.sub(rb"\s+", b"", tags.get(b"d", b"")).decode(errors="replace")
        selector = re.sub(rb"\s+", b"", tags.get(b"s", b"")).decode(errors="replace")
        found.append((domain, selector))
    return found


async def verify_dkim(lookup: spf_check.Lookup, data: bytes) -> tuple[str, list[str]]:
    """("pass"|"fail"|"none", domains whose signature verified)."""
    signatures = dkim_signatures(data)
    if not signatures:
        return "none", []
    keys: dict[bytes, bytes] = {}
    for domain, selector in signatures:
        name = f"{selector}._domainkey.{domain}"
        try:
            records = await lookup(name, "TXT")
        except (spf_check.TempDNSError, spf_check.PermError):
            records = []
        if records:
            keys[(name + ".").lower().encode()] = records[0].encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return keys.get(name.lower())

    verifier = dkim.DKIM(data)
    passed: list[str] = []
    for index, (domain, _selector) in enumerate(signatures):
        try:
            ok = verifier.verify(idx=index, dnsfunc=dnsfunc)
        except dkim.DKIMException as error:
            log.debug("dkim signature invalid", extra={"domain": domain, "error": str(error)})
            ok = False
        if ok and domain.lower() not in passed:
            passed.append(domain.lower())
    return ("pass" if passed else "fail"), passed


async def verify_message(
    *,
    resolver: dns.asyncresolver.Resolver,
    peer_ip: str,
    helo: str,
    mail_from: str,
    data: bytes,
) -> dict[str, str]:
    """Verdicts: spf, dkim, dmarc (the three results), plus details under dotted keys:
    spf.domain, dkim.domains (comma-separated, verified only), from_domain, dmarc.policy."""
    lookup = make_lookup(resolver)
    spf_domain = (mail_from.rpartition("@")[2] if mail_from else helo).lower()
    spf = await spf_check.check_host(peer_ip, spf_domain, mail_from, lookup=lookup, helo=helo)
    dkim_result, dkim_domains = await verify_dkim(lookup, data)
    verdicts = {
        "spf": spf.result,
        "spf.domain": spf_domain,
        "dkim": dkim_result,
        "dkim.domains": ",".join(dkim_domains),
    }
    from_domain = (
        email.utils.parseaddr(reports.header_value(data, "From") or "")[1]
        .rpartition("@")[2]
        .lower()
    )
    verdicts["from_domain"] = from_domain
    if not from_domain:
        verdicts["dmarc"] = "none"
        return verdicts
    try:
        policy = await find_dmarc_policy(lookup, from_domain)
    except spf_check.TempDNSError:
        verdicts["dmarc"] = "temperror"
        return verdicts
    except spf_check.PermError:
        policy = None
    if policy is None:
        verdicts["dmarc"] = "none"
        return verdicts
    verdicts["dmarc.policy"] = (
        policy.subdomain_policy if policy.domain != from_domain else policy.policy
    )
    spf_aligned = spf.result == "pass" and aligned(spf_domain, from_domain, policy.aspf)
    dkim_aligned = any(aligned(d, from_domain, policy.adkim) for d in dkim_domains)
    verdicts["dmarc"] = "pass" if spf_aligned or dkim_aligned else "fail"
    return verdicts
