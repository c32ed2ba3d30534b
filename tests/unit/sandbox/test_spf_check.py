"""RFC 7208 evaluation by the provider simulators' SPF checker, against an in-memory DNS."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from mailfleet_sandbox import spf_check

BASE_DNS: dict[tuple[str, str], list[str]] = {
    ("example.test", "A"): ["192.0.2.10"],
    ("example.test", "MX"): ["mx1.example.test", "mx2.example.test"],
    ("mx1.example.test", "A"): ["192.0.2.20"],
    ("mx2.example.test", "A"): ["192.0.2.21"],
    ("esp.test", "TXT"): ["v=spf1 ip4:198.51.100.0/24 -all"],
    ("softesp.test", "TXT"): ["v=spf1 ~all"],
    ("nospf.test", "A"): ["192.0.2.99"],
    ("other.test", "A"): ["203.0.113.5"],
    ("192.0.2.10.allow.test", "A"): ["127.0.0.2"],
    ("10.2.0.192.in-addr.arpa", "PTR"): ["host.example.test"],
    ("host.example.test", "A"): ["192.0.2.10"],
}


@dataclass(frozen=True)
class Case:
    id: str
    record: str | list[str] | None
    ip: str = "192.0.2.10"
    expected: str = "pass"
    extra: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    sender: str = "bounce@example.test"


def chain(n: int) -> dict[tuple[str, str], list[str]]:
    """n includes each pointing to the next, the last one passing everything."""
    records = {(f"i{k}.test", "TXT"): [f"v=spf1 include:i{k + 1}.test -all"] for k in range(n)}
    records[(f"i{n}.test", "TXT")] = ["v=spf1 +all"]
    return records


CASES = [
    Case("an ip4 mechanism covering the client passes", "v=spf1 ip4:192.0.2.0/24 -all"),
    Case("an ip4 host address without CIDR matches exactly", "v=spf1 ip4:192.0.2.10 -all"),
    Case(
        "a client outside every mechanism hits -all and fails",
        "v=spf1 ip4:192.0.2.0/24 -all",
        ip="203.0.113.1",
        expected="fail",
    ),
    Case("~all gives softfail", "v=spf1 ip4:10.0.0.1 ~all", expected="softfail"),
    Case("?all gives neutral", "v=spf1 ?all", expected="neutral"),
    Case("no match and no all gives neutral", "v=spf1 ip4:10.0.0.1", expected="neutral"),
    Case("a domain without SPF record gives none", None, expected="none"),
    Case(
        "two SPF records are a permerror",
        ["v=spf1 -all", "v=spf1 +all"],
        expected="permerror",
    ),
    Case(
        "a non-SPF TXT record beside the SPF record is ignored",
        ["google-site-verification=abc", "v=spf1 ip4:192.0.2.10 -all"],
    ),
    Case("the version tag is case-insensitive", "V=SPF1 ip4:192.0.2.10 -all"),
    Case("the a mechanism matches the domain's own address", "v=spf1 a -all"),
    Case(
        "a:other with a /24 CIDR matches the neighbourhood",
        "v=spf1 a:other.test/24 -all",
        ip="203.0.113.77",
    ),
    Case("the mx mechanism matches any MX host address", "v=spf1 mx -all", ip="192.0.2.21"),
    Case(
        "include of a passing policy passes",
        "v=spf1 include:esp.test -all",
        ip="198.51.100.8",
    ),
    Case(
        "a failing include does not match and evaluation goes on to -all",
        "v=spf1 include:esp.test -all",
        ip="203.0.113.1",
        expected="fail",
    ),
    Case(
        "a softfailing include does not match and later mechanisms still count",
        "v=spf1 include:softesp.test ip4:192.0.2.10 -all",
    ),
    Case(
        "include of a domain without SPF record is a permerror",
        "v=spf1 include:nospf.test -all",
        expected="permerror",
    ),
    Case(
        "redirect hands the decision to the target policy",
        "v=spf1 redirect=esp.test",
        ip="198.51.100.8",
    ),
    Case(
        "redirect is ignored when a mechanism already matched",
        "v=spf1 ip4:192.0.2.10 redirect=esp.test",
    ),
    Case(
        "redirect to a domain without SPF record is a permerror",
        "v=spf1 redirect=nospf.test",
        expected="permerror",
    ),
    Case(
        "an ip6 mechanism matches an IPv6 client",
        "v=spf1 ip6:2001:db8::/32 -all",
        ip="2001:db8::5",
    ),
    Case(
        "an IPv6 client never matches ip4 mechanisms",
        "v=spf1 ip4:0.0.0.0/0 -all",
        ip="2001:db8::5",
        expected="fail",
    ),
    Case(
        "exists with the %{i} macro queries the client address",
        "v=spf1 exists:%{i}.allow.test -all",
    ),
    Case(
        "a reversed-IP macro expands like the RFC example",
        "v=spf1 exists:%{ir}.%{v}.rev.test -all",
        extra={("10.2.0.192.in-addr.rev.test", "A"): ["127.0.0.2"]},
    ),
    Case(
        "the %{o} and %{l} macros read the envelope sender",
        "v=spf1 exists:%{l}.%{o}.senders.test -all",
        extra={("bounce.example.test.senders.test", "A"): ["127.0.0.2"]},
    ),
    Case("a ptr validated by its forward lookup matches", "v=spf1 ptr -all"),
    Case("an unknown modifier is ignored", "v=spf1 foo=bar ip4:192.0.2.10 -all"),
    Case("an unknown mechanism is a permerror", "v=spf1 mechanism -all", expected="permerror"),
    Case("a bad ip4 network is a permerror", "v=spf1 ip4:300.1.1.1 -all", expected="permerror"),
    Case(
        "two redirect modifiers are a permerror",
        "v=spf1 redirect=a.test redirect=b.test",
        expected="permerror",
    ),
    Case(
        "ten DNS-querying terms are allowed",
        "v=spf1 include:i0.test",
        extra=chain(9),
    ),
    Case(
        "an eleventh DNS-querying term is a permerror",
        "v=spf1 include:i0.test",
        extra=chain(10),
        expected="permerror",
    ),
    Case(
        "a third void lookup is a permerror",
        "v=spf1 a:v1.test a:v2.test a:v3.test -all",
        expected="permerror",
    ),
    Case(
        "an include loop ends in permerror",
        "v=spf1 include:loop.test -all",
        extra={("loop.test", "TXT"): ["v=spf1 include:loop.test -all"]},
        expected="permerror",
    ),
]


def make_lookup(
    records: dict[tuple[str, str], list[str]], failing: set[str] | None = None
) -> spf_check.Lookup:
    async def lookup(name: str, rtype: str) -> list[str]:
        if failing and name in failing:
            raise spf_check.TempDNSError(f"SERVFAIL for {name}")
        return list(records.get((name.lower().rstrip("."), rtype), []))

    return lookup


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_check_host(case: Case) -> None:
    records = dict(BASE_DNS)
    records.update(case.extra)
    if case.record is not None:
        records[("example.test", "TXT")] = (
            [case.record] if isinstance(case.record, str) else case.record
        )
    result = await spf_check.check_host(
        case.ip, "example.test", case.sender, lookup=make_lookup(records), helo="mta.example.test"
    )
    assert result.result == case.expected, result


async def test_a_dns_failure_is_a_temperror() -> None:
    records = {("example.test", "TXT"): ["v=spf1 include:esp.test -all"], **BASE_DNS}
    result = await spf_check.check_host(
        "192.0.2.10",
        "example.test",
        "bounce@example.test",
        lookup=make_lookup(records, failing={"esp.test"}),
    )
    assert result.result == "temperror"


async def test_the_matching_term_and_lookup_count_are_reported() -> None:
    records = {("example.test", "TXT"): ["v=spf1 mx include:esp.test -all"], **BASE_DNS}
    result = await spf_check.check_host(
        "198.51.100.8", "example.test", "bounce@example.test", lookup=make_lookup(records)
    )
    assert result == spf_check.SpfResult("pass", "include:esp.test", lookups=2)


async def test_null_sender_is_checked_as_postmaster_at_the_helo_name() -> None:
    records = {("mta.example.test", "TXT"): ["v=spf1 exists:%{l}.%{o}.ok.test -all"]}
    records[("postmaster.mta.example.test.ok.test", "A")] = ["127.0.0.2"]
    result = await spf_check.check_host(
        "192.0.2.10", "mta.example.test", "", lookup=make_lookup(records), helo="mta.example.test"
    )
    assert result.result == "pass"
