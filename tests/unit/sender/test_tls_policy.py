"""Transport security decisions, MTA-STS parsing, DANE matching and TLS-RPT reports: the pure
parts, table-driven."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sender import config, dane, delivering, tls_policy, tlsrpt

Mode, Result = tls_policy.Mode, tls_policy.Result
NOW = datetime.datetime.now(datetime.UTC)

POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mail.example.test\r\n"
    "max_age: 604800\r\n"
)


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["v=STSv1; id=20240101T000000;"], "20240101T000000"),
        (["v=spf1 -all", "v=STSv1;id=abc"], "abc"),
        (["v=spf1 -all"], None),
        ([], None),
    ],
    ids=["a record with an id", "the STS record among others", "no STS record", "no TXT"],
)
def test_sts_record_id(texts: list[str], expected: str | None) -> None:
    assert tls_policy.parse_sts_record(texts) == expected


@pytest.mark.parametrize(
    "texts",
    [["v=STSv1; id=a", "v=STSv1; id=b"], ["v=STSv1; id=has-dash"], ["v=STSv1;"]],
    ids=["two STS records are invalid", "an id with a dash is invalid", "a missing id"],
)
def test_bad_sts_records_are_refused(texts: list[str]) -> None:
    with pytest.raises(tls_policy.PolicyError):
        tls_policy.parse_sts_record(texts)


def test_policy_body_is_parsed_with_its_patterns_and_age() -> None:
    policy = tls_policy.parse_sts_policy(POLICY + "future_key: ignored\r\n")
    assert policy.mode == "enforce"
    assert policy.mx == ("mx1.example.test", "*.mail.example.test")
    assert policy.max_age == 604800


@pytest.mark.parametrize(
    "text",
    [
        "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
        "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n",
        "version: STSv1\nmode enforce\n",
    ],
    ids=["wrong version", "unknown mode", "enforce without mx", "negative max_age",
         "a line without a colon"],
)
def test_invalid_policy_bodies_are_refused(text: str) -> None:
    with pytest.raises(tls_policy.PolicyError):
        tls_policy.parse_sts_policy(text)


def test_max_age_is_capped_at_a_year() -> None:
    policy = tls_policy.parse_sts_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n")
    assert policy.max_age == tls_policy.MAX_STS_AGE


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mx1.example.test", "MX1.example.test.", True),
        ("*.example.test", "mx1.example.test", True),
        ("*.example.test", "a.b.example.test", False),
        ("*.example.test", "example.test", False),
        ("mx1.example.test", "mx2.example.test", False),
    ],
    ids=["exact match ignores case and final dot", "a wildcard matches one label",
         "a wildcard never matches two labels", "a wildcard never matches the bare domain",
         "another host does not match"],
)
def test_mx_pattern_matching(pattern: str, host: str, matches: bool) -> None:
    assert tls_policy.mx_matches(pattern, host) is matches


# --------------------------------------------------------------------------- decisions

TLSA_EE = dane.TLSA(3, 1, 1, b"\x01" * 32)
ENFORCE = tls_policy.parse_sts_policy(POLICY)
TESTING = tls_policy.parse_sts_policy(POLICY.replace("enforce", "testing"))
SECURE = tls_policy.TlsaAnswer(status="secure", records=(TLSA_EE,))


def _decide(settings: tls_policy.Settings = tls_policy.Settings(), *,
            dane_answer: tls_policy.DaneAnswer | None = None,
            sts: tls_policy.StsPolicy | None = None,
            host: str = "mx1.example.test") -> tls_policy.HostSecurity:
    decided = tls_policy.decide(
        domain="example.test", mx_hosts=[host], settings=settings, dane_answer=dane_answer,
        sts_answer=tls_policy.StsAnswer(sts) if sts else None,
    )
    return decided.host(host)


def test_no_policy_means_opportunistic_tls_with_a_clear_retry() -> None:
    host = _decide()
    assert (host.mode, host.starttls, host.fallback, host.verify) == (
        Mode.OPPORTUNISTIC, True, True, "none")


def test_require_tls_removes_the_clear_retry() -> None:
    host = _decide(tls_policy.Settings(require_tls=True))
    assert (host.mode, host.fallback) == (Mode.REQUIRE_TLS, False)


def test_opportunistic_off_sends_in_clear() -> None:
    host = _decide(tls_policy.Settings(opportunistic=False))
    assert (host.mode, host.starttls) == (Mode.NONE, False)


def test_sts_enforce_verifies_listed_hosts_without_fallback() -> None:
    host = _decide(sts=ENFORCE)
    assert (host.mode, host.verify, host.fallback, host.enforced, host.refused) == (
        Mode.MTA_STS, "webpki", False, True, None)


def test_sts_enforce_refuses_an_mx_the_policy_does_not_list() -> None:
    host = _decide(sts=ENFORCE, host="rogue.example.test")
    assert host.refused == Result.VALIDATION_FAILURE


def test_sts_wildcard_pattern_covers_one_label() -> None:
    assert _decide(sts=ENFORCE, host="a.mail.example.test").refused is None
    assert _decide(sts=ENFORCE, host="a.b.mail.example.test").refused is not None


def test_sts_testing_checks_but_never_blocks() -> None:
    host = _decide(sts=TESTING, host="rogue.example.test")
    assert (host.verify, host.enforced, host.fallback, host.refused) == (
        "webpki", False, True, None)


def test_mta_sts_switched_off_ignores_the_policy() -> None:
    assert _decide(tls_policy.Settings(mta_sts=False), sts=ENFORCE).mode == Mode.OPPORTUNISTIC


def test_dane_wins_over_mta_sts() -> None:
    answer = tls_policy.DaneAnswer(True, {"mx1.example.test": SECURE})
    host = _decide(dane_answer=answer, sts=ENFORCE)
    assert (host.mode, host.verify, host.tlsa, host.fallback) == (
        Mode.DANE, "dane", (TLSA_EE,), False)


def test_tlsa_under_an_insecure_mx_is_ignored() -> None:
    answer = tls_policy.DaneAnswer(False, {"mx1.example.test": SECURE})
    assert _decide(dane_answer=answer).mode == Mode.OPPORTUNISTIC


def test_bogus_tlsa_makes_the_host_unusable() -> None:
    bogus = tls_policy.DaneAnswer(True, {"mx1.example.test": tls_policy.TlsaAnswer("bogus")})
    assert _decide(dane_answer=bogus).refused == Result.DNSSEC_INVALID


def test_only_unusable_tlsa_records_still_require_tls() -> None:
    pkix = tls_policy.TlsaAnswer("secure", (dane.TLSA(1, 0, 1, b"x"),))
    host = _decide(dane_answer=tls_policy.DaneAnswer(True, {"mx1.example.test": pkix}))
    assert (host.mode, host.verify, host.fallback) == (Mode.DANE, "none", False)


def test_dane_switched_off_ignores_tlsa() -> None:
    answer = tls_policy.DaneAnswer(True, {"mx1.example.test": SECURE})
    assert _decide(tls_policy.Settings(dane=False), dane_answer=answer).mode == (
        Mode.OPPORTUNISTIC)


def test_provider_settings_override_the_pool_and_dane_needs_a_resolver() -> None:
    tls = config.DeliveryTLS.model_validate({
        "requireTLS": True, "providers": [{"name": "gmail", "requireTLS": False,
                                           "minVersion": "TLSv1.3", "mtaSts": False}]})
    gmail = tls.settings_for("gmail", opportunistic=True)
    other = tls.settings_for("other", opportunistic=True)
    assert (gmail.require_tls, gmail.min_version, gmail.mta_sts, gmail.dane) == (
        False, "TLSv1.3", False, False)
    assert (other.require_tls, other.min_version, other.mta_sts) == (True, "TLSv1.2", True)
    with_resolver = config.DeliveryTLS.model_validate({"daneResolver": {"address": "127.0.0.1"}})
    assert with_resolver.settings_for("x", opportunistic=True).dane is True


# --------------------------------------------------------------------------- DANE matching

CA = SandboxCA()
GOOD = CA.issue(["mx1.example.test"])
CHAIN = [GOOD.der, CA.der]


def _spki(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(
    ("record", "ok"),
    [
        (dane.TLSA(3, 0, 0, GOOD.der), True),
        (dane.TLSA(3, 1, 1, hashlib.sha256(_spki(GOOD.der)).digest()), True),
        (dane.TLSA(3, 0, 2, hashlib.sha512(GOOD.der).digest()), True),
        (dane.TLSA(3, 1, 1, b"\x00" * 32), False),
        (dane.TLSA(2, 0, 1, hashlib.sha256(CA.der).digest()), True),
        (dane.TLSA(2, 1, 2, hashlib.sha512(_spki(CA.der)).digest()), True),
        (dane.TLSA(2, 0, 1, hashlib.sha256(b"another anchor").digest()), False),
        (dane.TLSA(1, 0, 0, GOOD.der), False),
    ],
    ids=["DANE-EE full certificate", "DANE-EE SPKI SHA-256", "DANE-EE certificate SHA-512",
         "DANE-EE digest mismatch", "DANE-TA certificate SHA-256 of the CA in the chain",
         "DANE-TA SPKI SHA-512", "DANE-TA of an anchor not in the chain",
         "PKIX-EE is unusable for SMTP"],
)
def test_tlsa_records_against_a_real_chain(record: dane.TLSA, ok: bool) -> None:
    assert dane.match_chain([record], CHAIN, names=["mx1.example.test"], now=NOW).ok is ok


def test_dane_ta_checks_the_name_and_dates_but_dane_ee_does_not() -> None:
    ta = dane.TLSA(2, 0, 1, hashlib.sha256(CA.der).digest())
    wrong = dane.match_chain([ta], CHAIN, names=["mx2.example.test"], now=NOW)
    assert (wrong.ok, wrong.name_mismatch) == (False, True)
    expired = CA.issue(["mx1.example.test"], expired=True)
    late = dane.match_chain([ta], [expired.der, CA.der], names=["mx1.example.test"], now=NOW)
    assert (late.ok, late.expired) == (False, True)
    ee = dane.TLSA(3, 0, 1, hashlib.sha256(expired.der).digest())
    assert dane.match_chain([ee], [expired.der], names=["other.test"], now=NOW).ok


def test_dane_ta_refuses_a_chain_the_anchor_did_not_sign() -> None:
    stranger = SandboxCA("another CA").issue(["mx1.example.test"])
    ta = dane.TLSA(2, 0, 1, hashlib.sha256(CA.der).digest())
    assert not dane.match_chain([ta], [stranger.der, CA.der], names=["mx1.example.test"],
                                now=NOW).ok


# --------------------------------------------------------------------------- TLS-RPT


def test_report_counts_successes_and_failures_per_policy_domain() -> None:
    clock = [86400.0 * 20_000 + 5]
    aggregator = tlsrpt.Aggregator(wall=lambda: clock[0])
    policy = tls_policy.decide(
        domain="example.test", mx_hosts=["mx1.example.test"], settings=tls_policy.Settings(),
        dane_answer=None, sts_answer=tls_policy.StsAnswer(ENFORCE),
    )
    ok = delivering.TlsEvent("mx1.example.test", "127.0.0.9", Mode.MTA_STS, Result.SUCCESS,
                             tls=True)
    bad = delivering.TlsEvent("mx1.example.test", "127.0.0.9", Mode.MTA_STS,
                              Result.CERTIFICATE_EXPIRED, tls=False, refused=True,
                              detail="certificate has expired")
    for event in (ok, ok, bad):
        aggregator.session(domain="example.test", policy=policy, event=event,
                           source_ip="127.0.0.21")
    assert aggregator.take_finished() == []  # the day is not over
    clock[0] += 86400
    [(index, domain, policies)] = aggregator.take_finished()
    report = tlsrpt.build_report(domain=domain, index=index, period=86400, policies=policies,
                                 organization="mailfleet", contact="tls@example.net")
    decoded = json.loads(gzip.decompress(tlsrpt.encode_report(report)))
    [entry] = decoded["policies"]
    assert entry["policy"]["policy-type"] == "sts"
    assert entry["policy"]["mx-host"] == ["mx1.example.test", "*.mail.example.test"]
    assert "mode: enforce" in entry["policy"]["policy-string"]
    assert entry["summary"] == {"total-successful-session-count": 2,
                                "total-failure-session-count": 1}
    [failure] = entry["failure-details"]
    assert failure["result-type"] == "certificate-expired"
    assert failure["sending-mta-ip"] == "127.0.0.21"
    assert failure["receiving-ip"] == "127.0.0.9"
    assert decoded["date-range"]["start-datetime"].endswith("T00:00:00Z")


@pytest.mark.parametrize(
    ("texts", "rua"),
    [
        (["v=TLSRPTv1; rua=mailto:tls@example.test,https://r.example.test/v1"],
         ["mailto:tls@example.test", "https://r.example.test/v1"]),
        (["v=TLSRPTv1; rua=ftp://nope"], []),
        (["v=TLSRPTv1; rua=mailto:a@b", "v=TLSRPTv1; rua=mailto:c@d"], []),
        (["v=spf1 -all"], []),
    ],
    ids=["mailto and https destinations", "other schemes are ignored",
         "two records mean none", "no record"],
)
def test_rua_of_the_smtp_tls_record(texts: list[str], rua: list[str]) -> None:
    assert tlsrpt.parse_rua(texts) == rua
