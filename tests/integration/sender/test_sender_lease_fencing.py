"""Fenced leases over loopback, judged at the receiver: a lease lasts its TTL on the sender's
monotonic clock whatever its wall clock says; an SMTP transaction never outlives its lease
(cut at the deadline minus `leaseMargin`, or at once on revocation; a renewal extends it) and
the message it carried is requeued, not failed, and delivered once the IP is granted again;
with `bindSource: false` the receiver sees the pod's own IP and the lease's HELO name."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from mailfleet_sender import clock
from sandbox_fixtures.node_agent import eventually
from sandbox_fixtures.sender import (
    RunningSender,
    SenderFactory,
    base_config,
    inject,
    lease,
    make_dkim_keys,
)


async def _lease_status(sender: RunningSender, address: str) -> dict[str, Any]:
    status, body = await sender.client.request(
        "GET", "/v1/assignment", admin=True, token="admin-token-for-tests"
    )
    assert status == 200, body
    return next(item for item in body["leases"] if item["address"] == address)


async def _ip_stats(sender: RunningSender, address: str) -> dict[str, Any]:
    stats = await sender.client.stats()
    return next((i for i in stats["ips"] if i["address"] == address), {"sentToday": 0})


# --------------------------------------------------------------------------- (a) clock skew


@pytest.mark.parametrize("offset", [3600.0, -3600.0],
                         ids=["wall clock an hour ahead", "wall clock an hour behind"])
async def test_a_lease_ends_after_its_ttl_on_the_monotonic_clock_whatever_the_wall_clock(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, offset: float,
) -> None:
    ip, ttl = "127.0.0.81", 2.0
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["delivery"]["leaseMargin"] = "500ms"  # the tolerance at the receiver below
    cfg["retry"]["maxAge"] = "1d"
    cfg["throttles"] = {"providers": [
        {"name": "gmail", "mxPatterns": ["*.google.test"], "maxConnections": 1}]}
    gmail = provider_fleet["gmail"]
    gmail.behaviour.rcpt_delay = 0.05  # a steady trickle: mail is still queued at expiry
    skewed = clock.Clock(wall=lambda: time.time() + offset)
    sender = await sender_factory(cfg, clock_=skewed)
    await inject(sender, 300, to=lambda i: f"skew{i}@gmail.test", body_size=100)

    await sender.client.assign([lease(ip, ttl=ttl, epoch=1)])
    granted_by = time.time()  # the sender received the lease before this (real wall time)

    async def expired_and_settled() -> bool:
        held = await _lease_status(sender, ip)
        return not held["valid"] and not sender.service.engine.inflight_by_ip()

    await eventually(expired_and_settled, within=20)
    held = await _lease_status(sender, ip)
    assert held["expiresInSeconds"] == 0 and held["epoch"] == 1

    arrivals = [m.received_at for m in gmail.messages if m.peer_ip == ip]
    assert arrivals, "nothing was delivered while the lease was valid"
    # Nothing arrived after the lease ran out (the margin is the slack for the receiver).
    assert max(arrivals) <= granted_by + ttl, (max(arrivals) - granted_by)
    stats = await sender.client.stats()
    delivered = stats["totals"]["delivered"]
    assert stats["queues"]["marketing"]["depth"] == 300 - delivered  # waiting, not lost
    # The attempt cut off at the deadline may have had its DATA accepted without the sender
    # reading the answer: requeued (a possible duplicate later), never lost.
    assert delivered <= len(arrivals) <= delivered + 1
    assert stats["totals"]["deferred"] == 0  # the cut-off attempt is no delivery failure


async def _egress(sender: RunningSender, address: str, epoch: int) -> dict[str, Any]:
    """The IP's egress counters under the lease of `epoch` (`/v1/stats` `ips[].egress`)."""
    stats = await sender.client.stats()
    ip = next((i for i in stats["ips"] if i["address"] == address), {"egress": []})
    return next((e for e in ip["egress"] if e["epoch"] == epoch),
                {"connections": 0, "transactions": 0, "messages": 0, "fenced": 0})


