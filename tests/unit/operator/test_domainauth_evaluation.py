"""Pure parts of the DomainAuth controller: DNS answers -> record verdicts, key Secrets ->
generations, status patches, and the kube resource table RBAC is derived from."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import (
    authoritative_answers,
    domainauths,
    key_secrets,
    keys,
    merge_patches,
    records,
    rotating,
)
from mailfleet_operator.reconcile import verifying

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
SPF = records.build_spf_record(domain="example.com", pool_ips=["192.0.2.1"])
DKIM = records.build_dkim_record(
    domain="example.com", selector="mf-1", key_type="rsa", public_key_b64="QUJD"
)
A = domainauths.Answer


@pytest.mark.parametrize(
    ("record", "answer", "published", "problem"),
    [
        pytest.param(SPF, A(values=(SPF.value, "google-site=x")), True, None,
                     id="our SPF record among unrelated TXT records is published"),
        pytest.param(SPF, A(values=("google-site=x",)), False, "not in DNS",
                     id="no SPF record at all is reported missing"),
        pytest.param(SPF, A(values=(SPF.value, "v=spf1 -all")), False,
                     "2 SPF records at example.com, exactly one is allowed",
                     id="two SPF records are an error even if one is ours"),
        pytest.param(SPF, A(values=("v=spf1 -all",)), False,
                     "DNS returns a different value: 'v=spf1 -all'",
                     id="another SPF value is reported with what DNS returns"),
        pytest.param(DKIM, A(values=("v=DKIM1; k=rsa; p=QUJE",)), False,
                     "DNS returns a different key for this selector",
                     id="a different key at the selector is never taken for ours"),
        pytest.param(DKIM, A(error="Timeout"), False, "DNS lookup failed: Timeout",
                     id="a failed lookup is not reported as a missing record"),
    ],
)
def test_check_record(
    record: records.DnsRecord, answer: domainauths.Answer, published: bool, problem: str | None
) -> None:
    check = domainauths.check_record(record, answer)
    assert (check.published, check.problem) == (published, problem)


def _secret(**overrides: Any) -> dict[str, Any]:
    key = keys.generate_key("ed25519")
    generation = rotating.NewGeneration(number=3, algorithms=("ed25519",), selectors=("mf-3",),
                                        trigger="x")
    body = key_secrets.key_secret_body(domainauth="example-com", domain="example.com",
                                       selector="mf-3", generation=generation, key=key, now=NOW)
    body["metadata"]["annotations"].update(overrides)
    return body


def test_a_new_key_secret_reads_back_as_a_pending_key_with_its_public_half() -> None:
    body = _secret()
    assert body["metadata"]["name"] == "example-com-dkim-mf-3"
    parsed = key_secrets.read_key_secret(body, now=NOW)
    assert parsed is not None
    assert (parsed.state, parsed.stored.generation, parsed.trigger) == (
        rotating.KeyState.PENDING, 3, "x")
    assert parsed.stored.public_b64 and parsed.stored.problem is None


def test_a_secret_with_garbage_key_data_is_a_problem_and_not_an_exception() -> None:
    body = _secret()
    body["data"]["private.pem"] = "Z2FyYmFnZQ=="
    parsed = key_secrets.read_key_secret(body, now=NOW)
    assert parsed is not None and parsed.stored.public_b64 is None
    assert parsed.stored.problem == (
        "Secret example-com-dkim-mf-3 key private.pem: not a readable unencrypted PEM private key"
    )


def test_a_generation_is_as_far_along_as_its_least_advanced_secret() -> None:
    ahead = key_secrets.read_key_secret(_secret(**{key_secrets.ANNOTATION_STATE: "Verified"}),
                                        now=NOW)
    behind = key_secrets.read_key_secret(_secret(**{key_secrets.ANNOTATION_STATE: "Published"}),
                                         now=NOW)
    assert ahead is not None and behind is not None
    (generation,) = key_secrets.group_generations([ahead, behind])
    assert generation.state == rotating.KeyState.PUBLISHED


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        pytest.param({"a": 1}, {"a": 1}, {}, id="equal documents need no patch"),
        pytest.param({"dkim": {"pending": "mf-2", "active": "mf-1"}},
                     {"dkim": {"active": "mf-2"}},
                     {"dkim": {"pending": None, "active": "mf-2"}},
                     id="a field that disappeared is nulled so the server drops it"),
        pytest.param({"records": [1, 2]}, {"records": [1]}, {"records": [1]},
                     id="lists are replaced whole"),
    ],
)
def test_merge_patch_diff(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert merge_patches.diff(old, new) == patch


def test_rbac_rules_grant_exactly_the_declared_verbs_including_status() -> None:
    rules = {rule.resources: rule for rule in resources.rbac_rules()}
    assert rules[("secrets",)].verbs == ("create", "delete", "get", "list", "patch", "watch")
    assert rules[("domainauths/status",)].verbs == ("patch",)
    assert rules[("domainauths",)].api_groups == ("mailfleet.io",)


def test_the_client_refuses_a_verb_the_resource_table_does_not_declare() -> None:
    from mailfleet_operator.kube import client

    with pytest.raises(client.VerbNotDeclared):
        client._check(resources.EVENTS, "delete", None)


@pytest.mark.parametrize(
    ("entries", "servers"),
    [
        pytest.param(["192.0.2.53"], ((("192.0.2.53", 53),)), id="a bare IP uses port 53"),
        pytest.param(["127.0.0.1:5353"], ((("127.0.0.1", 5353),)), id="ip:port"),
        pytest.param(["[2001:db8::1]:53", "2001:db8::2"],
                     (("2001:db8::1", 53), ("2001:db8::2", 53)), id="IPv6 with and without port"),
    ],
)
def test_nameserver_parsing(entries: list[str], servers: tuple[tuple[str, int], ...]) -> None:
    assert verifying.Nameservers.parse(entries).servers == servers


def _at(*answers: tuple[str, domainauths.Answer]) -> authoritative_answers.AtServers:
    return authoritative_answers.AtServers(
        answers=tuple(authoritative_answers.ServerAnswer(server=s, answer=a) for s, a in answers)
    )


@pytest.mark.parametrize(
    ("at", "published", "problem", "check"),
    [
        pytest.param(_at(("ns1", A(values=(DKIM.value,), ttl=300)),
                         ("ns2", A(values=(DKIM.value,), ttl=600))), True, None,
                     rotating.DnsCheck.MATCH,
                     id="the key at every nameserver is published, with the longest TTL"),
        pytest.param(_at(("ns1", A(values=(DKIM.value,), ttl=300)), ("ns2", A(values=()))),
                     False, "not in DNS at ns2 (1 of 2 nameservers)", rotating.DnsCheck.ABSENT,
                     id="the key missing at one nameserver is not published, naming it"),
        pytest.param(_at(("ns1", A(values=(DKIM.value,))), ("ns2", A(error="Timeout"))),
                     False, "DNS lookup failed: Timeout at ns2 (1 of 2 nameservers)",
                     rotating.DnsCheck.FAILED,
                     id="a nameserver that does not answer concludes nothing"),
        pytest.param(authoritative_answers.AtServers(error="no zone found for x"), False,
                     "authoritative nameservers unknown: no zone found for x",
                     rotating.DnsCheck.FAILED,
                     id="a zone whose nameservers are unknown concludes nothing"),
    ],
)
def test_a_dkim_record_is_published_only_when_every_authoritative_nameserver_returns_it(
    at: authoritative_answers.AtServers,
    published: bool,
    problem: str | None,
    check: rotating.DnsCheck,
) -> None:
    result = authoritative_answers.check_at_servers(DKIM, at)
    assert (result.published, result.problem) == (published, problem)
    assert domainauths.dkim_checks([result]) == {"mf-1": check}
    if published:
        assert result.ttl == 600


def test_checked_at_moves_only_when_the_verdict_on_a_record_changes() -> None:
    same = domainauths.check_record(SPF, A(values=(SPF.value,)))
    first = domainauths.record_status([same], checked_at=NOW)
    later = NOW + datetime.timedelta(minutes=5)
    again = domainauths.record_status([same], checked_at=later, previous=first)
    assert again == first
    changed = domainauths.check_record(SPF, A(values=()))
    moved = domainauths.record_status([changed], checked_at=later, previous=first)
    assert moved[0].checked_at == later and not moved[0].published
