"""SPF evaluation (RFC 7208 `check_host()`), used by the provider simulators to judge what
arrives independently of the code that published the records. No I/O: DNS comes through an
injected async `Lookup` function, so the evaluation is table-tested without sockets.

Why our own and not pyspf: pyspf (the PyPI reference implementation) is not installed here, is
synchronous (the receivers live on the same event loop as the sandbox DNS server, so a blocking
lookup would deadlock), and its last release is from 2020. This module covers what the sandbox
needs, with tests: ip4, ip6, a, mx, ptr, include, exists, all, redirect, exp (ignored, only
parsed), macros (RFC 7208 §7), the 10 DNS-lookup limit (§4.6.4) and the 2 void-lookup limit,
the 10-name MX/PTR limit, and the result mapping for include and redirect (§5.2, §6.1).
Explanations (exp=) are not fetched: receivers here do not render them.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
LOOKUP_LIMIT = 10
"""Mechanisms and modifiers that query DNS (include, a, mx, ptr, exists, redirect), §4.6.4."""
VOID_LOOKUP_LIMIT = 2
"""Lookups answering NXDOMAIN or no records tolerated before permerror (§4.6.4)."""
MX_NAMES_LIMIT = 10
"""At most this many MX (or PTR) names looked up per mechanism (§4.6.4)."""

Lookup = Callable[[str, str], Awaitable[list[str]]]
"""(name, rtype) -> values. TXT: each record's strings joined; A/AAAA: addresses; MX and PTR:
target names (no final dot, "" for a null MX). [] for NXDOMAIN/NODATA; raise `TempDNSError` on
SERVFAIL or a timeout."""


class TempDNSError(Exception):
    """A DNS failure that may go away (SERVFAIL, timeout): SPF temperror."""


class PermError(Exception):
    """The record is broken or exceeds a limit: SPF permerror."""


@dataclass(frozen=True)
class SpfResult:
    result: str
    """One of RESULTS."""
    mechanism: str = ""
    """The term that matched (e.g. "ip4:127.0.0.0/8"), or why there was no match."""
    lookups: int = 0
    """DNS-querying terms evaluated: what the 10-lookup limit counts."""


@dataclass
class _Budget:
    lookups: int = 0
    voids: int = 0

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise PermError(f"more than {LOOKUP_LIMIT} DNS lookups")

    def count_void(self, values: list[str]) -> None:
        if not values:
            self.voids += 1
            if self.voids > VOID_LOOKUP_LIMIT:
                raise PermError(f"more than {VOID_LOOKUP_LIMIT} void lookups")


@dataclass(frozen=True)
class _Context:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    lookup: Lookup
    budget: _Budget = field(default_factory=_Budget)


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_MODIFIER = re.compile(r"^([a-zA-Z][a-zA-Z0-9_.-]*)=(.*)$")
_MACRO = re.compile(r"%\{([slodiphcrtv])([0-9]*)(r?)([-.+,/_=]*)\}", re.IGNORECASE)


async def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    lookup: Lookup,
    helo: str = "",
) -> SpfResult:
    """Evaluate the SPF policy of `domain` for a message from `ip` with MAIL FROM `sender`.

    `sender` may be empty (bounces): then, as RFC 7208 §2.4 says, the identity is
    postmaster@helo and `domain` should be the HELO name.
    """
    context = _Context(
        ip=ipaddress.ip_address(ip),
        sender=sender or f"postmaster@{helo or domain}",
        helo=helo,
        lookup=lookup,
    )
    try:
        result, term = await _check(context, domain.rstrip(".").lower(), depth=0)
    except TempDNSError as error:
        return SpfResult("temperror", str(error), context.budget.lookups)
    except PermError as error:
        return SpfResult("permerror", str(error), context.budget.lookups)
    return SpfResult(result, term, context.budget.lookups)


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels)


async def _fetch_policy(context: _Context, domain: str) -> str | None:
    records = await context.lookup(domain, "TXT")
    spf = [r for r in records if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]
    if len(spf) > 1:
        raise PermError(f"{domain} has {len(spf)} SPF records")
    return spf[0] if spf else None


async def _check(context: _Context, domain: str, depth: int) -> tuple[str, str]:
    if not _valid_domain(domain):
        return "none", f"invalid domain {domain!r}"
    if depth > LOOKUP_LIMIT:  # include loops are caught by the lookup budget already
        raise PermError("include/redirect nesting too deep")
    record = await _fetch_policy(context, domain)
    if record is None:
        return "none", f"no SPF record at {domain}"
    terms = record.split()[1:]
    redirect: str | None = None
    seen_modifiers: set[str] = set()
    directives: list[tuple[str, str, str]] = []
    for term in terms:
        modifier = _MODIFIER.match(term)
        if modifier and modifier.group(1).lower() not in _MECHANISMS:
            name = modifier.group(1).lower()
            if name in ("redirect", "exp"):
                if name in seen_modifiers:
                    raise PermError(f"{name}= given twice")
                seen_modifiers.add(name)
                if name == "redirect":
                    redirect = modifier.group(2)
            continue  # unknown modifiers are ignored (§6)
        qualifier = "+"
        if term[0] in _QUALIFIERS:
            qualifier, term = term[0], term[1:]
        name, sep, argument = _split_mechanism(term)
        if name not in _MECHANISMS:
            raise PermError(f"unknown mechanism {term!r}")
        directives.append((qualifier, name, sep + argument))
    for qualifier, name, argument in directives:
        if await _matches(context, domain, name, argument, depth):
            shown = f"{qualifier if qualifier != '+' else ''}{name}{argument}"
            return _QUALIFIERS[qualifier], shown
    if redirect is not None:
        context.budget.count_lookup()
        target = _expand(context, domain, redirect).rstrip(".").lower()
        result, term = await _check(context, target, depth + 1)
        if result == "none":
            raise PermError(f"redirect target {target} has no SPF record")
        return result, term
    return "neutral", "no mechanism matched"


def _split_mechanism(term: str) -> tuple[str, str, str]:
    for index, char in enumerate(term):
        if char in ":/":
            return term[:index].lower(), char, term[index + 1 :]
    return term.lower(), "", ""


def _split_cidr(spec: str) -> tuple[str, int | None, int | None]:
    """Split a dual CIDR: "example.test/24//64" -> ("example.test", 24, 64)."""
    cidr4: int | None = None
    cidr6: int | None = None
    if "//" in spec:
        spec, _, v6 = spec.partition("//")
        cidr6 = _cidr(v6, 128)
    if "/" in spec:
        spec, _, v4 = spec.partition("/")
        cidr4 = _cidr(v4, 32)
    return spec, cidr4, cidr6


def _cidr(text: str, maximum: int) -> int:
    if not text.isdigit() or int(text) > maximum or (len(text) > 1 and text[0] == "0"):
        raise PermError(f"bad CIDR length {text!r}")
    return int(text)


def _in_network(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, address: str, prefix: int | None
) -> bool:
    try:
        candidate = ipaddress.ip_address(address)
    except ValueError:
        return False
    if candidate.version != ip.version:
        return False
    length = prefix if prefix is not None else candidate.max_prefixlen
    return ip in ipaddress.ip_network(f"{candidate}/{length}", strict=False)


async def _matches(context: _Context, domain: str, name: str, argument: str, depth: int) -> bool:
    spec = argument[1:] if argument.startswith(":") else argument
    if name == "all":
        if argument:
            raise PermError("all takes no argument")
        return True
    if name in ("ip4", "ip6"):
        if not argument.startswith(":"):
            raise PermError(f"{name} needs an address")
        network_text = spec
        try:
            network = ipaddress.ip_network(network_text, strict=False)
        except ValueError as error:
            raise PermError(f"bad {name} network {spec!r}") from error
        if (name == "ip4") != (network.version == 4):
            raise PermError(f"{name} with a v{network.version} network")
        return context.ip.version == network.version and context.ip in network
    if name == "include":
        if not spec:
            raise PermError("include needs a domain")
        context.budget.count_lookup()
        target = _expand(context, domain, spec).rstrip(".").lower()
        result, _term = await _check(context, target, depth + 1)
        if result == "pass":
            return True
        if result in ("fail", "softfail", "neutral"):
            return False
        if result == "temperror":
            raise TempDNSError(f"include:{target} temperror")
        raise PermError(f"include:{target} gave {result}")
    if name == "exists":
        if not spec:
            raise PermError("exists needs a domain")
        context.budget.count_lookup()
        values = await context.lookup(_expand(context, domain, spec).rstrip("."), "A")
        context.budget.count_void(values)
        return bool(values)
    # a, mx, ptr: optional domain-spec with dual CIDR (ptr has no CIDR)
    target_spec, cidr4, cidr6 = _split_cidr(argument)
    if target_spec.startswith(":"):
        target_spec = target_spec[1:]
        if not target_spec:
            raise PermError(f"{name}: with an empty domain")
    elif target_spec:
        raise PermError(f"bad {name} term")
    target = _expand(context, domain, target_spec).rstrip(".") if target_spec else domain
    prefix = cidr4 if context.ip.version == 4 else cidr6
    rtype = "A" if context.ip.version == 4 else "AAAA"
    context.budget.count_lookup()
    if name == "a":
        addresses = await context.lookup(target, rtype)
        context.budget.count_void(addresses)
        return any(_in_network(context.ip, address, prefix) for address in addresses)
    if name == "mx":
        exchanges = [x for x in await context.lookup(target, "MX") if x not in ("", ".")]
        context.budget.count_void(exchanges)
        if len(exchanges) > MX_NAMES_LIMIT:
            raise PermError(f"mx:{target} has more than {MX_NAMES_LIMIT} names")
        for exchange in exchanges:
            addresses = await context.lookup(exchange, rtype)
            if any(_in_network(context.ip, address, prefix) for address in addresses):
                return True
        return False
    # ptr (deprecated, §5.5): a validated reverse name at or under the target
    return await _validated_ptr_matches(context, target)


async def _validated_ptr_matches(context: _Context, target: str) -> bool:
    names = (await context.lookup(context.ip.reverse_pointer, "PTR"))[:MX_NAMES_LIMIT]
    rtype = "A" if context.ip.version == 4 else "AAAA"
    for ptr_name in names:
        ptr_name = ptr_name.rstrip(".").lower()
        if ptr_name != target.lower() and not ptr_name.endswith("." + target.lower()):
            continue
        try:
            addresses = await context.lookup(ptr_name, rtype)
        except TempDNSError:
            continue
        if str(context.ip) in {str(ipaddress.ip_address(a)) for a in addresses}:
            return True
    return False


def _expand(context: _Context, domain: str, spec: str) -> str:
    """Macro expansion (RFC 7208 §7) for domain-specs; %{p} expands to "unknown"."""
    if "%" not in spec:
        return spec
    local, _, sender_domain = context.sender.rpartition("@")
    ip = context.ip
    if ip.version == 4:
        dotted_ip = str(ip)
    else:
        dotted_ip = ".".join(ip.exploded.replace(":", ""))
    values = {
        "s": context.sender,
        "l": local or "postmaster",
        "o": sender_domain,
        "d": domain,
        "i": dotted_ip,
        "p": "unknown",
        "v": "in-addr" if ip.version == 4 else "ip6",
        "h": context.helo or domain,
        "c": str(ip),
        "r": "unknown",
        "t": "0",
    }
    out: list[str] = []
    index = 0
    while index < len(spec):
        char = spec[index]
        if char != "%":
            out.append(char)
            index += 1
            continue
        following = spec[index + 1 : index + 2]
        if following == "%":
            out.append("%")
            index += 2
        elif following == "_":
            out.append(" ")
            index += 2
        elif following == "-":
            out.append("%20")
            index += 2
        elif following == "{":
            match = _MACRO.match(spec, index)
            if match is None:
                raise PermError(f"bad macro in {spec!r}")
            letter, digits, reverse, delimiters = match.groups()
            value = values[letter.lower()]
            parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                if int(digits) == 0:
                    raise PermError("macro keeps zero labels")
                parts = parts[-int(digits) :]
            expanded = ".".join(parts)
            if letter.isupper():
                expanded = urllib.parse.quote(expanded, safe="")
            out.append(expanded)
            index = match.end()
        else:
            raise PermError(f"bad % escape in {spec!r}")
    return "".join(out)