async def test_the_pods_own_egress_counters_stop_when_its_lease_ends_and_move_on_a_new_epoch(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    """What the failover scenes read from a healed pod (`/v1/stats` `ips[].egress`): counted
    on the network side of the fence, so once the lease ended (and a late renewal of it is
    refused) they do not move however much mail waits; a new epoch moves them again."""
    ip, ttl = "127.0.0.87", 2.0
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["delivery"]["leaseMargin"] = "500ms"
    cfg["retry"]["maxAge"] = "1d"
    cfg["throttles"] = {"providers": [
        {"name": "gmail", "mxPatterns": ["*.google.test"], "maxConnections": 1}]}
    gmail = provider_fleet["gmail"]
    gmail.behaviour.rcpt_delay = 0.05  # a steady trickle: mail is still queued at expiry
    sender = await sender_factory(cfg)
    await inject(sender, 300, to=lambda i: f"fence{i}@gmail.test", body_size=100)
    await sender.client.assign([lease(ip, ttl=ttl, epoch=1, lease_id="first")], generation=1)

    async def expired_and_settled() -> bool:
        held = await _lease_status(sender, ip)
        return not held["valid"] and not sender.service.engine.inflight_by_ip()

    await eventually(expired_and_settled, within=20)
    ended = await _egress(sender, ip, 1)
    arrived = sum(1 for m in gmail.messages if m.peer_ip == ip)
    assert arrived > 0 and ended["connections"] >= 1
    # Every transaction begun reached the receiver, but for the one cut at the deadline;
    # every message written did, but for one whose answer the cut left unread.
    assert arrived <= ended["transactions"] <= arrived + 1, (ended, arrived)
    assert arrived <= ended["messages"] <= arrived + 1, (ended, arrived)

    # A renewal of the ended lease delivered late (queued while the pod was frozen, say) is
    # not taken, and mail is waiting: still no connection and no transaction from the IP.
    answer = await sender.client.assign([lease(ip, ttl=ttl, epoch=1, lease_id="first")],
                                        generation=2)
    assert not any(s["valid"] for s in answer["leases"] if s["address"] == ip), answer
    await inject(sender, 5, to=lambda i: f"late{i}@gmail.test", body_size=100)
    await asyncio.sleep(1.0)  # an observation window for what must not happen
    assert await _egress(sender, ip, 1) == ended
    assert sum(1 for m in gmail.messages if m.peer_ip == ip) == arrived

    await sender.client.assign([lease(ip, ttl=120, epoch=2, lease_id="second")], generation=3)
    await eventually(lambda: sum(1 for m in gmail.messages if m.peer_ip == ip) > arrived + 3,
                     within=20)
    again = await _egress(sender, ip, 2)
    assert again["transactions"] > 0 and again["messages"] > 0
    assert (datetime.datetime.fromisoformat(again["lastTransactionAt"])
            > datetime.datetime.fromisoformat(ended["lastTransactionAt"]))
    assert await _egress(sender, ip, 1) == ended  # the old lease's activity stays apart
    await sender.client.assign([], generation=4)


class ThreadedSink:
    """An MX host on a thread of its own (aiosmtpd's Controller), so that it answers while
    the sender's event loop stands still; it answers RCPT after `rcpt_delay`."""

    def __init__(self, rcpt_delay: float) -> None:
        self.rcpt_delay = rcpt_delay
        self.rcpt_seen = threading.Event()
        self.messages: list[str] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        self.rcpt_seen.set()
        await asyncio.sleep(self.rcpt_delay)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.extend(envelope.rcpt_tos)
        return "250 2.0.0 OK"


async def test_a_transaction_whose_lease_ran_out_while_the_process_stood_still_writes_no_more(
    tmp_path: Path, dns_server: DNSServer, sender_factory: SenderFactory,
) -> None:
    """A frozen pod (SIGSTOP, a stalled VM) resumes with its lease long over and the
    receiver's answer to a command already waiting: the lease timeout and that answer are
    due together. Whatever order the event loop takes them in, the transaction writes
    nothing more (no DATA, no message): the lease is checked again before each write."""
    ip, ttl = "127.0.0.88", 3.0
    sink = ThreadedSink(rcpt_delay=1.0)
    sink.controller.start()
    try:
        dns_server.set_records("stop.test", "MX", ["10 mx.stop.test."])
        dns_server.set_records("mx.stop.test", "A", ["127.0.0.1"])
        keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
        cfg = base_config(tmp_path, dns=dns_server, destination_port=sink.port, keys=keys)
        cfg["delivery"].update(leaseMargin="500ms", commandTimeout="60s")
        sender = await sender_factory(cfg)
        status, body = await sender.client.submit(
            {"from": "news@example.test", "to": ["held@stop.test"], "subject": "held",
             "text": "body\n", "class": "transactional"})
        assert status == 202, body
        await sender.client.assign([lease(ip, ttl=ttl, epoch=1)])
        assert await asyncio.to_thread(sink.rcpt_seen.wait, 15)
        # The failure caused: the whole sender stands still past its lease (this loop is
        # its loop) while the receiver answers RCPT.
        time.sleep(ttl + 1.0)  # noqa: ASYNC251 - blocking the loop is the failure caused
        await eventually(lambda: not sender.service.engine.inflight_by_ip(), within=10)
        egress = await _egress(sender, ip, 1)
        assert sink.messages == []
        assert egress["transactions"] == 1 and egress["messages"] == 0, egress
        stats = await sender.client.stats()
        assert stats["queues"]["transactional"]["depth"] == 1  # requeued, not lost
    finally:
        sink.controller.stop()


# --------------------------------------------------------------------------- (b) deadlines


@dataclasses.dataclass(eq=False)
class StallingSink:
    """An MX host that can hold a transaction at RCPT or after the end of DATA (before its
    answer) until `release` is set or the client goes away; records accepted messages and
    when connections end."""

    host: str = "127.0.0.1"
    stall_at: str | None = None
    """"rcpt", "data" or None."""
    port: int = 0
    messages: list[tuple[str, str, tuple[str, ...]]] = dataclasses.field(default_factory=list)
    """(peer IP, HELO, recipients) of every accepted message."""
    stalls: int = 0
    closed_at: list[float] = dataclasses.field(default_factory=list)
    """time.monotonic() of every connection's end."""
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        sink = self

        class _SMTP(SMTP):  # type: ignore[misc]
            def connection_lost(self, error: Exception | None) -> None:
                sink.closed_at.append(time.monotonic())
                super().connection_lost(error)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _SMTP(self, hostname="mx.stall.test", loop=loop), self.host, 0
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _hold(self) -> None:
        self.stalls += 1
        await self.release.wait()  # or cancelled by aiosmtpd when the sender disconnects

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.stall_at == "rcpt":
            await self._hold()
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.stall_at == "data":
            await self._hold()
        peer: Any = session.peer
        self.messages.append((str(peer[0]), session.host_name or "", tuple(envelope.rcpt_tos)))
        return "250 2.0.0 OK"


@pytest.fixture
async def stalling_sink(dns_server: DNSServer) -> Any:
    sink = StallingSink()
    await sink.start()
    dns_server.set_records("stall.test", "MX", ["10 mx.stall.test."])
    dns_server.set_records("mx.stall.test", "A", [sink.host])
    yield sink
    await sink.stop()


async def _stalling_sender(
    tmp_path: Path, dns_server: DNSServer, sink: StallingSink, factory: SenderFactory
) -> RunningSender:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=sink.port, keys=keys)
    # A command timeout far beyond the lease: only the lease can end the stalled attempt.
    cfg["delivery"].update(commandTimeout="60s", leaseMargin="1s")
    sender = await factory(cfg)
    status, body = await sender.client.submit(
        {"from": "news@example.test", "to": ["held@stall.test"], "subject": "held",
         "text": "body\n", "class": "transactional"}
    )
    assert status == 202, body
    return sender


