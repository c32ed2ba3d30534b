"""Delivery events end to end over loopback: a real sender (in process, or its own process for
kill -9) delivers to the sandbox providers and POSTs its events to an aiohttp webhook receiver
that checks every signature. What users rely on: every event arrives signed, validates against
docs/events.schema.json, carries the message's tags, in the order things happened to each
message; a receiver that is down gets everything once it is back (at least once: a repeat
carries the same event id); a sender killed with events pending delivers them after its
restart; events that cannot be delivered within retryFor are dropped and counted."""

from __future__ import annotations

import collections
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from mailfleet_sender import webhook_signing
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    SenderFactory,
    SenderProcess,
    base_config,
    free_port,
    lease,
    make_dkim_keys,
)
from sandbox_fixtures.waiting import eventually as until

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = Draft202012Validator(
    json.loads((ROOT / "docs" / "events.schema.json").read_text()),
    format_checker=Draft202012Validator.FORMAT_CHECKER,
)
KEY = b"webhook-signing-key-for-tests"


class Receiver:
    """A webhook receiver: verifies signatures (refusing bad ones with 401), records batches;
    `status` other than 200 makes it refuse; `down()`/`up()` close and reopen its port."""

    def __init__(self, key: bytes = KEY) -> None:
        self.key = key
        self.port = free_port()
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.bad_signatures = 0
        self.status = 200
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        good = webhook_signing.verify(
            self.key, request.headers.get(webhook_signing.TIMESTAMP_HEADER, ""), body,
            request.headers.get(webhook_signing.SIGNATURE_HEADER, ""), now=time.time(),
        )
        if not good:
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.status != 200:
            return web.Response(status=self.status)
        assert request.headers[webhook_signing.WEBHOOK_HEADER] == "crm"
        self.events.extend(json.loads(body)["events"])
        return web.Response(status=204)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def of(self, recipient: str) -> list[str]:
        return [e["type"] for e in self.events if e["recipient"] == recipient]


def events_config(tmp_path: Path, url: str, **webhook: Any) -> dict[str, Any]:
    key_file = tmp_path / "secrets" / "webhook-key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(KEY + b"\n")
    return {"webhooks": [{
        "name": "crm", "url": url, "signingKeyFile": str(key_file), "batchMax": 5,
        "flushInterval": "100ms", "retryFirst": "100ms", "retryMax": "400ms", **webhook,
    }]}


@pytest.fixture
async def receiver() -> Any:
    hook = Receiver()
    await hook.up()
    yield hook
    await hook.down()


def _config(tmp_path: Path, dns: DNSServer, fleet: ProviderFleet, url: str,
            **webhook: Any) -> dict[str, Any]:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns)
    cfg = base_config(tmp_path, dns=dns, destination_port=fleet.port, keys=keys)
    cfg["events"] = events_config(tmp_path, url, **webhook)
    return cfg


def _assert_valid(events: list[dict[str, Any]]) -> None:
    for event in events:
        problems = [e.message for e in SCHEMA.iter_errors(event)]
        assert not problems, (event, problems)


