"""TLS-RPT end to end, over loopback against the sandbox pieces: a sender delivers to an
MTA-STS `enforce` domain whose `_smtp._tls` record names an HTTPS rua (an aiohttp server with
a sandbox CA certificate, trusted through `delivery.tls.caFile`) and a mailto rua (a sandbox
provider's MX). Once the report period has ended, both get the report: the POST as
`application/tlsrpt+gzip`, the mail DKIM-signed with the pool's key, and the counts are the
sessions the sender made. Counts survive a restart in mid-period; a failing rua is retried,
then dropped and counted; reports other senders send to the pool are stored and counted, and
malformed, oversized and foreign ones refused.

The sender's wall clock is offset (`clock.Clock(wall=...)`) so a test starts at the beginning
of a report period and ends it by moving the clock, not by waiting for a boundary."""

from __future__ import annotations

import email
import email.message
import email.policy
import gzip
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import dkim
import pytest
from aiohttp import web
from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.mta_sts_server import PolicyServer
from mailfleet_sandbox.providers import SmtpReceiver
from mailfleet_sender import clock, tlsrpt
from sandbox_fixtures.node_agent import eventually
from sandbox_fixtures.sender import (
    DkimKeys,
    RunningSender,
    SenderFactory,
    base_config,
    free_port,
    lease,
    make_dkim_keys,
)

CA = SandboxCA()
PERIOD = 600.0
DOMAIN = "sts-rpt.test"
RUA_HOST = f"rua.{DOMAIN}"
MAILBOX = "tls-reports@reports-rpt.test"