@pytest.mark.parametrize(
    ("stall_at", "ending", "sent_today_after_abort"),
    [("data", "expiry", 1), ("rcpt", "expiry", 0), ("data", "revocation", 1)],
    ids=["held after the end of DATA, cut at the deadline: the reservation stands",
         "held at RCPT, cut at the deadline: the reservation is given back",
         "held after the end of DATA, cut at once when the IP is revoked"],
)
async def test_a_transaction_never_outlives_its_lease_and_its_message_is_requeued(
    tmp_path: Path, dns_server: DNSServer, stalling_sink: StallingSink,
    sender_factory: SenderFactory, stall_at: str, ending: str, sent_today_after_abort: int,
) -> None:
    ip, ttl = "127.0.0.82", 3.0 if ending == "expiry" else 120.0
    stalling_sink.stall_at = stall_at
    sender = await _stalling_sender(tmp_path, dns_server, stalling_sink, sender_factory)
    await sender.client.assign([lease(ip, ttl=ttl, epoch=2)], generation=1)
    granted_by = time.monotonic()
    await eventually(lambda: stalling_sink.stalls == 1, within=15)
    if ending == "revocation":
        await sender.client.assign([], generation=2)
        revoked_by = time.monotonic()

    await eventually(lambda: stalling_sink.closed_at, within=15)
    if ending == "expiry":
        assert stalling_sink.closed_at[0] < granted_by + ttl  # before the lease's end
    else:  # long before the deadline (and the command timeout): cut by the revocation
        assert revoked_by <= stalling_sink.closed_at[0] < granted_by + 15
    await eventually(lambda: not sender.service.engine.inflight_by_ip(), within=10)
    assert stalling_sink.messages == []
    stats = await sender.client.stats()
    assert stats["queues"]["transactional"]["depth"] == 1  # requeued, not lost
    assert stats["totals"]["deferred"] == 0 and stats["totals"]["bounced"] == 0  # not failed
    assert (await _ip_stats(sender, ip))["sentToday"] == sent_today_after_abort
    if ending == "expiry":
        await eventually(lambda: _invalid(sender, ip), within=15)

    stalling_sink.stall_at = None
    # A new grant after the lease ended carries a new epoch (the old one never comes back).
    await sender.client.assign([lease(ip, ttl=120, epoch=3)], generation=3)
    await eventually(lambda: stalling_sink.messages, within=15)
    assert stalling_sink.messages == [(ip, f"mta-{ip.replace('.', '-')}.example.test",
                                       ("held@stall.test",))]
    await eventually(lambda: not sender.service.engine.inflight_by_ip(), within=10)
    stats = await sender.client.stats()
    assert stats["totals"]["delivered"] == 1 and stats["totals"]["deferred"] == 0
    assert (await _ip_stats(sender, ip))["sentToday"] == sent_today_after_abort + 1


