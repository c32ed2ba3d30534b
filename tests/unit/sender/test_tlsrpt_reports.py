"""TLS-RPT's pure parts and its store: counts that round-trip through the store, the outbox's
bounds and retries, the report mail's shape, and the reading of received reports (RFC 8460's
JSON shape, gzip bombs, duplicates, retention)."""

from __future__ import annotations

import email
import email.message
import email.policy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_sender import config, tlsrpt, tlsrpt_inbound, tlsrpt_store


def _counts() -> tlsrpt.PolicyCounts:
    counts = tlsrpt.PolicyCounts("sts", ("version: STSv1", "mode: enforce"), ("mx.a.test",),
                                 successes=4)
    counts.failures[tlsrpt.FailureKey("certificate-expired", "192.0.2.9", "mx.a.test",
                                      "192.0.2.1", "expired")] = 2
    return counts


def test_counts_survive_a_round_trip_through_their_stored_form() -> None:
    [back] = tlsrpt.load_policies(tlsrpt.dump_policies([_counts()]))
    assert back == _counts()


def test_only_changed_domains_are_flushed_and_a_failed_flush_is_written_again() -> None:
    aggregator = tlsrpt.Aggregator(wall=lambda: 100.0, period=60)
    aggregator.put_back(1, "a.test", [_counts()])
    aggregator.policy_error("b.test", tlsrpt.tls_policy.Result.STS_POLICY_FETCH_ERROR, "down")
    [(index, domain, _)] = aggregator.take_dirty()
    assert (index, domain) == (1, "b.test")
    assert aggregator.take_dirty() == []
    aggregator.mark_dirty([(1, "b.test", [])])
    assert [d for _, d, _ in aggregator.take_dirty()] == ["b.test"]
    assert {d for _, d, _ in aggregator.take_all()} == {"a.test", "b.test"}


@pytest.mark.parametrize(
    ("classes", "configured", "chosen"),
    [
        ([], None, "transactional"),
        ([{"name": "bulk", "priority": 50, "bulk": True},
          {"name": "alerts", "priority": 5}, {"name": "receipts", "priority": 9}],
         None, "receipts"),
        ([{"name": "only", "bulk": True}], None, "only"),
        ([], "marketing", "marketing"),
    ],
    ids=["the default classes give transactional", "the highest-priority non-bulk class",
         "a pool with only bulk classes uses one", "a configured class wins"],
)
def test_report_mail_goes_in_the_least_surprising_class(
    classes: list[dict[str, Any]], configured: str | None, chosen: str
) -> None:
    raw: dict[str, Any] = {"delivery": {"tls": {"reports": {"class": configured}}}}
    if classes:
        raw["classes"] = classes
    assert config.SenderConfig.model_validate(raw).report_class == chosen


def test_a_report_class_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match=r"reports\.class"):
        config.SenderConfig.model_validate(
            {"delivery": {"tls": {"reports": {"class": "nope"}}}})


def test_report_from_defaults_to_the_first_signing_domain() -> None:
    cfg = config.SenderConfig.model_validate({"dkim": {"domains": [
        {"domain": "example.net", "keys": [{"selector": "s", "keyFile": "/k"}]}]}})
    assert cfg.report_from == "tlsrpt-noreply@example.net"
    assert config.SenderConfig().report_from is None


def test_the_report_mail_has_the_rfc_8460_shape() -> None:
    report = tlsrpt.build_report(domain="a.test", index=20000, period=86400,
                                 policies=[_counts()], organization="o", contact="c",
                                 report_id="2024_a.test_pod-0_abc")
    body = tlsrpt.encode_report(report)
    raw = tlsrpt.build_mail(report=report, body=body, domain="a.test",
                            sender="tlsrpt-noreply@example.net", recipient="r@a.test", now=0)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    assert message["Subject"] == ("Report Domain: a.test Submitter: example.net "
                                  "Report-ID: <2024_a.test_pod-0_abc>")
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_filename() == "example.net!a.test!1728000000!1728086399!abc.json.gz"
    assert attachment.get_payload(decode=True) == body
    assert tlsrpt_inbound.is_report_mail(raw)
    assert tlsrpt_inbound.report_from_mail(raw, max_json=1 << 20).report_id == report[
        "report-id"]


@pytest.mark.parametrize(
    ("uri", "address"),
    [("mailto:tls@a.test", "tls@a.test"), ("mailto:tls%2Brpt@a.test?subject=x", "tls+rpt@a.test")],
    ids=["plain", "escaped with a query"],
)
def test_mailto_rua_address(uri: str, address: str) -> None:
    assert tlsrpt.mailto_address(uri) == address


# --------------------------------------------------------------------------- store


