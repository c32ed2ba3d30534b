"""Quota days follow the warm-up's timezone, and past days' counters stay readable.

The sender counts `sentToday` per calendar day of `clock.timezone` (the operator renders the
warm-up's), so its day rolls over at local midnight, not UTC midnight: a warm-up in
Pacific/Auckland would otherwise get two quota days in one of its days. The counters of the
days before stay in the spool and in `/v1/stats` (`days`), so an operator that was down
across midnight still judges the day on its real figures."""

from __future__ import annotations

import datetime
import time
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from mailfleet_sender import clock
from sandbox_fixtures.operator import wait_for
from sandbox_fixtures.sender import SenderFactory, base_config, inject, make_dkim_keys

IP = "127.0.0.37"
ZONE = "Pacific/Auckland"


def _lease(quota: int) -> dict[str, Any]:
    return {
        "address": IP, "heloName": "mta-days.example.test", "ttlSeconds": 600, "epoch": 1,
        "quotaRemaining": quota, "sentTodayBasis": 0, "warmup": True,
        "leaseId": uuid.uuid4().hex[:8],
    }


def _local_evening() -> float:
    """23:00 tonight in Auckland (midday UTC the same UTC date: far from UTC midnight)."""
    zone = zoneinfo.ZoneInfo(ZONE)
    today = datetime.datetime.now(zone).date()
    return datetime.datetime.combine(today, datetime.time(23), tzinfo=zone).timestamp()


def _ip(stats: dict[str, Any]) -> dict[str, Any]:
    return next(i for i in stats["ips"] if i["address"] == IP)


async def test_the_quota_day_rolls_over_at_local_midnight_and_the_ended_day_stays_readable(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["clock"] = {"timezone": ZONE}
    offset = [_local_evening() - time.time()]
    sender = await sender_factory(
        cfg, clock_=clock.Clock(wall=lambda: time.time() + offset[0])
    )
    await inject(sender, 8, to=lambda i: f"d{i}@gmail.test", body_size=100)
    await sender.client.assign([_lease(5)], generation=1)
    await provider_fleet["gmail"].wait_for(5, timeout=20)

    async def delivered() -> dict[str, Any] | None:
        stats = await sender.client.stats()
        return stats if _ip(stats)["deliveredToday"] == 5 else None

    evening = await wait_for(delivered, within=20, message="5 delivered on the evening's day")
    local_date = datetime.datetime.fromtimestamp(time.time() + offset[0], zoneinfo.ZoneInfo(ZONE))
    expected_day = (local_date.date() - datetime.date(1970, 1, 1)).days
    assert (evening["day"], _ip(evening)["sentToday"]) == (expected_day, 5)

    # Two hours later: 01:00 in Auckland, still the same UTC date.
    offset[0] += 2 * 3600
    after = await sender.client.stats()
    assert after["day"] == expected_day + 1
    assert _ip(after)["sentToday"] == 0
    days = {d["day"]: d for d in after["days"]}
    assert len(days) == 7 and max(days) == expected_day
    (ended,) = days[expected_day]["ips"]
    assert (ended["address"], ended["sent"], ended["delivered"]) == (IP, 5, 5)
    assert days[expected_day - 1]["ips"] == []  # listed although nothing was sent

    # A restart keeps every day's counters: today's count and the ended day's figures.
    await sender.stop()
    restarted = await sender_factory(
        cfg, pod="sender-1", clock_=clock.Clock(wall=lambda: time.time() + offset[0])
    )
    again = await restarted.client.stats()
    assert again["day"] == expected_day + 1
    assert {d["day"]: d["ips"] for d in again["days"]}[expected_day] == days[expected_day]["ips"]
