"""SPF lookup counting over include trees, and flattening, with a dict standing in for DNS."""

from __future__ import annotations

import pytest
from mailfleet_operator.logic import spf_lookups


class DictResolver:
    def __init__(
        self,
        txt: dict[str, list[str]],
        addresses: dict[str, list[str]] | None = None,
        mx: dict[str, list[str]] | None = None,
        failing: tuple[str, ...] = (),
    ) -> None:
        self._txt, self._addresses, self._mx = txt, addresses or {}, mx or {}
        self._failing = failing
        self.asked: list[str] = []

    def txt(self, name: str) -> list[str]:
        self.asked.append(name)
        if name in self._failing:
            raise spf_lookups.LookupFailed("SERVFAIL")
        return self._txt.get(name, [])

    def addresses(self, name: str) -> list[str]:
        return self._addresses.get(name, [])

    def mx(self, name: str) -> list[str]:
        return self._mx.get(name, [])


def _chain(depth: int, terms_each: str = "") -> dict[str, list[str]]:
    """i0 includes i1 includes ... each with extra terms."""
    zone = {}
    for level in range(depth):
        nxt = f" include:i{level + 1}.test" if level + 1 < depth else ""
        zone[f"i{level}.test"] = [f"v=spf1 {terms_each}{nxt} -all".replace("  ", " ")]
    return zone


@pytest.mark.parametrize(
    ("record", "zone", "count", "problems"),
    [
        pytest.param("v=spf1 ip4:192.0.2.1 -all", {}, 0, (),
                     id="ip4 and all need no lookup"),
        pytest.param("v=spf1 a mx ptr exists:%{i}.x.test -all", {}, 4, (),
                     id="a mx ptr and exists each count once"),
        pytest.param("v=spf1 include:i0.test -all", _chain(3), 3, (),
                     id="every include in the chain counts, recursively"),
        pytest.param("v=spf1 include:i0.test -all", _chain(3, "a mx"), 9, (),
                     id="lookups inside includes count too"),
        pytest.param("v=spf1 include:i0.test include:j.test -all",
                     {**_chain(4, "a mx"), "j.test": ["v=spf1 a -all"]}, 14, (),
                     id="a tree past ten lookups is counted in full"),
        pytest.param("v=spf1 redirect=i0.test", _chain(1, "mx"), 2, (),
                     id="redirect counts and is followed"),
        pytest.param("v=spf1 include:missing.test -all", {}, 1,
                     ("missing.test has no SPF record",),
                     id="an include without an SPF record is a problem"),
        pytest.param("v=spf1 include:loop.test -all",
                     {"loop.test": ["v=spf1 include:loop.test -all"]}, 2,
                     ("include loop: loop.test -> loop.test",),
                     id="an include loop is reported and not followed forever"),
        pytest.param("v=spf1 include:two.test -all",
                     {"two.test": ["v=spf1 -all", "v=spf1 a -all"]}, 1,
                     ("two.test has 2 SPF records (permerror)",),
                     id="an include target with two SPF records is a problem"),
    ],
)
def test_count_lookups(
    record: str, zone: dict[str, list[str]], count: int, problems: tuple[str, ...]
) -> None:
    result = spf_lookups.count_lookups(record, resolver=DictResolver(zone))
    assert (result.count, result.problems) == (count, problems)
    assert result.over_limit is (count > 10)


def test_a_failed_lookup_is_a_problem_and_not_a_missing_record() -> None:
    result = spf_lookups.count_lookups(
        "v=spf1 include:down.test -all", resolver=DictResolver({}, failing=("down.test",))
    )
    assert result.problems == ("lookup of down.test failed: SERVFAIL",)


def test_flattening_turns_includes_a_and_mx_into_networks() -> None:
    resolver = DictResolver(
        {
            "esp.test": ["v=spf1 ip4:198.51.100.0/24 include:more.esp.test a mx -all"],
            "more.esp.test": ["v=spf1 ip6:2001:db8::/32 ~all"],
        },
        addresses={"esp.test": ["192.0.2.7"], "mx.esp.test": ["192.0.2.8"]},
        mx={"esp.test": ["mx.esp.test"]},
    )
    flat = spf_lookups.flatten_includes(["esp.test"], resolver=resolver)
    assert flat.networks == ("192.0.2.7/32", "192.0.2.8/32", "198.51.100.0/24", "2001:db8::/32")
    assert flat.kept_terms == ()


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        pytest.param("v=spf1 exists:%{i}.esp.test -all", "macro", id="macros cannot be flattened"),
        pytest.param("v=spf1 ptr -all", "ptr cannot be flattened", id="ptr cannot be flattened"),
        pytest.param("v=spf1 -ip4:192.0.2.1 ip4:192.0.2.0/24 -all", "not a pass",
                     id="a fail term would be turned into a pass, so it is kept"),
    ],
)
def test_includes_that_cannot_be_flattened_are_kept_as_written(record: str, problem: str) -> None:
    resolver = DictResolver({"esp.test": [record], "ok.test": ["v=spf1 ip4:192.0.2.9 -all"]})
    flat = spf_lookups.flatten_includes(["esp.test", "ok.test"], resolver=resolver)
    assert flat.kept_terms == ("include:esp.test",)
    assert flat.networks == ("192.0.2.9/32",)
    assert problem in flat.problems[0]
