"""Record builders: the exact text receivers will read, and refusals for specs that cannot work."""

from __future__ import annotations

from typing import Any

import pytest
from mailfleet_operator.api import domainauth
from mailfleet_operator.logic import domainauths, records

KEY_400 = "A" * 400


@pytest.mark.parametrize(
    ("kwargs", "name", "value"),
    [
        pytest.param(
            {"domain": "example.com", "selector": "mf-1", "key_type": "rsa",
             "public_key_b64": "QUJD"},
            "mf-1._domainkey.example.com",
            "v=DKIM1; k=rsa; p=QUJD",
            id="an RSA key is published at selector._domainkey with k=rsa",
        ),
        pytest.param(
            {"domain": "example.com", "selector": "mf-2-ed", "key_type": "ed25519",
             "public_key_b64": "ZWQ="},
            "mf-2-ed._domainkey.example.com",
            "v=DKIM1; k=ed25519; p=ZWQ=",
            id="an Ed25519 key says k=ed25519 as RFC 8463 requires",
        ),
    ],
)
def test_dkim_record(kwargs: dict[str, Any], name: str, value: str) -> None:
    record = records.build_dkim_record(**kwargs)
    assert (record.name, record.type, record.value, record.selector) == (
        name, "TXT", value, kwargs["selector"]
    )


def test_a_long_dkim_record_is_split_into_strings_of_at_most_255_bytes_that_join_back() -> None:
    record = records.build_dkim_record(
        domain="example.com", selector="mf-1", key_type="rsa", public_key_b64=KEY_400
    )
    strings = record.strings
    assert len(strings) == 2
    assert all(len(s.encode()) <= 255 for s in strings)
    assert "".join(strings) == record.value


@pytest.mark.parametrize(
    "selector",
    [
        pytest.param("mf_1", id="an underscore is not allowed in a selector"),
        pytest.param("mf.1", id="a dot would make the selector two labels"),
        pytest.param("MF 1", id="spaces and capitals are refused"),
        pytest.param("-mf", id="a selector cannot start with a hyphen"),
    ],
)
def test_illegal_selectors_are_refused_with_the_field_named(selector: str) -> None:
    with pytest.raises(records.RecordSpecError) as caught:
        records.check_selector(selector)
    assert caught.value.field == "spec.dkim.selectorPrefix"
    assert repr(selector) in str(caught.value)


@pytest.mark.parametrize(
    "domain",
    [
        pytest.param("not a domain", id="spaces are not a domain"),
        pytest.param("example", id="a single label is not a sending domain"),
        pytest.param("example.com.", id="a trailing dot is refused"),
        pytest.param("exa_mple.com", id="an underscore in a host name is refused"),
        pytest.param("a" * 64 + ".com", id="a label longer than 63 characters is refused"),
    ],
)
def test_domains_that_are_not_domains_are_refused(domain: str) -> None:
    with pytest.raises(records.RecordSpecError, match="not a domain name"):
        records.check_domain(domain)


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        pytest.param(
            {"pool_ips": ["203.0.113.20", "203.0.113.10"]},
            "v=spf1 ip4:203.0.113.10 ip4:203.0.113.20 ~all",
            id="pool IPs are sorted so the record only changes when the set changes",
        ),
        pytest.param(
            {"pool_ips": ["2001:db8::1", "203.0.113.10"], "extra_ips": ["198.51.100.0/24"],
             "include": ["_spf.google.com"], "all_qualifier": "-all"},
            "v=spf1 ip4:198.51.100.0/24 ip4:203.0.113.10 ip6:2001:db8::1 "
            "include:_spf.google.com -all",
            id="IPv4 then IPv6 then includes then the all term",
        ),
        pytest.param(
            {"pool_ips": ["203.0.113.10"], "extra_ips": ["203.0.113.10"]},
            "v=spf1 ip4:203.0.113.10 ~all",
            id="an IP listed by a pool and in extraIPs appears once",
        ),
        pytest.param(
            {"pool_ips": [], "include": ["amazonses.com", "amazonses.com"]},
            "v=spf1 include:amazonses.com ~all",
            id="a repeated include is listed once, a relay-only domain has no IPs",
        ),
    ],
)
def test_spf_record(kwargs: dict[str, Any], value: str) -> None:
    record = records.build_spf_record(domain="example.com", **kwargs)
    assert (record.name, record.type, record.value) == ("example.com", "TXT", value)


