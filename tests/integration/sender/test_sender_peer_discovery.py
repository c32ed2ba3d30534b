"""Suppression across a pool whose pods find each other as in a cluster: through the A records
of the headless Service `<pool>-pods.<ns>.svc`, served here by the sandbox DNS server. While
the name does not resolve, the failure is counted and reported and nothing is lost: once the
records appear, peers catch up by pulling; later entries are pushed to every pod found. Mail
already queued for an address suppressed later is not attempted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    SenderProcess,
    base_config,
    lease,
    make_dkim_keys,
    make_dns_pool,
    start_all,
)
from sandbox_fixtures.waiting import eventually as _eventually

SERVICE = "test-pods.default.svc"
IPS = ["127.0.0.71", "127.0.0.72", "127.0.0.73"]


async def _suppressed(pod: SenderProcess, address: str) -> bool:
    status, body = await pod.client.request(
        "GET", f"/v1/suppressions/{address}", admin=True, token=ADMIN_TOKEN)
    return status == 200 and bool(body["suppressed"])


def _mail(to: str) -> dict[str, Any]:
    return {"from": "Shop <news@example.test>", "to": [to], "subject": "hi", "text": "b\n",
            "class": "transactional"}


async def test_pods_found_through_service_dns_share_suppressions_even_after_dns_was_down(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    pods = make_dns_pool(tmp_path, cfg, IPS, service=SERVICE)
    process_reaper.extend(pods)
    await start_all(pods)  # the Service's name does not resolve yet
    first, second, third = pods
    for pod in (first, second):
        await pod.client.assign([lease(pod.host)])
    gmail = provider_fleet["gmail"]
    gmail.behaviour.unknown_users.update({"gone@gmail.test", "left@gmail.test"})

    # Queued at the third pod (no lease yet) before anyone knows the address is bad.
    assert (await third.client.submit(_mail("gone@gmail.test")))[0] == 202
    # A 5xx at RCPT time at the first pod: a hard bounce, suppressed there.
    assert (await first.client.submit(_mail("gone@gmail.test")))[0] == 202
    await _eventually(lambda: _suppressed(first, "gone@gmail.test"), "the first pod suppresses")

    async def failing() -> bool:
        s = (await first.client.stats())["suppression"]
        return bool(s["peerDiscoveryFailures"] >= 2 and s["lastDiscoveryError"])

    await _eventually(failing, "discovery failures counted (retried each pull interval)")
    _, metrics = await first.client.request("GET", "/metrics")
    assert 'mailfleet_sender_peer_discovery_failures{reason="error"}' in metrics
    assert "test-pods.default.svc" in (await first.client.stats())["suppression"][
        "lastDiscoveryError"]
    assert not await _suppressed(second, "gone@gmail.test")

    # Cluster DNS starts answering: the others catch up by pulling.
    dns_server.set_records(SERVICE, "A", IPS, ttl=5)

    async def everywhere() -> bool:
        return all([await _suppressed(p, "gone@gmail.test") for p in (second, third)])

    await _eventually(everywhere, "every pod suppresses after discovery works")
    stats = (await second.client.stats())["suppression"]
    assert stats["peers"] == 2 and stats["lastDiscoveryError"] is None

    # Mail queued before the entry arrived is not attempted once the pod may send.
    await third.client.assign([lease(third.host)])

    async def counted() -> bool:
        return bool((await third.client.stats())["totals"]["suppressed"] == 1)

    await _eventually(counted, "the queued message ends `suppressed`")
    assert gmail.codes_for("gone@gmail.test") == [550]  # one attempt in the whole pool

    # A new hard bounce at another pod is pushed to every pod found now.
    pushes_before = (await second.client.stats())["suppression"]["replicationPushes"]
    assert (await second.client.submit(_mail("left@gmail.test")))[0] == 202

    async def pushed() -> bool:
        return all([await _suppressed(p, "left@gmail.test") for p in (first, third)])

    await _eventually(pushed, "the entry reaches both peers")
    after = (await second.client.stats())["suppression"]["replicationPushes"]
    assert after - pushes_before == 2  # one push per peer found
    for pod in (first, third):
        assert (await pod.client.submit(_mail("left@gmail.test")))[0] == 202
        assert (await pod.client.submit(_mail(f"fine-{pod.pod}@gmail.test")))[0] == 202
    await gmail.wait_until(
        lambda: sum(m.rcpt_to[0].startswith("fine-") for m in gmail.messages) == 2,
        what="the good mail")

    async def both_counted() -> bool:
        return all([(await p.client.stats())["totals"]["suppressed"] >= 1
                    for p in (first, third)])

    await _eventually(both_counted, "re-sends end `suppressed`")
    assert gmail.codes_for("left@gmail.test") == [550]
