"""A queue larger than the window (`spoolWindow`): the engine holds at most the window in
memory and pages the rest in from the spool, yet every message is delivered once, a higher
class still goes first, stats report the spool's true depth, and a restart or a hand-off
covers the rows never loaded."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

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
from sandbox_fixtures.waiting import eventually as _eventually

WINDOW = 40


def _config(tmp: Path, dns: DNSServer, fleet: ProviderFleet, rate: int = 100) -> dict[str, Any]:
    keys = make_dkim_keys(tmp / "keys", "example.test", dns)
    cfg = base_config(tmp, dns=dns, destination_port=fleet.port, keys=keys)
    cfg["spoolWindow"] = WINDOW
    cfg["throttles"] = {"providers": [
        {"name": "gmail", "mxPatterns": ["*.google.test"], "messagesPerSecond": rate,
         "maxConnections": 2}]}
    return cfg


class WindowWatch:
    """Samples the engine's in-memory count while the test runs (the bound must always hold)."""

    def __init__(self, sender: RunningSender) -> None:
        self.sender = sender
        self.most = 0
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            self.most = max(self.most, self.sender.service.engine.pending_count())
            await asyncio.sleep(0.005)

    async def stop(self) -> int:
        self._task.cancel()
        return self.most


def _recipients(fleet: ProviderFleet) -> list[str]:
    return [m.rcpt_to[0] for m in fleet["gmail"].messages]


async def test_a_backlog_beyond_the_window_is_all_delivered_once_and_a_higher_class_goes_first(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await sender_factory(_config(tmp_path, dns_server, provider_fleet))
    watch = WindowWatch(sender)
    total = 6 * WINDOW
    await inject(sender, total, to=lambda i: f"m{i}@gmail.test", body_size=50)
    assert sender.service.engine.pending_count() <= WINDOW

    async def counted() -> bool:  # the spool's own count, not the window
        return bool((await sender.client.stats())["queues"]["marketing"]["depth"] == total)

    await _eventually(counted, "stats to report the whole queue")

    await sender.client.assign([lease("127.0.0.71")])
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(WINDOW // 2, timeout=20)  # marketing flows; most of it is on disk
    status, _ = await sender.client.submit({
        "from": "shop@example.test", "to": ["buyer@gmail.test"], "subject": "receipt",
        "text": "paid", "class": "transactional"})
    assert status == 202
    await gmail.wait_until(lambda: "buyer@gmail.test" in _recipients(provider_fleet),
                           timeout=20)
    marketing_before = _recipients(provider_fleet).index("buyer@gmail.test")
    assert marketing_before < total - 2 * WINDOW  # ahead of the backlog still on disk

    await gmail.wait_for(total + 1, timeout=60)
    got = collections.Counter(_recipients(provider_fleet))
    assert set(got) == {f"m{i}@gmail.test" for i in range(total)} | {"buyer@gmail.test"}
    assert max(got.values()) == 1  # no page read a row twice

    async def empty() -> bool:
        stats = await sender.client.stats()
        return all(q["depth"] == 0 for q in stats["queues"].values())

    await _eventually(empty, "the queue depth to reach 0")
    assert await watch.stop() <= WINDOW


async def test_a_restart_with_more_than_the_window_queued_delivers_everything(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet, rate=200)
    first = await sender_factory(cfg)
    total = 5 * WINDOW
    await inject(first, total, to=lambda i: f"r{i}@gmail.test", body_size=50)  # no lease yet
    await first.stop()

    again = await sender_factory(cfg)
    assert again.service.engine.pending_count() <= WINDOW  # start-up read one page
    assert (await again.client.stats())["queues"]["marketing"]["depth"] == total
    watch = WindowWatch(again)
    await again.client.assign([lease("127.0.0.72")])
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(total, timeout=60)
    got = collections.Counter(_recipients(provider_fleet))
    assert set(got) == {f"r{i}@gmail.test" for i in range(total)}
    assert max(got.values()) == 1
    assert await watch.stop() <= WINDOW


async def test_a_hand_off_moves_rows_that_were_never_in_memory(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    leaving = await sender_factory(_config(tmp_path / "a", dns_server, provider_fleet),
                                   pod="sender-a")
    receiving = await sender_factory(
        _config(tmp_path / "b", dns_server, provider_fleet, rate=200), pod="sender-b")
    total = 4 * WINDOW
    await inject(leaving, total, to=lambda i: f"h{i}@gmail.test", body_size=50)  # no lease
    assert leaving.service.engine.pending_count() <= WINDOW

    status, body = await leaving.client.request(
        "POST", "/v1/drain", admin=True, token=ADMIN_TOKEN,
        json={"handoff": True, "target": {"urls": [receiving.client.base], "apiKey": API_KEY}},
    )
    assert status == 202, body

    async def done() -> bool:
        return bool((await leaving.client.stats())["handoff"]["state"] == "done")

    await _eventually(done, "the hand-off to finish", deadline=60)
    stats = await leaving.client.stats()
    assert stats["handoff"]["handedOff"] == total
    assert leaving.service.spool.count_pending() == 0
    await receiving.client.assign([lease("127.0.0.73")])
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(total, timeout=60)
    got = collections.Counter(_recipients(provider_fleet))
    assert set(got) == {f"h{i}@gmail.test" for i in range(total)}
    assert max(got.values()) == 1


async def test_deliveries_deferred_while_paging_leave_the_window_and_come_back_when_due(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    sender = await sender_factory(_config(tmp_path, dns_server, provider_fleet, rate=200))
    watch = WindowWatch(sender)
    total = 4 * WINDOW
    full = {f"d{i}@gmail.test" for i in range(0, total, 4)}
    gmail = provider_fleet["gmail"]
    gmail.behaviour.full_mailboxes.update(full)  # 452 4.2.2: retried after 1 s
    await inject(sender, total, to=lambda i: f"d{i}@gmail.test", body_size=50)
    await sender.client.assign([lease("127.0.0.74")])

    async def deferred() -> bool:
        return sender.service.engine.totals["deferred"] >= len(full)

    await _eventually(deferred, "every full mailbox to be deferred once")
    gmail.behaviour.full_mailboxes.clear()
    await gmail.wait_for(total, timeout=60)
    got = collections.Counter(_recipients(provider_fleet))
    assert set(got) == {f"d{i}@gmail.test" for i in range(total)}
    assert max(got.values()) == 1
    assert await watch.stop() <= WINDOW