def test_the_outbox_keeps_a_report_until_every_rua_is_served(tmp_path: Path) -> None:
    store = tlsrpt_store.Store(tmp_path / tlsrpt_store.FILE)
    store.save_counts([(5, 60.0, "a.test", tlsrpt.dump_policies([_counts()]))])
    assert [d for _, _, d, _ in store.load_counts()] == ["a.test"]
    store.to_outbox(period=5, domain="a.test", report_id="r", report="{}", body=b"gz", now=10)
    assert store.load_counts() == []  # moved, in one transaction
    [item] = store.due(10)
    store.served(item, ("https://x",), next_try=20)
    assert store.due(19) == []
    [again] = store.due(20)
    assert again.done == ("https://x",) and again.attempts == 1
    store.remove(again)
    assert store.outbox_size() == 0


def test_the_outbox_is_bounded_and_says_how_many_it_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tlsrpt_store, "MAX_OUTBOX", 2)
    store = tlsrpt_store.Store(tmp_path / tlsrpt_store.FILE)
    dropped = [store.to_outbox(period=i, domain=f"{i}.test", report_id=str(i), report="{}",
                               body=b"", now=i) for i in range(3)]
    assert dropped == [0, 0, 1]
    assert [p.domain for p in store.due(10)] == ["1.test", "2.test"]


def _received(report_id: str, domain: str = "example.net") -> tlsrpt_store.Received:
    return tlsrpt_store.Received("Org", report_id, (domain,), 3, 1, "{}")


def test_received_reports_are_stored_once_and_kept_within_bounds(tmp_path: Path) -> None:
    store = tlsrpt_store.Store(tmp_path / tlsrpt_store.FILE)
    assert store.store_received(_received("a"), now=0, keep=100, capacity=2)
    assert not store.store_received(_received("a"), now=1, keep=100, capacity=2)
    store.store_received(_received("b"), now=2, keep=100, capacity=2)
    store.store_received(_received("c"), now=3, keep=100, capacity=2)
    assert [r.report_id for r in store.received_reports()] == ["b", "c"]
    assert store.received_summary() == {"example.net": (2, 6, 2, 3.0)}
    store.store_received(_received("d"), now=150, keep=100, capacity=2)
    assert [r.report_id for r in store.received_reports()] == ["d"]


# --------------------------------------------------------------------------- inbound


def _valid() -> dict[str, Any]:
    return tlsrpt.build_report(domain="example.net", index=20000, period=86400,
                               policies=[_counts()], organization="Other", contact="x",
                               report_id="id-1")


def test_a_report_of_the_rfc_8460_shape_is_read() -> None:
    report = tlsrpt_inbound.decode(tlsrpt.encode_report(_valid()), gzipped=True,
                                   max_json=1 << 20)
    [policy] = report.policies
    assert policy.policy.policy_domain == "example.net"
    assert policy.summary.total_failure_session_count == 2
    assert policy.failure_details is not None
    assert policy.failure_details[0].result_type == "certificate-expired"


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.pop("report-id"),
        lambda r: r.update(policies=[]),
        lambda r: r["policies"][0]["summary"].update({"total-failure-session-count": -1}),
        lambda r: r["policies"][0]["policy"].update({"policy-type": "dmarc"}),
        lambda r: r["date-range"].update({"start-datetime": "yesterday"}),
    ],
    ids=["no report-id", "no policy", "a negative count", "an unknown policy type",
         "a date that is not RFC 3339"],
)
def test_reports_of_another_shape_are_malformed(change: Any) -> None:
    report = _valid()
    change(report)
    with pytest.raises(tlsrpt_inbound.Refused) as refused:
        tlsrpt_inbound.decode(json.dumps(report).encode(), gzipped=False, max_json=1 << 20)
    assert (refused.value.reason, refused.value.status) == ("malformed", 400)


def test_a_gzip_bomb_is_stopped_at_the_limit() -> None:
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")
    assert len(bomb) < 100_000
    with pytest.raises(tlsrpt_inbound.Refused) as refused:
        tlsrpt_inbound.inflate(bomb, 1 << 20)
    assert (refused.value.reason, refused.value.status) == ("oversized", 413)


def test_truncated_gzip_is_malformed() -> None:
    with pytest.raises(tlsrpt_inbound.Refused, match="truncated"):
        tlsrpt_inbound.inflate(gzip.compress(b"{}" * 1000)[:-12], 1 << 20)


@given(st.binary(max_size=300))
def test_any_bytes_are_read_or_refused_never_an_error(data: bytes) -> None:
    for gzipped in (True, False):
        try:
            tlsrpt_inbound.decode(data, gzipped=gzipped, max_json=4096)
        except tlsrpt_inbound.Refused as refused:
            assert refused.status in (400, 413)
