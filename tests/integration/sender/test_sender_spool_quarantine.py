"""Corrupt databases on the spool volume (issue 16): the pod sets them aside, says so (log,
metric, /v1/stats), starts with empty ones and takes and delivers new mail. A lost suppression
list fails closed: bulk mail waits until a peer or an admin restores the list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    PEER_TOKEN,
    RunningSender,
    SenderFactory,
    base_config,
    lease,
    make_dkim_keys,
)
from sandbox_fixtures.waiting import eventually

GARBAGE = b"this is not a database, it is what a torn write left behind\n" * 200


def _corrupt(spool_dir: Path, *names: str) -> None:
    spool_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        _write(spool_dir / name, GARBAGE)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _mail(to: str, klass: str) -> dict[str, Any]:
    return {"from": "news@example.test", "to": [to], "subject": "s", "text": "t",
            "class": klass}


def _config(tmp: Path, dns: DNSServer, fleet: ProviderFleet, name: str) -> dict[str, Any]:
    keys = make_dkim_keys(tmp / f"keys-{name}", "example.test", dns)
    cfg = base_config(tmp / name, dns=dns, destination_port=fleet.port, keys=keys)
    return cfg


async def test_corrupt_spool_and_ledger_are_set_aside_and_the_pod_takes_new_mail(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet, "a")
    spool_dir = Path(cfg["spoolDir"])
    _corrupt(spool_dir, "spool.sqlite3", "reports.sqlite3", "suppression.sqlite3")
    _write(spool_dir / "spool.sqlite3-wal", b"torn wal")

    sender = await sender_factory(cfg)
    status, _ = await sender.client.request("GET", "/readyz", admin=True)
    assert status == 200
    stats = await sender.client.stats()
    aside = {q["database"]: q for q in stats["spool"]["quarantined"]}
    assert set(aside) == {"spool", "reports", "suppression"}
    for entry in aside.values():
        kept = Path(entry["path"])
        assert kept.parent == spool_dir and ".corrupt-" in kept.name
        assert _read(kept) == GARBAGE  # set aside whole, for recovery
        assert "not a database" in entry["reason"]
    assert _read(Path(aside["spool"]["path"] + "-wal")) == b"torn wal"
    _, metrics = await sender.client.request("GET", "/metrics", admin=True)
    assert 'mailfleet_sender_spool_quarantined_total{database="spool"} 1.0' in metrics
    assert "mailfleet_sender_suppression_resync_pending 1.0" in metrics

    # New mail is accepted and delivered; bulk mail waits for the lost suppression list.
    await sender.client.assign([lease("127.0.0.51")])
    assert (await sender.client.submit(_mail("t@gmail.test", "transactional")))[0] == 202
    assert (await sender.client.submit(_mail("m@gmail.test", "marketing")))[0] == 202
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(1)

    async def held() -> bool:
        s = await sender.client.stats()
        return bool(s["queues"]["marketing"]["held"] == 1 and s["suppression"]["resyncPending"])

    await eventually(held, "bulk mail held while the suppression list is lost")
    assert [m.rcpt_to for m in gmail.messages] == [("t@gmail.test",)]

    # A peer's token may replicate entries but not release the held mail on its own word.
    status, body = await sender.client.request(
        "POST", "/v1/suppressions/_resynced", admin=True, token=PEER_TOKEN)
    assert status == 403, body
    assert (await sender.client.stats())["suppression"]["resyncPending"]

    # No peer to pull it from: an admin restores the list (imports it) and says so.
    status, body = await sender.client.request(
        "POST", "/v1/suppressions/_resynced", admin=True, token=ADMIN_TOKEN)
    assert (status, body) == (200, {"resyncPending": False})
    await gmail.wait_for(2)
    assert sorted(r for m in gmail.messages for r in m.rcpt_to) == [
        "m@gmail.test", "t@gmail.test"]


async def test_a_lost_suppression_list_is_pulled_back_from_a_peer_before_bulk_mail_goes(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    healthy: RunningSender = await sender_factory(
        _config(tmp_path, dns_server, provider_fleet, "a"), pod="sender-a")
    status, _ = await healthy.client.request(
        "PUT", "/v1/suppressions/gone@gmail.test", admin=True, token=ADMIN_TOKEN,
        json={"reason": "complaint"})
    assert status == 201

    cfg = _config(tmp_path, dns_server, provider_fleet, "b")
    cfg["deliverability"] = {**cfg["deliverability"],
                             "peers": {"urls": [healthy.client.admin], "pullInterval": "200ms"}}
    _corrupt(Path(cfg["spoolDir"]), "suppression.sqlite3")
    restarted = await sender_factory(cfg, pod="sender-b")
    await restarted.client.assign([lease("127.0.0.52")])
    for to in ("gone@gmail.test", "ok@gmail.test"):
        assert (await restarted.client.submit(_mail(to, "marketing")))[0] == 202

    async def settled() -> bool:
        s = await restarted.client.stats()
        return bool(s["totals"]["suppressed"] == 1 and s["totals"]["delivered"] == 1)

    await eventually(settled, "the pulled list suppresses one, the other is delivered")
    gmail = provider_fleet["gmail"]
    assert [m.rcpt_to for m in gmail.messages] == [("ok@gmail.test",)]
    assert not (await restarted.client.stats())["suppression"]["resyncPending"]
