"""SPF lookup counting (RFC 7208 §4.6.4) and flattening, over an injected resolver.

Pure: the resolver is a parameter (`SpfResolver`), so the walk itself does no I/O; the
reconciler passes one backed by dnspython (and runs the walk in a thread), tests pass a dict.

Why count: a receiver evaluating SPF stops with `permerror` after 10 DNS-querying terms
(include, a, mx, ptr, exists, redirect), counted over the whole include tree. A record that
is fine today breaks when a provider adds a level to its includes, so the count is
re-checked on every verification.

Flattening replaces includes with the addresses they resolve to, bringing the count to 0 at
the cost of going stale when the provider changes its addresses: the operator re-flattens on
every verification so the published record follows.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Protocol

from mailfleet_operator.logic import records

LOOKUP_LIMIT = 10
"""DNS-querying terms allowed in one SPF evaluation (RFC 7208 §4.6.4)."""
_QUERYING = ("include", "a", "mx", "ptr", "exists")


class LookupFailed(Exception):
    """The resolver could not answer (timeout, SERVFAIL): not the same as 'no record'."""


class SpfResolver(Protocol):
    """The DNS questions SPF evaluation asks. Empty lists mean NXDOMAIN or no data."""

    def txt(self, name: str) -> list[str]:
        """TXT values at `name`, each with its strings joined."""
        ...

    def addresses(self, name: str) -> list[str]:
        """A and AAAA addresses of `name`."""
        ...

    def mx(self, name: str) -> list[str]:
        """MX exchange host names of `name`."""
        ...


@dataclasses.dataclass(frozen=True)
class LookupCount:
    """Result of walking a record's include tree."""

    count: int
    problems: tuple[str, ...] = ()
    """Includes with no SPF record, two SPF records, loops, failed lookups."""

    @property
    def over_limit(self) -> bool:
        return self.count > LOOKUP_LIMIT


def _terms(record: str) -> list[str]:
    return record.split()[1:]


def _mechanism(term: str) -> tuple[str, str]:
    """`include:_spf.x` -> ("include", "_spf.x"); `-a` -> ("a", ""); qualifiers dropped."""
    term = term.lstrip("+-~?")
    if "=" in term and ":" not in term.split("=", 1)[0]:
        name, _, value = term.partition("=")
        return name.lower() + "=", value
    name, _, value = term.partition(":")
    name = name.split("/", 1)[0]
    return name.lower(), value


def _spf_of(resolver: SpfResolver, name: str) -> tuple[str | None, str | None]:
    """(record, problem) for the SPF record at `name`."""
    try:
        found = [value for value in resolver.txt(name) if records.is_spf(value)]
    except LookupFailed as error:
        return None, f"lookup of {name} failed: {error}"
    if not found:
        return None, f"{name} has no SPF record"
    if len(found) > 1:
        return None, f"{name} has {len(found)} SPF records (permerror)"
    return found[0], None


def count_lookups(record: str, *, resolver: SpfResolver) -> LookupCount:
    """Count DNS-querying terms of `record` and, recursively, of its includes and redirect."""
    problems: list[str] = []
    count = _count(record, resolver=resolver, chain=(), problems=problems)
    return LookupCount(count=count, problems=tuple(problems))


def _count(
    record: str, *, resolver: SpfResolver, chain: tuple[str, ...], problems: list[str]
) -> int:
    count = 0
    for term in _terms(record):
        name, value = _mechanism(term)
        if name in _QUERYING or name == "redirect=":
            count += 1
        if name not in ("include", "redirect=") or not value:
            continue
        target = value.lower().rstrip(".")
        if target in chain:
            problems.append(f"include loop: {' -> '.join((*chain, target))}")
            continue
        if count > LOOKUP_LIMIT * 3:
            break  # far past the limit already: stop asking DNS
        child, problem = _spf_of(resolver, target)
        if problem is not None:
            problems.append(problem)
            continue
        assert child is not None
        count += _count(child, resolver=resolver, chain=(*chain, target), problems=problems)
    return count


@dataclasses.dataclass(frozen=True)
class Flattened:
    """Addresses an include tree resolves to, and the terms that could not be flattened."""

    networks: tuple[str, ...]
    kept_terms: tuple[str, ...]
    problems: tuple[str, ...] = ()


def flatten_includes(includes: list[str], *, resolver: SpfResolver) -> Flattened:
    """Resolve `include:` targets into ip4/ip6 networks.

    Terms that cannot be turned into addresses (`exists`, `ptr`, macros with `%`) make the
    whole include stay as written: flattening half of a provider's policy would authorize
    less than the provider intends.
    """
    networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    kept: list[str] = []
    problems: list[str] = []
    for target in includes:
        found: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        ok = _collect(target.lower(), resolver=resolver, chain=(), into=found, problems=problems)
        if ok:
            networks |= found
        else:
            kept.append(f"include:{target}")
    v4 = sorted(n for n in networks if isinstance(n, ipaddress.IPv4Network))
    v6 = sorted(n for n in networks if isinstance(n, ipaddress.IPv6Network))
    return Flattened(
        networks=tuple(str(n) for n in (*v4, *v6)), kept_terms=tuple(kept), problems=tuple(problems)
    )


def _collect(
    name: str,
    *,
    resolver: SpfResolver,
    chain: tuple[str, ...],
    into: set[ipaddress.IPv4Network | ipaddress.IPv6Network],
    problems: list[str],
) -> bool:
    if name in chain or len(chain) > LOOKUP_LIMIT:
        problems.append(f"include loop or depth past the limit at {name}")
        return False
    record, problem = _spf_of(resolver, name)
    if problem is not None:
        problems.append(problem)
        return False
    assert record is not None
    try:
        for term in _terms(record):
            if "%" in term:
                problems.append(f"{name}: macro term {term!r} cannot be flattened")
                return False
            qualifier = term[0] if term[0] in "+-~?" else "+"
            mech, value = _mechanism(term)
            if qualifier != "+" and mech not in ("all",):
                problems.append(f"{name}: term {term!r} is not a pass and cannot be flattened")
                return False
            if mech in ("ip4", "ip6"):
                into.add(ipaddress.ip_network(value, strict=False))
            elif mech in ("include", "redirect="):
                if not _collect(
                    value.lower(), resolver=resolver, chain=(*chain, name), into=into,
                    problems=problems,
                ):
                    return False
            elif mech == "a":
                host, prefix = _host_and_prefix(value, default=name)
                into.update(_networks(resolver.addresses(host), prefix))
            elif mech == "mx":
                host, prefix = _host_and_prefix(value, default=name)
                for exchange in resolver.mx(host):
                    into.update(_networks(resolver.addresses(exchange), prefix))
            elif mech in ("exists", "ptr"):
                problems.append(f"{name}: {mech} cannot be flattened")
                return False
    except LookupFailed as error:
        problems.append(f"lookup under {name} failed: {error}")
        return False
    except ValueError as error:
        problems.append(f"{name}: malformed term ({error})")
        return False
    return True


def _host_and_prefix(value: str, *, default: str) -> tuple[str, str]:
    host, _, prefix = value.partition("/")
    return (host or default), prefix


def _networks(
    addresses: list[str], prefix: str
) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    result: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for address in addresses:
        ip = ipaddress.ip_address(address)
        length = prefix if (prefix and ip.version == 4) else str(ip.max_prefixlen)
        result.add(ipaddress.ip_network(f"{address}/{length}", strict=False))
    return result
