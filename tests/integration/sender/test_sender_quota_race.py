"""Warm-up quota under concurrency: many deliveries in flight on several connections while the
operator renews the lease over and over from stats it read a moment earlier. The receiver's
count per source IP is the judge: never above the quota, and the quota fully used (no
reservation leaks)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import SenderFactory, base_config, inject, make_dkim_keys

IP = "127.0.0.36"
QUOTA = 40


def _lease(quota: int, basis: int | None) -> dict[str, Any]:
    return {
        "address": IP, "heloName": "mta-quota.example.test", "ttlSeconds": 60, "epoch": 1,
        "quotaRemaining": quota, "sentTodayBasis": basis, "warmup": True,
        # A new grant id each time: the sender recomputes its count from the basis.
        "leaseId": uuid.uuid4().hex[:8],
    }


async def test_renewals_racing_with_concurrent_deliveries_never_exceed_the_quota(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["throttles"] = {"defaults": {"maxConnections": 8}, "providers": [
        {"name": "gmail", "mxPatterns": ["*.google.test"], "maxConnections": 8}]}
    cfg["delivery"]["messagesPerConnection"] = 3
    gmail = provider_fleet["gmail"]
    gmail.behaviour.rcpt_delay = 0.05  # every attempt stays in flight a while
    sender = await sender_factory(cfg)
    await inject(sender, 200, to=lambda i: f"q{i}@gmail.test", body_size=100)

    generation = 1
    await sender.client.assign([_lease(QUOTA, 0)], generation=generation)
    renewals = 0

    async def operator() -> None:
        # What the operator does: read sentToday, grant quota - sentToday with that basis.
        nonlocal generation, renewals
        while True:
            stats = await sender.client.stats()
            sent = next((i["sentToday"] for i in stats["ips"] if i["address"] == IP), 0)
            await asyncio.sleep(0.01)  # the read goes stale while deliveries go on
            generation += 1
            await sender.client.assign([_lease(max(0, QUOTA - sent), sent)],
                                       generation=generation)
            renewals += 1

    renewing = asyncio.create_task(operator())
    try:
        await gmail.wait_for(QUOTA, timeout=60)
        # Keep renewing for ten more rounds (counted, not timed): an overshoot would show
        # up now.
        reached = renewals
        deadline = asyncio.get_running_loop().time() + 60
        while renewals < reached + 10:
            assert asyncio.get_running_loop().time() < deadline, "renewals stopped"
            await asyncio.sleep(0.05)
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)

    assert gmail.peak_connections[IP] > 1  # deliveries really ran concurrently
    assert gmail.received_by_ip() == {IP: QUOTA}
    stats = await sender.client.stats()
    ip = next(i for i in stats["ips"] if i["address"] == IP)
    assert ip["sentToday"] == QUOTA and ip["quotaRemaining"] == 0
    assert stats["queues"]["marketing"]["depth"] == 200 - QUOTA  # waiting, not dropped


async def test_a_grant_without_a_basis_counts_the_deliveries_in_flight_against_its_quota(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    """The operator grants `quota - what the receivers have` with no basis (it has no count
    of the pod's to offer) while eight attempts are still in flight: those eight must come
    out of the new grant, or the IP sends them on top of the day's quota."""
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["throttles"] = {"defaults": {"maxConnections": 8}, "providers": [
        {"name": "gmail", "mxPatterns": ["*.google.test"], "maxConnections": 8}]}
    cfg["delivery"]["messagesPerConnection"] = 1
    gmail = provider_fleet["gmail"]
    gmail.behaviour.rcpt_delay = 2.0  # the first eight stay in flight across the new grant
    sender = await sender_factory(cfg)
    await inject(sender, 60, to=lambda i: f"f{i}@gmail.test", body_size=100)
    first, day = 8, 16
    await sender.client.assign([_lease(first, None)], generation=1)

    async def ip() -> dict[str, Any]:
        stats = await sender.client.stats()
        return next((i for i in stats["ips"] if i["address"] == IP), {})

    async def until(check: Any, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while not await check():
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
            await asyncio.sleep(0.05)

    async def all_started() -> bool:
        return bool((await ip()).get("sentToday") == first)

    await until(all_started, "the first grant's attempts started")
    received = gmail.received_by_ip().get(IP, 0)  # the receivers' count: answered ones only
    await sender.client.assign([_lease(day - received, None)], generation=2)

    async def settled() -> bool:
        now = await ip()
        answered = now.get("deliveredToday", 0) + now.get("bouncedToday", 0)
        return bool(now.get("quotaRemaining") == 0 and now.get("sentToday") == answered)

    await until(settled, "quota used up and nothing in flight")
    assert first < gmail.received_by_ip()[IP] <= day