def test_an_spf_extra_ip_that_is_not_an_ip_is_refused() -> None:
    with pytest.raises(records.RecordSpecError, match="extraIPs"):
        records.build_spf_record(domain="example.com", pool_ips=[], extra_ips=["mail.example"])


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        pytest.param(
            {},
            "v=DMARC1; p=none",
            id="the defaults give a monitoring-only policy with no optional tags",
        ),
        pytest.param(
            {"policy": "reject", "subdomain_policy": "quarantine", "pct": 50,
             "rua": ["mailto:a@example.com", "mailto:b@example.net!10m"],
             "ruf": ["mailto:f@example.com"], "adkim": "s", "aspf": "s"},
            "v=DMARC1; p=reject; sp=quarantine; pct=50; "
            "rua=mailto:a@example.com,mailto:b@example.net!10m; ruf=mailto:f@example.com; "
            "adkim=s; aspf=s",
            id="every tag in RFC 7489 order with report URIs comma-separated",
        ),
    ],
)
def test_dmarc_record(kwargs: dict[str, Any], value: str) -> None:
    record = records.build_dmarc_record(domain="example.com", **kwargs)
    assert (record.name, record.value) == ("_dmarc.example.com", value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"rua": ["https://example.com/report"]}, "spec.dmarc.rua[0]",
                     id="a rua that is not a mailto URI is refused"),
        pytest.param({"ruf": ["reports@example.com"]}, "spec.dmarc.ruf[0]",
                     id="a bare address without mailto is refused"),
        pytest.param({"policy": "block"}, "spec.dmarc.policy", id="an unknown policy is refused"),
        pytest.param({"pct": 101}, "spec.dmarc.pct", id="pct above 100 is refused"),
        pytest.param({"adkim": "x"}, "spec.dmarc.adkim", id="alignment must be r or s"),
    ],
)
def test_bad_dmarc_tags_are_refused_with_the_field_named(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(records.RecordSpecError) as caught:
        records.build_dmarc_record(domain="example.com", **kwargs)
    assert caught.value.field == field


def test_bimi_record_under_an_enforcing_dmarc_policy() -> None:
    record = records.build_bimi_record(
        domain="example.com",
        logo_url="https://example.com/logo.svg",
        authority_url="https://example.com/vmc.pem",
        dmarc_policy="quarantine",
    )
    assert record.name == "default._bimi.example.com"
    assert record.value == "v=BIMI1; l=https://example.com/logo.svg; a=https://example.com/vmc.pem"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"logo_url": "http://example.com/logo.svg", "dmarc_policy": "reject"},
                     "logoURL", id="a logo URL that is not https is refused"),
        pytest.param({"logo_url": "https://example.com/l.svg", "dmarc_policy": "none"},
                     "quarantine or reject", id="BIMI under p=none is refused as the spec says"),
        pytest.param({"logo_url": "https://example.com/l.svg", "dmarc_policy": "reject",
                      "dmarc_pct": 50}, "pct=100", id="BIMI under a partial DMARC pct is refused"),
        pytest.param({"logo_url": "https://example.com/l.svg", "dmarc_policy": "reject",
                      "dmarc_subdomain_policy": "none"}, "subdomainPolicy",
                     id="BIMI with subdomains left at sp=none is refused"),
    ],
)
def test_bimi_refusals(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(records.RecordSpecError, match=match):
        records.build_bimi_record(domain="example.com", **kwargs)


@pytest.mark.parametrize(
    ("host", "name"),
    [
        pytest.param("bounces", "bounces.example.com",
                     id="a single label is taken below the domain"),
        pytest.param("rp.example.com", "rp.example.com",
                     id="a full name inside the domain is kept"),
    ],
)
def test_return_path_cname(host: str, name: str) -> None:
    record = records.build_return_path_record(
        domain="example.com", host=host, target="bounce.mailfleet.example.net."
    )
    assert (record.name, record.type, record.value) == (
        name, "CNAME", "bounce.mailfleet.example.net"
    )


def test_a_return_path_outside_the_domain_is_refused_because_dmarc_could_not_align() -> None:
    with pytest.raises(records.RecordSpecError, match="not inside"):
        records.build_return_path_record(domain="example.com", host="b.other.org", target="t.net")


@pytest.mark.parametrize(
    ("published", "expected", "same"),
    [
        pytest.param("v=DKIM1; k=rsa; p=QUJD", "v=DKIM1; k=rsa; p=QUJD", True, id="identical"),
        pytest.param("v=DKIM1;k=rsa;p=QU JD", "v=DKIM1; k=rsa; p=QUJD", True,
                     id="whitespace between strings does not matter"),
        pytest.param("v=DKIM1; k=rsa; p=QUJE", "v=DKIM1; k=rsa; p=QUJD", False,
                     id="another key is not the same key"),
        pytest.param("v=DKIM1; k=ed25519; p=QUJD", "v=DKIM1; k=rsa; p=QUJD", False,
                     id="the same bytes under another key type are not the same key"),
        pytest.param("v=DKIM1; p=QUJD", "v=DKIM1; k=rsa; p=QUJD", True,
                     id="k defaults to rsa"),
    ],
)
def test_same_dkim_key(published: str, expected: str, same: bool) -> None:
    assert records.same_dkim_key(published, expected) is same


@pytest.mark.parametrize(
    ("value", "spf"),
    [
        pytest.param("v=spf1 -all", True, id="v=spf1 followed by a term"),
        pytest.param("V=SPF1", True, id="case does not matter and a bare version counts"),
        pytest.param("v=spf10 -all", False, id="v=spf10 is not SPF"),
        pytest.param("google-site-verification=x", False, id="other TXT records are ignored"),
    ],
)
def test_is_spf(value: str, spf: bool) -> None:
    assert records.is_spf(value) is spf


def test_tlsrpt_record_names_where_tls_reports_go() -> None:
    record = records.build_tlsrpt_record(
        domain="example.com",
        rua=["mailto:tls-reports@example.com", "https://reports.example.com/v1/tlsrpt"],
    )
    assert (record.family, record.name, record.type) == (
        "tlsrpt", "_smtp._tls.example.com", "TXT")
    assert record.value == (
        "v=TLSRPTv1; rua=mailto:tls-reports@example.com,https://reports.example.com/v1/tlsrpt"
    )
    assert records.is_tlsrpt(record.value)
    assert records.same_tags("v=TLSRPTv1;rua=mailto:tls-reports@example.com,"
                             "https://reports.example.com/v1/tlsrpt", record.value)


@pytest.mark.parametrize(
    "rua",
    [[], ["ftp://reports.example.com"], ["mailto:a@example.com,mailto:b@example.com"]],
    ids=["no destination", "a scheme TLS-RPT does not know", "a comma inside one URI"],
)
def test_tlsrpt_record_refuses_unusable_destinations(rua: list[str]) -> None:
    with pytest.raises(records.RecordSpecError, match=r"spec\.tlsrpt\.rua"):
        records.build_tlsrpt_record(domain="example.com", rua=rua)


def test_a_domainauth_with_tlsrpt_publishes_its_smtp_tls_record() -> None:
    spec = domainauth.DomainAuthSpec.model_validate(
        {"domain": "example.com", "tlsrpt": {"rua": ["mailto:tls@example.com"]}})
    desired = domainauths.desired_records(spec=spec, published_keys=[], pool_ips=[])
    [tls] = [r for r in desired.records if r.family == "tlsrpt"]
    assert (tls.name, tls.value) == (
        "_smtp._tls.example.com", "v=TLSRPTv1; rua=mailto:tls@example.com")
    assert "tlsrpt" not in desired.errors
    with pytest.raises(ValueError, match="rua"):
        domainauth.DomainAuthSpec.model_validate(
            {"domain": "example.com", "tlsrpt": {"rua": ["ftp://x.example.com"]}})