async def _invalid(sender: RunningSender, ip: str) -> bool:
    return not (await _lease_status(sender, ip))["valid"]


async def test_a_renewal_extends_the_deadline_of_a_running_transaction(
    tmp_path: Path, dns_server: DNSServer, stalling_sink: StallingSink,
    sender_factory: SenderFactory,
) -> None:
    ip, ttl = "127.0.0.83", 3.0
    stalling_sink.stall_at = "data"
    sender = await _stalling_sender(tmp_path, dns_server, stalling_sink, sender_factory)
    generation = 1
    await sender.client.assign([lease(ip, ttl=ttl, epoch=0, lease_id="g")],
                               generation=generation)
    first_lease_end = time.monotonic() + ttl
    await eventually(lambda: stalling_sink.stalls == 1, within=15)

    async def renew() -> None:
        nonlocal generation
        while True:
            generation += 1
            await sender.client.assign([lease(ip, ttl=ttl, epoch=0, lease_id="g")],
                                       generation=generation)
            await asyncio.sleep(0.3)  # the renewal period of a well-behaved operator

    renewing = asyncio.create_task(renew())
    try:
        # The condition is time itself: past the first lease's end, when the attempt would
        # have been cut without the renewals.
        await asyncio.sleep(max(0.0, first_lease_end - time.monotonic()) + 0.5)
        assert stalling_sink.closed_at == []  # the same connection, still held in DATA
        stalling_sink.release.set()
        await eventually(lambda: stalling_sink.messages, within=10)
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
    assert stalling_sink.stalls == 1 and len(stalling_sink.messages) == 1
    await eventually(lambda: not sender.service.engine.inflight_by_ip(), within=10)
    stats = await sender.client.stats()
    assert stats["totals"]["delivered"] == 1 and stats["totals"]["deferred"] == 0
    assert (await _ip_stats(sender, ip))["sentToday"] == 1


# --------------------------------------------------------------------------- (c) no-bind


@pytest.mark.parametrize(
    ("pod_ip", "peer"),
    [("127.0.0.84", "127.0.0.84"), (None, "127.0.0.1")],
    ids=["the pod's own IP is bound when POD_IP is known",
         "nothing is bound without POD_IP (the kernel picks)"],
)
async def test_without_binding_the_receiver_sees_the_pod_ip_and_the_lease_helo_name(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory, pod_ip: str | None, peer: str,
) -> None:
    leased = "127.0.0.85"  # carried by the CNI's source NAT in a cluster, never bound here
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["delivery"]["bindSource"] = False
    sender = await sender_factory(cfg, pod_ip=pod_ip)
    await sender.client.assign([lease(leased, helo="mta85.example.test", quota=5, epoch=3)])
    status, body = await sender.client.submit(
        {"from": "news@example.test", "to": ["nat@gmail.test"], "subject": "nat",
         "text": "body\n", "class": "transactional"}
    )
    assert status == 202, body
    [message] = await provider_fleet["gmail"].wait_for(1)
    assert message.peer_ip == peer
    assert message.helo == "mta85.example.test"
    # Quotas and per-IP counts stay keyed by the leased IP.
    await eventually(lambda: not sender.service.engine.inflight_by_ip(), within=10)
    ip = await _ip_stats(sender, leased)
    assert ip["sentToday"] == 1 and ip["quotaRemaining"] == 4
    assert await _ip_stats(sender, peer) == {"sentToday": 0}


async def test_an_older_epoch_is_answered_409_stale_epoch_and_changes_nothing(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    ip = "127.0.0.86"
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    sender = await sender_factory(cfg)
    await sender.client.assign([lease(ip, epoch=5)], generation=1)
    await sender.client.assign([], generation=2)  # revoked; the epoch is remembered

    status, body = await sender.client.request(
        "PUT", "/v1/assignment", admin=True, token="admin-token-for-tests",
        json={"generation": 3, "leases": [lease(ip, epoch=4)]},
    )
    assert status == 409
    assert body["code"] == "staleEpoch" and "127.0.0.86 has epoch 4" in body["error"]
    held = await sender.client.request("GET", "/v1/assignment", admin=True,
                                       token="admin-token-for-tests")
    assert held[1]["generation"] == 2 and held[1]["leases"] == []
    granted = await sender.client.assign([lease(ip, epoch=6)], generation=3)
    assert [(s["address"], s["epoch"], s["valid"]) for s in granted["leases"]] == [(ip, 6, True)]
