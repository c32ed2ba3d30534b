"""Forged and replayed feedback: the replay ledger, the per-source limiter, what a VERP-only
report may say about its source IP, the caps on a report's parts, and a pod's deliverability
layer counting a replayed report once."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailfleet_sandbox import reports as sandbox_reports
from mailfleet_sender import (
    clock,
    config,
    deliverability,
    feedback,
    link_keys,
    metrics,
    report_limits,
    reported_copies,
    reports,
    spool,
)

KEY = b"k" * 32
MARKS = feedback.Marks(trace_keys=(KEY,))
ORIGINAL = (b"From: news@example.test\r\nTo: jane@gmail.test\r\nSubject: hi\r\n"
            b"Message-ID: <m1@example.test>\r\n\r\nbody\r\n")
DAY = 86400.0


def _traced(key: bytes = KEY, recipient: str = "jane@gmail.test") -> bytes:
    trace = reports.encode_trace(
        reports.Trace("pod_0.7", recipient, "marketing", "192.0.2.10"), key
    )
    return f"{reports.TRACE_HEADER}: {trace}\r\n".encode() + ORIGINAL


# --- the ledger ---------------------------------------------------------------------------


def test_an_identity_counts_once_within_the_window_and_again_after_it(tmp_path: Path) -> None:
    ledger = reported_copies.ReportedCopies(tmp_path / "r.sqlite3", window=30 * DAY,
                                            capacity=10)
    key = reported_copies.identity("complaint", "pod_0.7", "Jane@gmail.test")
    assert key == reported_copies.identity("complaint", "pod_0.7", "jane@GMAIL.test")
    assert key != reported_copies.identity("bounce", "pod_0.7", "jane@gmail.test")
    assert ledger.claim(key, 1000.0) is True
    assert ledger.claim(key, 1000.0 + 29 * DAY) is False
    assert ledger.claim(key, 500.0) is False  # a clock stepped back does not reopen it
    assert ledger.claim(key, 1000.0 + 30 * DAY) is True
    assert len(ledger) == 1
    ledger.release(key)  # acting on it failed: the next report counts
    assert len(ledger) == 0 and ledger.claim(key, 1000.0 + 30 * DAY) is True
    ledger.close()


def test_the_ledger_survives_a_restart_and_holds_no_address(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    ledger = reported_copies.ReportedCopies(path, window=DAY, capacity=10)
    assert ledger.claim(reported_copies.identity("bounce", "pod_0.7", "jane@gmail.test"), 1.0)
    ledger.close()
    again = reported_copies.ReportedCopies(path, window=DAY, capacity=10)
    assert len(again) == 1
    assert not again.claim(reported_copies.identity("bounce", "pod_0.7", "jane@gmail.test"), 2.0)
    again.close()
    assert b"jane" not in path.read_bytes()


def test_a_full_ledger_refuses_to_count_rather_than_forget(tmp_path: Path) -> None:
    ledger = reported_copies.ReportedCopies(tmp_path / "r.sqlite3", window=DAY, capacity=3)
    keys = [reported_copies.identity("complaint", f"pod_0.{i}", "a@b.test") for i in range(4)]
    for key in keys[:3]:
        assert ledger.claim(key, 10.0)
    with pytest.raises(reported_copies.LedgerFull):
        ledger.claim(keys[3], 20.0)
    assert ledger.claim(keys[0], 20.0) is False  # the remembered ones stay remembered
    assert ledger.claim(keys[3], 10.0 + DAY)  # once the oldest expired, there is room
    assert len(ledger) == 1
    ledger.close()


# --- the per-source limiter ---------------------------------------------------------------


def test_a_source_gets_its_burst_then_its_rate() -> None:
    limiter = report_limits.SourceLimiter(rate=1.0, burst=3, max_sources=10)
    assert [limiter.allow("192.0.2.1", 0.0) for _ in range(4)] == [True] * 3 + [False]
    assert limiter.allow("192.0.2.2", 0.0)  # another source has its own bucket
    assert limiter.allow("192.0.2.1", 1.0) and not limiter.allow("192.0.2.1", 1.0)


def test_the_source_table_is_bounded_and_rotating_addresses_buys_no_allowance() -> None:
    limiter = report_limits.SourceLimiter(rate=1.0, burst=2, max_sources=100)
    allowed = collections.Counter(
        limiter.allow(f"10.0.{i // 256}.{i % 256}", 0.0) for i in range(1000)
    )
    assert len(limiter) == 100
    # 100 tracked sources got their burst of 2 each... one call each, and the 900 others
    # shared one overflow bucket of 2.
    assert allowed[True] == 100 + 2
    # Idle sources are forgotten once their bucket refilled: new ones get their own again.
    assert limiter.allow("192.0.2.9", 10.0) and limiter.allow("192.0.2.9", 10.0)
    assert len(limiter) == 100


def test_the_report_limits_are_camel_case_strict_and_defaulted() -> None:
    cfg = config.parse_config(
        "deliverability: {reports: {replayWindow: 7d, perSourceRate: 10/m, maxParts: 16}}\n"
    )
    limits = cfg.deliverability.reports
    assert (limits.replay_window, limits.per_source_rate, limits.max_parts) == ("7d", "10/m", 16)
    assert limits.max_remembered == 1_000_000 and limits.per_source_burst == 100
    with pytest.raises(config.ConfigError, match="replayWindw"):
        config.parse_config("deliverability: {reports: {replayWindw: 7d}}\n")


# --- what a report may say ---------------------------------------------------------------


def test_a_verp_only_complaint_does_not_carry_the_reports_source_ip() -> None:
    verp = reports.encode_verp_return_path("bounces.test", "pod_0.7", "jane@gmail.test", key=KEY)
    arf = sandbox_reports.build_arf(ORIGINAL, source_ip="10.66.6.6", mail_from=verp,
                                    rcpt_to="jane@gmail.test")
    [event] = feedback.read_report(arf, ["fbl@bounces.test"], MARKS).events
    assert (event.recipient, event.message_ref) == ("jane@gmail.test", "pod_0.7")
    assert (event.source_ip, event.class_name) == ("", "")
    traced = sandbox_reports.build_arf(_traced(), source_ip="10.66.6.6", mail_from=verp,
                                       rcpt_to="redacted@gmail.test")
    [sealed] = feedback.read_report(traced, [], MARKS).events
    assert sealed.source_ip == "192.0.2.10"  # the sealed trace's, not the report's


@pytest.mark.parametrize(("parts", "limit"), [(10, 8), (600, 32)])
def test_a_report_with_more_parts_than_the_cap_is_refused(parts: int, limit: int) -> None:
    body = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(parts))
    raw = ("Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           + body + "--b--\r\n").encode()
    with pytest.raises(reports.ReportError, match="too_many_parts"):
        reports.parse_dsn(raw, max_parts=limit)
    dsn = sandbox_reports.build_dsn(_traced(), "jane@gmail.test")
    assert reports.parse_dsn(dsn, max_parts=8).failed  # a real DSN is far below the cap
    with pytest.raises(reports.ReportError, match="oversized"):
        reports.parse_dsn(dsn, max_bytes=len(dsn) - 1)


# --- a pod's deliverability layer ---------------------------------------------------------


@pytest.fixture
def layer(tmp_path: Path) -> Iterator[deliverability.Deliverability]:
    cfg = config.parse_config(f"spoolDir: {tmp_path}\n")
    store = spool.Spool.open(tmp_path)
    store.start()
    made = deliverability.Deliverability(
        cfg=cfg, keys=link_keys.PoolKeys([link_keys.LinkKey("key-0", 0, KEY)]),
        node_id="pod-0", spool_=store, clock_=clock.Clock(), metric_set=metrics.Metrics(),
        suppression_path=tmp_path / "s.sqlite3",
    )
    yield made
    made.close()
    store.close()


def test_a_replayed_complaint_and_bounce_count_once(
    layer: deliverability.Deliverability,
) -> None:
    counted: list[tuple[str, str]] = []
    layer.count_feedback = lambda ip, kind: counted.append((ip, kind))
    arf = sandbox_reports.build_arf(_traced(), source_ip="192.0.2.10",
                                    mail_from="news@example.test", rcpt_to="x@gmail.test")
    dsn = sandbox_reports.build_dsn(_traced(), "jane@gmail.test")
    for _ in range(25):
        layer.apply_report(arf, [])
        layer.apply_report(dsn, [])
    assert counted == [("192.0.2.10", "complained"), ("192.0.2.10", "bounced")]
    rates = layer.rates_snapshot()["byIp"]["192.0.2.10"]["1h"]
    assert (rates["complaint"], rates["hardBounce"]) == (1, 1)


def test_a_verp_dsn_listing_its_recipient_many_times_counts_one_soft_bounce(
    layer: deliverability.Deliverability,
) -> None:
    verp = reports.encode_verp_return_path("bounces.test", "pod_0.7", "jane@gmail.test", key=KEY)
    dsn = sandbox_reports.build_dsn(ORIGINAL, "jane@gmail.test", status="5.2.2",
                                    diagnostic="smtp; 552 5.2.2 mailbox full")
    head, sep, tail = dsn.partition(b"Final-Recipient:")
    block = sep + tail.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    repeated = head + block * 5 + sep + tail
    assert len(feedback.read_report(repeated, [verp], MARKS).events) == 6
    for _ in range(5):
        layer.apply_report(repeated, [verp])
    assert layer.soft_counts == {"jane@gmail.test": 1}  # not escalated to a hard bounce
    assert not layer.suppressions.is_suppressed("jane@gmail.test")


def test_a_report_whose_action_failed_counts_when_it_comes_again(
    layer: deliverability.Deliverability,
) -> None:
    def broken(ip: str, kind: str) -> None:
        raise OSError("disk full")

    layer.count_feedback = broken
    arf = sandbox_reports.build_arf(_traced(), source_ip="192.0.2.10",
                                    mail_from="news@example.test", rcpt_to="x@gmail.test")
    with pytest.raises(OSError):
        layer.apply_report(arf, [])
    counted: list[tuple[str, str]] = []
    layer.count_feedback = lambda ip, kind: counted.append((ip, kind))
    layer.apply_report(arf, [])
    assert counted == [("192.0.2.10", "complained")]
