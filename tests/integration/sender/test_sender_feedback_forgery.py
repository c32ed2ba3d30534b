"""One sender against the sandbox, attacked on its feedback port the way anyone who received one
message can: replaying that message's complaint and bounce reports, writing any `Source-IP`
into a report, flooding from one address, and mailing a 10 MB report while probes run."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from mailfleet_sandbox import reports as sandbox_reports
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    RunningSender,
    SenderFactory,
    base_config,
    lease,
    make_dkim_keys,
)

SOURCE = "127.0.0.51"
GENEROUS = {"perSourceRate": "10000/s", "perSourceBurst": 10000}


def _config(
    tmp: Path, dns: DNSServer, fleet: ProviderFleet, **reports: Any
) -> dict[str, Any]:
    keys = make_dkim_keys(tmp / "keys", "example.test", dns)
    cfg = base_config(tmp, dns=dns, destination_port=fleet.port, keys=keys)
    cfg["deliverability"] = {**cfg["deliverability"], "feedbackPort": 0,
                             "bounceDomain": "bounces.example.test",
                             "reports": reports or GENEROUS}
    return cfg


async def _started(factory: SenderFactory, cfg: dict[str, Any]) -> RunningSender:
    sender = await factory(cfg)
    await sender.client.assign([lease(SOURCE)])
    return sender


async def _delivered_copy(sender: RunningSender, fleet: ProviderFleet, to: str) -> Any:
    status, body = await sender.client.submit(
        {"from": "Shop <news@example.test>", "to": [to], "subject": "hello", "text": "body\n",
         "class": "marketing"})
    assert status == 202, body
    gmail = fleet["gmail"]
    await gmail.wait_until(lambda: any(to in m.rcpt_to for m in gmail.messages),
                           what=f"the copy to {to}")
    [copy] = [m for m in gmail.messages if to in m.rcpt_to]
    return copy


async def _mail_reports(
    port: int, reports: list[bytes], *, source: str = "127.0.0.1",
    rcpt: str = "fbl@bounces.example.test",
) -> list[tuple[int, str]]:
    """Send each report in its own transaction, ten to a session (the port caps commands per
    session); the (code, text) answers."""
    answers: list[tuple[int, str]] = []
    for start in range(0, len(reports), 10):
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port,
                                   source_address=(source, 0)) as client:
            for report in reports[start:start + 10]:
                try:
                    await client.sendmail("", [rcpt], report)
                    answers.append((250, "applied or noted"))
                except aiosmtplib.SMTPResponseException as error:
                    answers.append((error.code, error.message))
                    await client.rset()
    return answers


async def _counts(sender: RunningSender) -> tuple[dict[str, Any], dict[str, Any]]:
    stats = await sender.client.stats()
    rates = stats["rates"]["byIp"][SOURCE]["1h"]
    [today] = [ip for ip in stats["ips"] if ip["address"] == SOURCE]
    return rates, today


async def test_replayed_complaint_and_bounce_reports_count_once_even_after_a_restart(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet)
    sender = await _started(sender_factory, cfg)
    copy = await _delivered_copy(sender, provider_fleet, "angry@gmail.test")
    arf = sandbox_reports.build_arf(copy.data, source_ip=SOURCE, mail_from=copy.mail_from,
                                    rcpt_to="angry@gmail.test")
    dsn = sandbox_reports.build_dsn(copy.data, "angry@gmail.test")

    answers = await _mail_reports(sender.service.feedback_port, [arf] * 25 + [dsn] * 25)
    assert {code for code, _ in answers} == {250}
    rates, today = await _counts(sender)
    assert (rates["complaint"], rates["delivered"], rates["complaintRate"]) == (1, 1, 1.0)
    assert rates["hardBounce"] == 1
    assert (today["complainedToday"], today["bouncedToday"]) == (1, 1)
    _, metrics = await sender.client.request("GET", "/metrics")
    assert re.search(r'mailfleet_sender_complaints_total\{[^}]*\} 1\.0', metrics)
    assert 'feedback_reports_total{report="arf",result="applied"} 1.0' in metrics
    assert 'feedback_reports_total{report="arf",result="duplicate"} 24.0' in metrics
    assert 'feedback_reports_total{report="dsn",result="duplicate"} 24.0' in metrics

    # The same copy's bounce, matched by its VERP return path only, is the same bounce.
    untraced = re.sub(rb"(?im)^X-Mailfleet-Trace:.*\r\n(?:[ \t].*\r\n)*", b"", copy.data)
    verp_dsn = sandbox_reports.build_dsn(untraced, "angry@gmail.test")
    answers = await _mail_reports(sender.service.feedback_port, [verp_dsn], rcpt=copy.mail_from)
    assert answers == [(250, "applied or noted")]
    _, metrics = await sender.client.request("GET", "/metrics")
    assert 'feedback_reports_total{report="dsn",result="duplicate"} 25.0' in metrics

    # A restart does not reopen the door: the ledger is on the spool volume.
    await sender.stop()
    sender = await _started(sender_factory, cfg)
    answers = await _mail_reports(sender.service.feedback_port, [arf, dsn])
    assert {code for code, _ in answers} == {250}
    [today] = [ip for ip in (await sender.client.stats())["ips"] if ip["address"] == SOURCE]
    assert (today["complainedToday"], today["bouncedToday"]) == (1, 1)
    _, metrics = await sender.client.request("GET", "/metrics")
    assert 'feedback_reports_total{report="arf",result="duplicate"} 1.0' in metrics
    assert "mailfleet_sender_complaints_total{" not in metrics


async def test_a_verp_only_report_cannot_name_a_source_ip(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await _started(sender_factory, _config(tmp_path, dns_server, provider_fleet))
    copies = [await _delivered_copy(sender, provider_fleet, f"fbl{i}@gmail.test")
              for i in range(3)]
    forged = []
    for n, copy in enumerate(copies):
        # The reporter redacted our trace header: only the VERP return path matches.
        untraced = re.sub(rb"(?im)^X-Mailfleet-Trace:.*\r\n(?:[ \t].*\r\n)*", b"", copy.data)
        assert b"X-Mailfleet-Trace" not in untraced
        for i in range(100):
            forged.append(sandbox_reports.build_arf(
                untraced, source_ip=f"10.77.{n}.{i}", mail_from=copy.mail_from,
                rcpt_to=copy.rcpt_to[0]))
    answers = await _mail_reports(sender.service.feedback_port, forged)
    assert {code for code, _ in answers} == {250}

    stats = await sender.client.stats()
    assert set(stats["rates"]["byIp"]) <= {SOURCE}
    assert {ip["address"] for ip in stats["ips"]} == {SOURCE}
    assert stats["rates"]["byIp"][SOURCE]["1h"]["complaint"] == 0
    day = sender.service.clock.day()
    assert {address for address, _ in sender.service.spool.load_counters(day)} == {SOURCE}
    _, metrics = await sender.client.request("GET", "/metrics")
    assert "10.77." not in metrics
    # Each complaint still did what a complaint does to its recipient, once.
    assert 'feedback_reports_total{report="arf",result="applied"} 3.0' in metrics
    assert 'mailfleet_sender_suppressions_recorded_total{reason="complaint"} 3.0' in metrics


async def test_one_reporting_source_over_its_rate_is_refused_for_now_and_counted(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await _started(sender_factory, _config(
        tmp_path, dns_server, provider_fleet, perSourceRate="1/h", perSourceBurst=5))
    junk = b"Subject: hello\r\n\r\nnot a report\r\n"
    port = sender.service.feedback_port
    answers = await _mail_reports(port, [junk] * 12, source="127.0.0.1")
    assert [code for code, _ in answers] == [554] * 5 + [451] * 7
    assert "Too many reports" in answers[-1][1]
    # Another reporting source has its own allowance.
    assert [code for code, _ in await _mail_reports(port, [junk], source="127.0.0.2")] == [554]
    _, metrics = await sender.client.request("GET", "/metrics")
    assert "mailfleet_sender_feedback_rate_limited_total 7.0" in metrics
    assert 'feedback_refused_total{reason="not_multipart_report"} 6.0' in metrics


def _big_dsn() -> bytes:
    """9.5 MB of returned header lines: seconds of CPU in the email package's parser."""
    headers = b"X-A: b\r\n" * (int(9.5 * 1024 * 1024) // 8)
    original = (b"From: news@example.test\r\nTo: victim@gmail.test\r\nSubject: big\r\n"
                b"Message-ID: <big@example.test>\r\n" + headers + b"\r\nbody\r\n")
    return sandbox_reports.build_dsn(original, "victim@gmail.test")


def _big_header_mail() -> bytes:
    """A mail to the mailto unsubscribe address whose header section is 9.5 MB."""
    return b"X-A: b\r\n" * (int(9.5 * 1024 * 1024) // 8) + b"Subject: hi\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    ("rcpt", "build", "reason"),
    [("fbl@bounces.example.test", _big_dsn, "unknown_message"),
     ("unsubscribe@bounces.example.test", _big_header_mail, "not_multipart_report")],
)
async def test_a_big_report_is_parsed_while_the_probes_keep_answering(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, rcpt: str, build: Callable[[], bytes], reason: str,
) -> None:
    sender = await _started(sender_factory, _config(tmp_path, dns_server, provider_fleet))
    report = build()
    assert 9 * 1024 * 1024 < len(report) < 10 * 1024 * 1024
    probe_url = sender.client.admin + "/healthz"
    latencies: list[float] = []

    async def mail_it() -> tuple[list[tuple[int, str]], float]:
        started = time.monotonic()
        answers = await _mail_reports(sender.service.feedback_port, [report], rcpt=rcpt)
        return answers, time.monotonic() - started

    async with aiohttp.ClientSession() as http:
        reporting = asyncio.create_task(mail_it())
        while not reporting.done():
            started = time.monotonic()
            async with http.get(probe_url) as response:
                assert response.status == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)  # paces the probes, does not wait for a condition
        answers, duration = await reporting
    # The report is refused (no mark of ours, or not a report) only once it was parsed.
    assert answers[0][0] == 554 and reason in answers[0][1]
    # While it was received and parsed, the probes kept answering: on the loop, one probe
    # waited for the whole parse. Half the time is a bound that holds with both cores busy
    # (scheduling alone delayed one probe by 3.2 s of 10.3 s there).
    assert len(latencies) >= 5, latencies
    assert max(latencies) < duration / 2, (max(latencies), duration)


@pytest.mark.parametrize("parts", [100, 2000])
async def test_a_report_with_too_many_parts_is_refused_with_its_reason(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, parts: int,
) -> None:
    sender = await _started(sender_factory, _config(tmp_path, dns_server, provider_fleet))
    boundary = "b0undary"
    chunks = [f"--{boundary}\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"
              for i in range(parts)]
    report = (
        f"Subject: report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; "
        f'report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
        + "".join(chunks) + f"--{boundary}--\r\n"
    ).encode()
    [(code, text)] = await _mail_reports(sender.service.feedback_port, [report])
    assert code == 554 and "too_many_parts" in text
