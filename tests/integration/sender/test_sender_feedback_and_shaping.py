"""One sender against the sandbox: reactive shaping against a provider that answers 421 above
a rate, bad input on the feedback port and the suppression API, and hand-off idempotency."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from mailfleet_sandbox import reports as sandbox_reports
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    API_KEY,
    RunningSender,
    SenderFactory,
    base_config,
    inject,
    lease,
    make_dkim_keys,
)
from sandbox_fixtures.waiting import eventually


async def _sender(
    tmp: Path, dns: DNSServer, fleet: ProviderFleet, factory: SenderFactory, **extra: Any
) -> RunningSender:
    keys = make_dkim_keys(tmp / "keys", "example.test", dns)
    cfg = base_config(tmp, dns=dns, destination_port=fleet.port, keys=keys)
    cfg.update(extra)
    sender = await factory(cfg)
    await sender.client.assign([lease("127.0.0.51")])
    return sender


async def test_reactive_shaping_slows_a_throttling_provider_and_recovers(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    gmail = provider_fleet["gmail"]
    gmail.behaviour.rate_limit_per_ip = 6.0
    sender = await _sender(
        tmp_path, dns_server, provider_fleet, sender_factory,
        throttles={"providers": [{"name": "gmail", "mxPatterns": ["*.google.test"],
                                  "messagesPerSecond": 80}]},
        retry={"schedule": ["300ms"], "maxAge": "1h"},
        deliverability={"shaping": {"providers": {"gmail": {
            "threshold": 2, "window": "2s", "cooldown": "200ms", "backoffFactor": 0.5,
            "minFactor": 0.05, "suspendAfter": 10, "recoverEvery": "1s", "recoverStep": 0.25,
        }}}},
    )
    await inject(sender, 120, to=lambda i: f"user{i}@gmail.test")

    async def slowed() -> bool:
        shaping = (await sender.client.stats())["shaping"]
        return "gmail" in shaping and shaping["gmail"]["factor"] <= 0.1

    await eventually(slowed, "gmail slowed down")
    # Slowed from 80/s to a tenth of it or less: at most 8/s plus a burst of 8 (and a few in
    # flight), over the window as it really lasted (a loaded machine oversleeps).
    attempts_before = len(gmail.attempts)
    delivered_before = len(gmail.messages)
    window_start = time.monotonic()
    await asyncio.sleep(1.0)  # a measurement window, not a wait for a condition
    window = time.monotonic() - window_start
    rcpt_attempts = [a for a in gmail.attempts[attempts_before:] if a.stage == "RCPT"]
    assert len(rcpt_attempts) <= 8 * window + 12, (len(rcpt_attempts), window)
    assert len(gmail.messages) > delivered_before  # slowed, not stopped

    gmail.behaviour.rate_limit_per_ip = None  # the provider is happy again

    async def recovered() -> bool:
        return "gmail" not in (await sender.client.stats())["shaping"]

    # About 4 s of quiet steps (0.25 a second); the exact pace is unit-tested on a fake clock.
    await eventually(recovered, "gmail back at its configured rate", deadline=20.0)
    _, metrics = await sender.client.request("GET", "/metrics")
    assert 'mailfleet_sender_shaping_transitions_total{provider="gmail",transition="recovered"}' \
        in metrics
    await gmail.wait_until(lambda: len(gmail.messages) == 120, timeout=15, what="all delivered")
    rates = (await sender.client.stats())["rates"]["byIp"]["127.0.0.51"]["1h"]
    assert rates["throttled"] > 0 and rates["delivered"] == 120
    assert 0 < rates["deferralRate"] < 1


async def test_bad_reports_are_refused_with_a_reason_counted_and_change_nothing(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await _sender(tmp_path, dns_server, provider_fleet, sender_factory,
                           deliverability={"feedbackPort": 0,
                                           "bounceDomain": "bounces.example.test"})
    port = sender.service.feedback_port
    original = (b"From: news@example.test\r\nTo: victim@gmail.test\r\nSubject: hi\r\n"
                b"Message-ID: <x@example.test>\r\n\r\nbody\r\n")
    forged_trace = original.replace(b"Subject:", b"X-Mailfleet-Trace: t1.AAAAAAAAAAAAAAAAAAAAAA"
                                    b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\nSubject:")
    cases = [
        (b"Subject: hello\r\n\r\njust a mail\r\n", "not_multipart_report"),
        (sandbox_reports.build_dsn(original, "victim@gmail.test").replace(
            b"Status: 5.1.1", b"Status: bogus"), "bad_status"),
        (sandbox_reports.build_dsn(original, "victim@gmail.test"), "unknown_message"),
        (sandbox_reports.build_arf(original, source_ip="127.0.0.51",
                                   mail_from="news@example.test",
                                   rcpt_to="victim@gmail.test"), "unknown_message"),
        (sandbox_reports.build_arf(forged_trace, source_ip="127.0.0.51",
                                   mail_from="news@example.test",
                                   rcpt_to="victim@gmail.test"), "forged_trace"),
    ]
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
        for report, reason in cases:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await client.sendmail("", ["b-x@bounces.example.test"], report)
            assert refused.value.code == 554 and reason in refused.value.message, reason
            await client.rset()
    status, body = await sender.client.request(
        "GET", "/v1/suppressions", admin=True, token=ADMIN_TOKEN
    )
    assert (status, body["count"]) == (200, 0)
    _, metrics = await sender.client.request("GET", "/metrics")
    for reason in ("not_multipart_report", "bad_status", "forged_trace"):
        assert f'mailfleet_sender_feedback_refused_total{{reason="{reason}"}} 1.0' in metrics
    assert 'mailfleet_sender_feedback_refused_total{reason="unknown_message"} 2.0' in metrics

    # A forged unsubscribe token, one-click and by mail, changes nothing either.
    status, body = await sender.client.request(
        "POST", "/v1/unsubscribe/" + "A" * 60, data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["code"]) == (400, "forged_token")
    status, _ = await sender.client.request("POST", "/v1/unsubscribe/" + "A" * 60, data="")
    assert status == 400  # RFC 8058: the one-click body is required
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.sendmail("someone@gmail.test", ["unsubscribe@bounces.example.test"],
                                  b"Subject: unsubscribe " + b"B" * 60 + b"\r\n\r\n.\r\n")
        assert refused.value.code == 554


async def test_oversized_and_malformed_suppression_imports_are_refused_whole(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await _sender(tmp_path, dns_server, provider_fleet, sender_factory,
                           deliverability={"suppression": {"maxImportEntries": 100,
                                                           "maxImportBytes": 4096}})
    client = sender.client
    too_many = {"entries": [f"u{i}@example.org" for i in range(101)]}
    status, body = await client.request("POST", "/v1/suppressions", admin=True,
                                        token=ADMIN_TOKEN, json=too_many)
    assert (status, body["error"]) == (413, "import_too_large")
    too_big = {"entries": [f"{'u' * 60}{i}@example.org" for i in range(90)]}
    status, _ = await client.request("POST", "/v1/suppressions", admin=True, token=ADMIN_TOKEN,
                                     json=too_big)
    assert status == 413
    mixed = {"entries": ["ok@example.org", "not an address", {"address": 5}]}
    status, body = await client.request("POST", "/v1/suppressions", admin=True,
                                        token=ADMIN_TOKEN, json=mixed)
    assert status == 400 and [e["index"] for e in body["errors"]] == [1, 2]
    status, _ = await client.request("POST", "/v1/suppressions", token="wrong", admin=True,
                                     json={"entries": ["x@example.org"]})
    assert status == 401
    status, body = await client.request("GET", "/v1/suppressions", admin=True, token=ADMIN_TOKEN)
    assert body["count"] == 0
    _, metrics = await client.request("GET", "/metrics")
    assert 'mailfleet_sender_suppression_requests_refused{reason="import_rejected"} 3.0' \
        in metrics


async def test_a_repeated_hand_off_is_stored_once(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await _sender(tmp_path, dns_server, provider_fleet, sender_factory)
    raw = (b"From: news@example.test\r\nTo: a@gmail.test\r\nBcc: hidden@outlook.test\r\n"
           b"Subject: moved\r\nMessage-ID: <moved@example.test>\r\n\r\nbody\r\n")
    answers = []
    for _ in range(2):
        status, body = await sender.client.request(
            "POST", "/v1/messages", token=API_KEY, data=raw,
            headers={"Content-Type": "message/rfc822", "X-Mailfleet-Handoff": "pod-9:42"})
        answers.append((status, body["duplicate"], body["id"]))
    assert answers[0][:2] == (202, False)
    assert answers[1] == (202, True, answers[0][2])
    gmail, outlook = provider_fleet["gmail"], provider_fleet["outlook"]
    [message] = await gmail.wait_for(1)
    [hidden] = await outlook.wait_for(1)

    async def settled() -> bool:
        stats = await sender.client.stats()
        return sum(q["depth"] for q in stats["queues"].values()) == 0

    await eventually(settled, "nothing left queued")
    assert (await sender.client.stats())["totals"]["accepted"] == 1
    assert len(gmail.messages) == 1 and len(outlook.messages) == 1
    assert message.header("Bcc") is None and hidden.header("Bcc") is None