async def test_events_arrive_signed_valid_tagged_and_in_order_per_message(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, receiver: Receiver,
) -> None:
    gmail = provider_fleet["gmail"]
    gmail.behaviour.unknown_users.add("nobody@gmail.test")
    tried: collections.Counter[str] = collections.Counter()

    def defer_first(rcpt: str, ip: str) -> tuple[int, str] | None:
        tried[rcpt] += 1
        if rcpt == "later@gmail.test" and tried[rcpt] == 1:
            return 451, "4.3.0 try again later"
        return None

    gmail.behaviour.on_rcpt = defer_first
    sender = await sender_factory(_config(tmp_path, dns_server, provider_fleet, receiver.url))
    await sender.client.assign([lease("127.0.0.61")])

    status, body = await sender.client.submit({
        "from": "news@example.test", "to": ["one@gmail.test", "nobody@gmail.test"],
        "subject": "s", "text": "t", "tags": {"campaign": "spring", "segment": "vip"}})
    assert status == 202, body
    json_id = body["id"]
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sender.smtp_port) as smtp:
        await smtp.sendmail("news@example.test", ["later@gmail.test"],
                            b"From: news@example.test\r\nSubject: x\r\n"
                            b"X-Mailfleet-Tags: campaign=autumn; ab=b\r\n\r\nhello\r\n")

    await until(lambda: receiver.of("one@gmail.test") == ["accepted", "delivered"]
                and receiver.of("nobody@gmail.test") == ["accepted", "bounced"]
                and receiver.of("later@gmail.test") == ["accepted", "deferred", "delivered"],
                what="every event of the three recipients, in order")
    assert receiver.bad_signatures == 0
    _assert_valid(receiver.events)
    by_recipient = {e["recipient"]: e for e in receiver.events if e["type"] != "accepted"}
    delivered = by_recipient["one@gmail.test"]
    assert delivered["message_id"] == json_id
    assert delivered["tags"] == {"campaign": "spring", "segment": "vip"}
    assert delivered["pool"] == "test-pool" and delivered["ip"] == "127.0.0.61"
    assert delivered["provider"] == "other" and delivered["reply"]["code"] == 250
    assert delivered["delay_s"] >= 0 and delivered["attempt"] == 1
    bounced = by_recipient["nobody@gmail.test"]
    assert bounced["bounce"]["kind"] == "hard" and bounced["bounce"]["code"] == "5.1.1"
    later = [e for e in receiver.events if e["recipient"] == "later@gmail.test"]
    assert {e["message_id"] for e in later} == {later[0]["message_id"]} != {json_id}
    assert all(e["tags"] == {"campaign": "autumn", "ab": "b"} for e in later)
    assert later[2]["attempt"] == 2
    # The control header never reaches the recipient.
    [copy] = [m for m in gmail.messages if m.rcpt_to == ("later@gmail.test",)]
    assert b"x-mailfleet-tags" not in copy.data.lower()
    stats = (await sender.client.stats())["events"]["webhooks"]["crm"]
    assert stats["delivered"] == len(receiver.events) and stats["dropped"] == 0


async def test_bad_tags_are_refused_never_dropped(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, receiver: Receiver,
) -> None:
    sender = await sender_factory(_config(tmp_path, dns_server, provider_fleet, receiver.url))
    status, body = await sender.client.submit({
        "from": "news@example.test", "to": ["one@gmail.test"], "subject": "s", "text": "t",
        "tags": {"Campaign": "spring"}})
    assert status == 400 and "Campaign" in body["error"]
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sender.smtp_port) as smtp:
            await smtp.sendmail(
                "news@example.test", ["one@gmail.test"],
                b"From: news@example.test\r\nX-Mailfleet-Tags: campaign\r\n\r\nx\r\n")
    assert refused.value.code == 550 and "5.6.0" in refused.value.message
    assert "campaign" in refused.value.message


