"""Scheduling as the receivers see it: priority under load, provider rates and connection
limits, warm-up quotas and engagement tiers, lease expiry, retries and expiry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    SenderFactory,
    base_config,
    inject,
    lease,
    make_dkim_keys,
)
from sandbox_fixtures.waiting import eventually as _eventually


def _config(
    tmp_path: Path, dns: DNSServer, fleet: ProviderFleet, **throttles: Any
) -> dict[str, Any]:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns)
    cfg = base_config(tmp_path, dns=dns, destination_port=fleet.port, keys=keys)
    if throttles:
        cfg["throttles"] = throttles
    return cfg


async def test_transactional_mail_overtakes_ten_thousand_queued_marketing_messages(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet, providers=[
        {"name": "gmail", "mxPatterns": ["*.google.test"], "messagesPerSecond": 100,
         "maxConnections": 2}])
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.31")])
    gmail = provider_fleet["gmail"]
    await inject(sender, 10_000, to=lambda i: f"m{i}@gmail.test", body_size=100)
    await gmail.wait_for(50, timeout=10)  # marketing is flowing

    # Counted in messages, not seconds (a loaded machine slows both alike): between a
    # receipt's submission and its arrival only the marketing mail already on its way
    # (connections, batches) may go before it, never the queue's thousands.
    overtaken = []
    for n in range(3):
        before = len(gmail.messages)
        status, _ = await sender.client.submit({
            "from": "shop@example.test", "to": [f"buyer{n}@gmail.test"], "subject": "receipt",
            "text": "paid", "class": "transactional"})
        assert status == 202
        await gmail.wait_until(
            lambda n=n: any(m.rcpt_to == (f"buyer{n}@gmail.test",) for m in gmail.messages),
            timeout=60)
        arrived = next(i for i, m in enumerate(gmail.messages)
                       if m.rcpt_to == (f"buyer{n}@gmail.test",))
        overtaken.append(arrived - before)
    stats = await sender.client.stats()

    assert max(overtaken) <= 100, overtaken
    assert stats["queues"]["marketing"]["depth"] > 9000
    before = len(gmail.messages)
    await gmail.wait_for(before + 20, timeout=20)  # and marketing keeps progressing


async def test_provider_rate_and_connection_limits_hold_at_the_receiver(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    rate = 20
    cfg = _config(tmp_path, dns_server, provider_fleet, providers=[
        {"name": "outlook", "mxPatterns": ["*.outlook.test"], "messagesPerSecond": rate,
         "maxConnections": 2}])
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.32")])
    outlook, yahoo = provider_fleet["outlook"], provider_fleet["yahoo"]
    n = 60
    await inject(sender, n, to=lambda i: f"u{i}@outlook.test")
    await inject(sender, n, to=lambda i: f"u{i}@yahoo.test")

    await yahoo.wait_for(n, timeout=60)
    messages = await outlook.wait_for(n, timeout=60)

    stamps = sorted(m.received_at for m in messages)
    burst = rate  # the bucket starts full with one second's worth
    # After the burst, deliveries are paced at the provider rate (10 % slack for timers).
    assert stamps[-1] - stamps[0] >= (n - burst - 1) / rate * 0.9
    assert outlook.max_in_window(1.0) <= burst + rate + 1
    assert outlook.peak_connections["127.0.0.32"] <= 2
    # The unthrottled provider was not held back by the throttled one: it was done while
    # the throttled one was still being paced (an order, not a speed).
    yahoo_last = max(m.received_at for m in yahoo.messages)
    assert yahoo_last < stamps[-1]


async def test_warmup_quota_is_never_exceeded_and_engaged_tiers_go_first(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet)
    cfg["warmup"] = {"overflow": "Defer", "tierOrder": ["high", "medium", "low"]}
    sender = await sender_factory(cfg)
    gmail = provider_fleet["gmail"]
    # Queued before any lease: the whole backlog is ordered when the quota arrives.
    await inject(sender, 60, to=lambda i: f"w{i}@gmail.test",
                 tier=lambda i: ("low", "medium", "high")[i % 3])
    await sender.client.assign([lease("127.0.0.33", quota=15, warmup=True),
                                lease("127.0.0.34")])

    await gmail.wait_for(15, timeout=10)
    await asyncio.sleep(1.0)  # give an overshoot the chance to show up
    assert gmail.received_by_ip() == {"127.0.0.33": 15}  # Defer: the warm IP does not help
    tiers = [m.header("Subject").split("tier=")[1] for m in gmail.messages]  # type: ignore[union-attr]
    assert tiers == ["high"] * 15
    stats = await sender.client.stats()
    ip = next(i for i in stats["ips"] if i["address"] == "127.0.0.33")
    assert ip["sentToday"] == 15 and ip["quotaRemaining"] == 0
    assert stats["queues"]["marketing"]["depth"] == 45  # waiting, not dropped

    # The operator raises the quota and allows overflow to warm IPs: the rest goes out.
    sender.cfg["warmup"]["overflow"] = "WarmIPs"
    sender.rewrite_config()
    await _eventually(lambda: sender.service.cfg.warmup.overflow == "WarmIPs", "reload")
    await sender.client.assign([lease("127.0.0.33", quota=5, warmup=True),
                                lease("127.0.0.34")], generation=2)
    await gmail.wait_for(60, timeout=10)
    by_ip = gmail.received_by_ip()
    assert by_ip["127.0.0.33"] == 20 and by_ip["127.0.0.34"] == 40


async def test_sending_stops_within_a_second_of_lease_expiry(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet, rate="100/s")
    cfg["delivery"]["leaseMargin"] = "500ms"  # sending stops half a second before expiry
    sender = await sender_factory(cfg)
    orange = provider_fleet["orange"]
    await inject(sender, 1000, to=lambda i: f"o{i}@orange.test")
    granted = time.time()
    await sender.client.assign([lease("127.0.0.35", ttl=2.0)])
    expires = granted + 2.0

    await asyncio.sleep(max(0.0, expires + 1.2 - time.time()))
    count = len(orange.messages)
    late = [m for m in orange.messages if m.received_at > expires + 1.0]
    assert 50 < count < 1000
    assert late == []
    await asyncio.sleep(0.5)
    assert len(orange.messages) == count
    status = await sender.client.request("GET", "/v1/assignment", admin=True,
                                         token="admin-token-for-tests")
    assert status[1]["leases"][0]["valid"] is False

    # A new grant after the lease ran out: a new epoch (the old one is never revived).
    await sender.client.assign([lease("127.0.0.35", ttl=60, epoch=1)], generation=2)
    await orange.wait_for(count + 10, timeout=20)


async def test_temporary_failures_are_retried_and_permanent_ones_bounce_or_expire(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet)
    cfg["retry"] = {"schedule": ["300ms", "500ms"], "maxAge": "1h"}
    cfg["classes"] = [{"name": "transactional", "priority": 100, "maxAge": "1h"},
                      {"name": "marketing", "priority": 10, "maxAge": "1500ms"}]
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.36")])
    yahoo = provider_fleet["yahoo"]
    yahoo.behaviour.scripted["later@yahoo.test"] = (451, "4.3.0 try again later")
    yahoo.behaviour.scripted["never@yahoo.test"] = (451, "4.3.0 try again later")
    yahoo.behaviour.unknown_users.add("nobody@yahoo.test")

    for rcpt, cls in (("later@yahoo.test", "transactional"), ("never@yahoo.test", "marketing"),
                      ("nobody@yahoo.test", "transactional")):
        status, _ = await sender.client.submit(
            {"from": "a@example.test", "to": [rcpt], "subject": "s", "text": "t", "class": cls})
        assert status == 202
    await yahoo.wait_until(lambda: len(yahoo.codes_for("later@yahoo.test")) >= 2, 20, "retry")
    del yahoo.behaviour.scripted["later@yahoo.test"]
    await yahoo.wait_for(1, timeout=20)

    async def settled() -> bool:
        stats = await sender.client.stats()
        return bool(stats["totals"]["expired"] == 1 and stats["totals"]["bounced"] == 1)

    deadline = time.monotonic() + 20
    while not await settled():
        assert time.monotonic() < deadline, await sender.client.stats()
        await asyncio.sleep(0.05)
    assert yahoo.codes_for("later@yahoo.test")[-1] == 250
    assert yahoo.codes_for("nobody@yahoo.test") == [550]  # bounced at once, no retry
    assert len(yahoo.codes_for("never@yahoo.test")) >= 2  # retried until max age
    stats = await sender.client.stats()
    assert stats["queues"]["marketing"]["depth"] == 0
    assert stats["queues"]["transactional"]["depth"] == 0


async def test_a_temporary_reply_with_a_permanent_enhanced_code_is_retried_and_never_suppresses(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    """`450 5.1.1`: the reply code says try again, the enhanced code says no such user. The
    code wins: a receiver having a bad moment must not put a good address on the
    suppression list for ever."""
    cfg = _config(tmp_path, dns_server, provider_fleet)
    cfg["retry"] = {"schedule": ["300ms"], "maxAge": "1h"}
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.36")])
    yahoo = provider_fleet["yahoo"]
    yahoo.behaviour.scripted["good@yahoo.test"] = (
        450, "5.1.1 <good@yahoo.test>: Recipient address rejected: User unknown")
    status, _ = await sender.client.submit(
        {"from": "a@example.test", "to": ["good@yahoo.test"], "subject": "s", "text": "t"})
    assert status == 202
    await yahoo.wait_until(lambda: len(yahoo.codes_for("good@yahoo.test")) >= 2, 20, "retry")
    status, body = await sender.client.request(
        "GET", "/v1/suppressions/good@yahoo.test", admin=True, token=ADMIN_TOKEN)
    assert status == 404 or not body["suppressed"], body
    assert (await sender.client.stats())["totals"]["bounced"] == 0

    del yahoo.behaviour.scripted["good@yahoo.test"]
    await yahoo.wait_for(1, timeout=20)
    assert yahoo.codes_for("good@yahoo.test")[-1] == 250