class RuaServer:
    """An HTTPS rua: records every POST; answers `status`."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.status = 200
        self.posts: list[tuple[str, bytes]] = []
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        self.posts.append((request.content_type, await request.read()))
        return web.Response(status=self.status)

    async def __aenter__(self) -> RuaServer:
        app = web.Application()
        app.router.add_post("/tlsrpt", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = CA.issue([RUA_HOST]).server_context()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(gzip.decompress(body)) for _, body in self.posts]


class World:
    """The MTA-STS domain, its rua endpoints, and a shifted clock for the sender."""

    def __init__(self, dns: DNSServer, policies: PolicyServer, rua: RuaServer,
                 mx: SmtpReceiver, mailbox: SmtpReceiver) -> None:
        self.dns, self.policies, self.rua, self.mx, self.mailbox = dns, policies, rua, mx, mailbox
        start = math.ceil(time.time() / PERIOD) * PERIOD + 1.0
        self.offset = start - time.time()  # the sender's clock starts a new period now

    def wall(self) -> float:
        return time.time() + self.offset

    def end_period(self) -> None:
        self.offset += PERIOD

    def clock(self) -> clock.Clock:
        return clock.Clock(wall=self.wall)


@pytest.fixture
async def world(dns_server: DNSServer) -> AsyncIterator[World]:
    port = free_port("127.0.0.151")
    async with PolicyServer(CA, "127.0.0.150") as policies, RuaServer("127.0.0.152") as rua:
        mx_name = f"mx.{DOMAIN}"
        dns_server.set_records(DOMAIN, "MX", [f"10 {mx_name}."])
        dns_server.set_records(mx_name, "A", ["127.0.0.151"])
        dns_server.set_records(f"_mta-sts.{DOMAIN}", "TXT", ['"v=STSv1; id=1"'])
        dns_server.set_records(f"mta-sts.{DOMAIN}", "A", [policies.host])
        policies.set_policy(DOMAIN, mode="enforce", mx=[mx_name])
        dns_server.set_records(RUA_HOST, "A", [rua.host])
        dns_server.set_records(f"_smtp._tls.{DOMAIN}", "TXT", [
            f'"v=TLSRPTv1; rua=https://{RUA_HOST}:{rua.port}/tlsrpt,mailto:{MAILBOX}"'])
        dns_server.set_records("reports-rpt.test", "MX", ["10 mx.reports-rpt.test."])
        dns_server.set_records("mx.reports-rpt.test", "A", ["127.0.0.153"])
        mx = SmtpReceiver(DOMAIN, "127.0.0.151", port, hostname=mx_name,
                          starttls_context=CA.issue([mx_name]).server_context())
        mailbox = SmtpReceiver("reports", "127.0.0.153", port)
        await mx.start()
        await mailbox.start()
        try:
            yield World(dns_server, policies, rua, mx, mailbox)
        finally:
            await mx.stop()
            await mailbox.stop()


def _config(tmp_path: Path, world: World, keys: DkimKeys, **reports: Any) -> dict[str, Any]:
    cfg = base_config(tmp_path, dns=world.dns, destination_port=world.mx.port, keys=keys)
    cfg["delivery"]["tls"] = {
        "caFile": str(CA.write(tmp_path / "ca.pem")), "mtaStsPort": world.policies.port,
        "reports": {"enabled": True, "interval": f"{int(PERIOD)}s", "flushInterval": "100ms",
                    "organization": "mailfleet tests", "contact": "ops@example.net",
                    "retryFirst": "100ms", "retryMax": "200ms", **reports},
    }
    cfg["deliverability"]["feedbackPort"] = 0
    return cfg


async def _deliver(sender: RunningSender, world: World, n: int) -> None:
    before = len(world.mx.messages)
    for i in range(n):
        status, body = await sender.client.submit(
            {"from": "news@example.net", "to": [f"r{i}@{DOMAIN}"], "subject": "tls",
             "text": "t", "class": "transactional"})
        assert status == 202, body
    await world.mx.wait_for(before + n, timeout=20)


def _sessions(sender: RunningSender) -> float:
    text = sender.service.metrics.render().decode()
    line = 'mailfleet_sender_tls_sessions_total{policy="mta-sts",result="tls"} '
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


def _successes(report: dict[str, Any]) -> int:
    return sum(p["summary"]["total-successful-session-count"] for p in report["policies"])


async def test_reports_reach_the_https_and_mailto_rua_with_the_sessions_made(
    tmp_path: Path, world: World, sender_factory: SenderFactory
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.net", world.dns)
    sender = await sender_factory(_config(tmp_path, world, keys), clock_=world.clock())
    await sender.client.assign([lease("127.0.0.154")])
    await _deliver(sender, world, 3)
    sessions = _sessions(sender)
    assert sessions >= 1
    assert world.rua.posts == []  # the period has not ended

    world.end_period()
    await eventually(lambda: len(world.rua.posts) == 1, within=20)
    kind, _ = world.rua.posts[0]
    assert kind == "application/tlsrpt+gzip"
    [report] = world.rua.reports()
    assert report["organization-name"] == "mailfleet tests"
    assert report["contact-info"] == "ops@example.net"
    assert "sender-0" in report["report-id"]
    [policy] = report["policies"]
    assert policy["policy"]["policy-type"] == "sts"
    assert policy["policy"]["policy-domain"] == DOMAIN
    assert policy["policy"]["mx-host"] == [f"mx.{DOMAIN}"]
    assert _successes(report) == sessions
    assert policy["summary"]["total-failure-session-count"] == 0

    [mail] = await world.mailbox.wait_for(1, timeout=20)
    assert mail.rcpt_to == (MAILBOX,)
    assert dkim.verify(mail.data, dnsfunc=keys.dnsfunc)
    message = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    assert message["From"] == "tlsrpt-noreply@example.net"
    assert message["TLS-Report-Domain"] == DOMAIN
    assert message["TLS-Report-Submitter"] == "example.net"
    assert str(message["Subject"]).startswith(
        f"Report Domain: {DOMAIN} Submitter: example.net Report-ID: <")
    [attachment] = [p for p in message.iter_parts()
                    if p.get_content_type() == "application/tlsrpt+gzip"]
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert json.loads(gzip.decompress(payload)) == report  # the same report both ways
    stats = await sender.client.stats()
    assert stats["tlsrpt"]["sent"] == 1 and stats["tlsrpt"]["pending"] == 0
    metrics = sender.service.metrics.render().decode()
    assert 'mailfleet_sender_tlsrpt_reports_total{result="sent"} 1.0' in metrics
    assert 'mailfleet_sender_tlsrpt_deliveries_total{method="https",result="ok"} 1.0' in metrics


async def test_a_restart_in_mid_period_keeps_the_counts(
    tmp_path: Path, world: World, sender_factory: SenderFactory
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.net", world.dns)
    cfg = _config(tmp_path, world, keys)
    first = await sender_factory(cfg, clock_=world.clock())
    await first.client.assign([lease("127.0.0.155")])
    await _deliver(first, world, 2)
    before = _sessions(first)
    await first.stop()

    second = await sender_factory(cfg, clock_=world.clock())
    await second.client.assign([lease("127.0.0.155")], generation=2)
    await _deliver(second, world, 2)
    after = _sessions(second)
    world.end_period()
    await eventually(lambda: len(world.rua.posts) == 1, within=20)
    [report] = world.rua.reports()
    assert _successes(report) == before + after


async def test_a_failing_rua_is_retried_then_dropped_and_counted(
    tmp_path: Path, world: World, sender_factory: SenderFactory
) -> None:
    world.rua.status = 500
    world.dns.set_records(f"_smtp._tls.{DOMAIN}", "TXT", [
        f'"v=TLSRPTv1; rua=https://{RUA_HOST}:{world.rua.port}/tlsrpt"'])
    keys = make_dkim_keys(tmp_path / "keys", "example.net", world.dns)
    sender = await sender_factory(_config(tmp_path, world, keys, retryFor="1s"),
                                  clock_=world.clock())
    await sender.client.assign([lease("127.0.0.156")])
    await _deliver(sender, world, 1)
    world.end_period()
    await eventually(lambda: sender.service.tls_reporting.totals["dropped"] == 1, within=20)
    assert len(world.rua.posts) >= 2  # tried again before giving up
    stats = await sender.client.stats()
    assert stats["tlsrpt"]["dropped"] == 1 and stats["tlsrpt"]["pending"] == 0
    metrics = sender.service.metrics.render().decode()
    assert 'mailfleet_sender_tlsrpt_reports_total{result="dropped"} 1.0' in metrics
    assert 'mailfleet_sender_tlsrpt_deliveries_total{method="https",result="failed"}' in metrics
    await _deliver(sender, world, 1)  # delivery never waited on the report


def _report(domain: str, report_id: str = "r-1") -> dict[str, Any]:
    counts = tlsrpt.PolicyCounts("sts", ("version: STSv1", "mode: enforce"), ("mx.example.net",),
                                 successes=7)
    counts.failures[tlsrpt.FailureKey(result="certificate-expired", mx_host="mx.example.net",
                                      receiving_ip="192.0.2.1")] = 2
    return tlsrpt.build_report(domain=domain, index=20000, period=86400, policies=[counts],
                               organization="Other Sender", contact="tls@other.example",
                               report_id=report_id)


async def test_reports_sent_to_the_pool_are_stored_and_counted_and_bad_ones_refused(
    tmp_path: Path, world: World, sender_factory: SenderFactory
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.net", world.dns)
    cfg = _config(tmp_path, world, keys, inboundMaxBytes=4096, inboundMaxJsonBytes=65536)
    sender = await sender_factory(cfg)
    url = f"{sender.client.public}/v1/tlsrpt"

    async def post(body: bytes, kind: str = "application/tlsrpt+gzip") -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.post(
                url, data=body, headers={"Content-Type": kind}) as response:
            return response.status, await response.json(content_type=None)

    good = tlsrpt.encode_report(_report("example.net"))
    assert await post(good) == (200, {"reportId": "r-1", "duplicate": False})
    assert await post(good) == (200, {"reportId": "r-1", "duplicate": True})
    sub = json.dumps(_report("mail.example.net", "r-2")).encode()
    assert (await post(sub, "application/tlsrpt+json"))[0] == 200

    status, body = await post(tlsrpt.encode_report(_report("elsewhere.test", "r-3")))
    assert (status, body["code"]) == (403, "foreign_domain")
    status, body = await post(gzip.compress(b'{"organization-name": "x"}'))
    assert (status, body["code"]) == (400, "malformed")
    status, body = await post(b"not gzip at all")
    assert (status, body["code"]) == (400, "malformed")
    status, body = await post(gzip.compress(b" " * 10_000_000))  # a 10 KB gzip bomb
    assert (status, body["code"]) == (413, "oversized")
    status, body = await post(b"x" * 5000)
    assert (status, body["code"]) == (413, "oversized")
    status, body = await post(good, "application/json")
    assert (status, body["code"]) == (415, "unsupported_type")

    mail = tlsrpt.build_mail(
        report=_report("example.net", "r-4"),
        body=tlsrpt.encode_report(_report("example.net", "r-4")), domain="example.net",
        sender="tlsrpt@other.example", recipient="tls@example.net", now=time.time())
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=sender.service.feedback_port)
    await smtp.connect()
    try:
        _, reply = await smtp.sendmail("tlsrpt@other.example", ["tls@example.net"], mail)
        assert "tlsrpt stored" in reply
        foreign = tlsrpt.build_mail(
            report=_report("elsewhere.test", "r-5"),
            body=tlsrpt.encode_report(_report("elsewhere.test", "r-5")),
            domain="elsewhere.test", sender="tlsrpt@other.example",
            recipient="tls@example.net", now=time.time())
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail("tlsrpt@other.example", ["tls@example.net"], foreign)
        assert refused.value.code == 554 and "foreign_domain" in refused.value.message
    finally:
        await smtp.quit()

    stats = (await sender.client.stats())["tlsrpt"]
    assert stats["received"]["example.net"]["reports"] == 3  # r-1, r-2 (subdomain), r-4
    assert stats["received"]["example.net"]["successfulSessions"] == 21
    assert stats["received"]["example.net"]["failedSessions"] == 6
    assert stats["refused"] == {"foreign_domain": 2, "malformed": 2, "oversized": 2,
                                "unsupported_type": 1}
    metrics = sender.service.metrics.render().decode()
    assert ('mailfleet_sender_tlsrpt_received_total{policy_domain="example.net",'
            'result="stored"} 3.0') in metrics
    assert ('mailfleet_sender_tlsrpt_received_total{policy_domain="example.net",'
            'result="duplicate"} 1.0') in metrics
    assert "elsewhere.test" not in metrics