async def test_complaints_reported_bounces_and_unsubscribes_become_events(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, receiver: Receiver,
) -> None:
    public = free_port()
    cfg = _config(tmp_path, dns_server, provider_fleet, receiver.url)
    cfg["deliverability"].update({
        "feedbackPort": 0, "bounceDomain": "bounces.example.test", "publicPort": public,
        "unsubscribeBaseUrl": f"http://127.0.0.1:{public}"})
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.64")])
    target = ("127.0.0.1", sender.service.feedback_port)
    provider_fleet.set_feedback_target(target)
    gmail, outlook = provider_fleet["gmail"], provider_fleet["outlook"]
    gmail.behaviour.complaint_rate = 1.0
    outlook.behaviour.bounce_after_accept.add("later@outlook.test")
    outlook.bounce_target = target
    for rcpt in ("angry@gmail.test", "later@outlook.test"):
        status, _ = await sender.client.submit({
            "from": "news@example.test", "to": [rcpt], "subject": "s", "text": "t",
            "class": "marketing", "tags": {"campaign": "feedback"}})
        assert status == 202

    await until(lambda: receiver.of("angry@gmail.test")[-1:] == ["complained"]
                and receiver.of("later@outlook.test")[-1:] == ["bounced"],
                what="the complaint and the DSN as events")
    [copy] = await gmail.wait_for(1)
    link = re.search(r"<(http://[^>]+)>", copy.header("List-Unsubscribe") or "")
    assert link is not None
    async with aiohttp.ClientSession() as http, http.post(
        link.group(1), data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        assert response.status == 200
    await until(lambda: receiver.of("angry@gmail.test")[-1:] == ["unsubscribed"],
                what="the unsubscribe as an event")

    _assert_valid(receiver.events)
    assert receiver.of("angry@gmail.test") == ["accepted", "delivered", "complained",
                                               "unsubscribed"]
    assert receiver.of("later@outlook.test") == ["accepted", "delivered", "bounced"]
    by_type = {(e["recipient"], e["type"]): e for e in receiver.events}
    complaint = by_type["angry@gmail.test", "complained"]
    delivered = by_type["angry@gmail.test", "delivered"]
    assert complaint["message_id"] == delivered["message_id"]
    assert (complaint["tags"], complaint["ip"], complaint["class"]) == (
        {"campaign": "feedback"}, "127.0.0.64", "marketing")
    dsn = by_type["later@outlook.test", "bounced"]
    assert dsn["bounce"]["kind"] == "hard" and dsn["bounce"]["code"] == "5.1.1"
    assert dsn["tags"] == {"campaign": "feedback"} and dsn["attempt"] is None
    unsubscribe = by_type["angry@gmail.test", "unsubscribed"]
    assert unsubscribe["message_id"] is None and unsubscribe["class"] == "marketing"


async def test_a_receiver_down_for_a_while_gets_everything_once_back(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, receiver: Receiver,
) -> None:
    await receiver.down()  # connection refused, then errors, then up
    sender = await sender_factory(_config(tmp_path, dns_server, provider_fleet, receiver.url))
    await sender.client.assign([lease("127.0.0.62")])
    recipients = [f"r{i}@yahoo.test" for i in range(12)]
    for rcpt in recipients:
        status, _ = await sender.client.submit({
            "from": "news@example.test", "to": [rcpt], "subject": "s", "text": "t",
            "tags": {"campaign": "outage"}})
        assert status == 202
    await provider_fleet["yahoo"].wait_for(len(recipients))

    async def pending() -> bool:
        figures = (await sender.client.stats())["events"]["webhooks"]["crm"]
        return bool(figures["pending"] > 0 and figures["lastError"])
    await until(pending, what="events waiting while the receiver is down")
    await receiver.up()
    receiver.status = 503
    await until(lambda: receiver.requests > 0, what="a try against the erroring receiver")
    receiver.status = 200

    await until(lambda: all(receiver.of(r) == ["accepted", "delivered"] for r in recipients),
                what="every event after the outage, in order")
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == 2 * len(recipients)
    _assert_valid(receiver.events)
    figures = (await sender.client.stats())["events"]["webhooks"]["crm"]
    assert figures["dropped"] == 0

    async def drained() -> bool:
        return (await sender.client.stats())["events"]["webhooks"]["crm"]["pending"] == 0
    await until(drained, what="nothing pending")


async def test_events_older_than_retry_for_are_dropped_and_counted(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, receiver: Receiver,
) -> None:
    receiver.status = 500
    sender = await sender_factory(
        _config(tmp_path, dns_server, provider_fleet, receiver.url, retryFor="1s"))
    status, _ = await sender.client.submit({
        "from": "news@example.test", "to": ["a@gmail.test", "b@gmail.test"], "subject": "s",
        "text": "t"})
    assert status == 202  # two accepted events (no lease: nothing is delivered)

    async def dropped() -> bool:
        figures = (await sender.client.stats())["events"]["webhooks"]["crm"]
        return bool(figures["dropped"] == 2 and figures["pending"] == 0)
    await until(dropped, what="both events dropped")
    assert (await sender.client.stats())["events"]["webhooks"]["crm"]["lastError"] == "HTTP 500"
    _, text = await sender.client.request("GET", "/metrics", admin=True, token=ADMIN_TOKEN)
    assert 'mailfleet_sender_events_dropped_total{webhook="crm"} 2.0' in text
    receiver.status = 200
    status, _ = await sender.client.submit({
        "from": "news@example.test", "to": ["c@gmail.test"], "subject": "s", "text": "t"})
    await until(lambda: receiver.of("c@gmail.test") == ["accepted"], what="later events")
    assert not receiver.of("a@gmail.test")


@pytest.mark.slow
async def test_events_pending_at_kill_9_are_delivered_after_the_restart(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet, receiver: Receiver,
) -> None:
    receiver.status = 503
    cfg = _config(tmp_path, dns_server, provider_fleet, receiver.url)
    proc = SenderProcess(tmp_path / "proc", cfg)
    recipients = [f"k{i}@orange.test" for i in range(20)]
    try:
        await proc.start()
        await proc.client.assign([lease("127.0.0.63")])
        for rcpt in recipients:
            status, _ = await proc.client.submit({
                "from": "news@example.test", "to": [rcpt], "subject": "s", "text": "t",
                "tags": {"campaign": "kill"}})
            assert status == 202
        await provider_fleet["orange"].wait_for(len(recipients))
        # The delivered events are written with the rows (queued without waiting): once the
        # stats say nothing is queued, they are committed too (stats flush the spool first).
        async def delivered_all() -> bool:
            stats = await proc.client.stats()
            return bool(stats["totals"]["delivered"] == len(recipients))
        await until(delivered_all, what="every delivery recorded")
        await proc.client.request("GET", "/v1/stats", admin=True, token=ADMIN_TOKEN)
        proc.kill()  # SIGKILL, with every event still pending for the webhook
        assert receiver.events == []

        receiver.status = 200
        await proc.start()
        await until(lambda: all(receiver.of(r) == ["accepted", "delivered"]
                                for r in recipients), "events after the restart", 30)
        _assert_valid(receiver.events)
        assert all(e["tags"] == {"campaign": "kill"} for e in receiver.events)
        # stdout carried the same events, one JSON line each, before the kill.
        lines = [json.loads(line) for line in proc.log_path.read_text().splitlines()
                 if line.startswith('{"schema":"mailfleet.io/event/v1"')]
        _assert_valid(lines)
        assert {e["id"] for e in receiver.events} <= {e["id"] for e in lines}
    finally:
        proc.kill()


async def test_webhooks_follow_config_reloads(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, receiver: Receiver,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet, receiver.url)
    webhooks = cfg["events"].pop("webhooks")
    sender = await sender_factory(cfg)
    mail = {"from": "news@example.test", "subject": "s", "text": "t"}
    assert (await sender.client.submit({**mail, "to": ["before@gmail.test"]}))[0] == 202

    cfg["events"]["webhooks"] = webhooks
    sender.rewrite_config()

    async def listed() -> bool:
        return "crm" in (await sender.client.stats())["events"]["webhooks"]
    await until(listed, what="the webhook added by a reload")
    assert (await sender.client.submit({**mail, "to": ["after@gmail.test"]}))[0] == 202
    await until(lambda: receiver.of("after@gmail.test") == ["accepted"], what="new events")
    assert receiver.of("before@gmail.test") == []  # a new webhook starts with what comes next

    receiver.status = 503  # events pile up for it...
    assert (await sender.client.submit({**mail, "to": ["late@gmail.test"]}))[0] == 202

    async def waiting() -> bool:
        return bool((await sender.client.stats())["events"]["webhooks"]["crm"]["pending"])
    await until(waiting, what="an event waiting for the webhook")
    cfg["events"]["webhooks"] = []  # ...and the outbox forgets them once it is removed
    sender.rewrite_config()

    async def removed() -> bool:
        return (await sender.client.stats())["events"]["webhooks"] == {}
    await until(removed, what="the webhook removed by a reload")

    def outbox_rows() -> int:
        with sqlite3.connect(Path(cfg["spoolDir"]) / "spool.sqlite3") as db:
            return int(db.execute("SELECT COUNT(*) FROM event_outbox").fetchone()[0])
    await until(lambda: outbox_rows() == 0, what="the outbox pruned")


async def test_suppressed_and_expired_recipients_become_events(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, receiver: Receiver,
) -> None:
    provider_fleet["yahoo"].behaviour.on_rcpt = lambda rcpt, ip: (
        (451, "4.3.0 try again later") if rcpt == "slow@yahoo.test" else None)
    cfg = _config(tmp_path, dns_server, provider_fleet, receiver.url)
    cfg["classes"] = [{"name": "transactional", "maxAge": "2s"}]
    cfg["retry"] = {"schedule": ["500ms"], "maxAge": "2s"}
    sender = await sender_factory(cfg)
    status, _ = await sender.client.request(
        "PUT", "/v1/suppressions/gone@yahoo.test", admin=True, token=ADMIN_TOKEN,
        json={"reason": "manual"})
    assert status == 201
    await sender.client.assign([lease("127.0.0.65")])
    status, _ = await sender.client.submit({
        "from": "news@example.test", "to": ["gone@yahoo.test", "slow@yahoo.test"],
        "subject": "s", "text": "t", "tags": {"campaign": "c"}})
    assert status == 202

    await until(lambda: receiver.of("gone@yahoo.test") == ["accepted", "suppressed"]
                and receiver.of("slow@yahoo.test")[-1:] == ["expired"],
                what="suppressed and expired events")
    slow = receiver.of("slow@yahoo.test")
    assert slow[0] == "accepted" and set(slow[1:-1]) == {"deferred"} and len(slow) >= 3
    _assert_valid(receiver.events)
    [expired] = [e for e in receiver.events if e["type"] == "expired"]
    assert expired["reply"]["enhanced"] == "4.4.7" and expired["tags"] == {"campaign": "c"}
