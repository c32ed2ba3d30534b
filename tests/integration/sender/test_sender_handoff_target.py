"""A hand-off to another pool's pods (`POST /v1/drain` with a `target`): what a deleted pool
with `spec.deletion.handoffTo` asks of its pods. Real sender processes on loopback: the
leaving pod's queue reaches the other pool's pod, authenticated with that pool's API key
(not its own), and is delivered from there exactly once."""

from __future__ import annotations

from pathlib import Path

from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    API_KEY,
    SenderProcess,
    base_config,
    lease,
    make_dkim_keys,
    make_pool,
    start_all,
)
from sandbox_fixtures.waiting import eventually

OTHER_KEY = "the-other-pools-api-key"


async def test_a_hand_off_with_a_target_moves_the_queue_to_another_pools_pods(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg_a = base_config(tmp_path / "a", dns=dns_server, destination_port=provider_fleet.port,
                        keys=keys)
    cfg_a["deliverability"] = {**cfg_a["deliverability"], "handoff": {"retryEvery": "200ms"}}
    cfg_b = base_config(tmp_path / "b", dns=dns_server, destination_port=provider_fleet.port,
                        keys=keys)
    (tmp_path / "b" / "secrets" / "api-key").write_text(OTHER_KEY + "\n")
    [leaving] = make_pool(tmp_path / "a", cfg_a, ["127.0.0.57"], prefix="a")
    [receiving] = make_pool(tmp_path / "b", cfg_b, ["127.0.0.58"], prefix="b")
    process_reaper.extend([leaving, receiving])
    await start_all([leaving, receiving])
    total = 40
    subjects = [f"h{i:03d}" for i in range(total)]
    for i, subject in enumerate(subjects):  # no lease: the mail waits in the queue
        status, _ = await leaving.client.submit({
            "from": "Shop <news@example.test>", "to": [f"t{i}@gmail.test"],
            "subject": subject, "text": "body\n", "class": "transactional",
        })
        assert status == 202
    # The other pool does not take this pool's key: the hand-off must use the target's.
    status, _ = await receiving.client.submit({"from": "news@example.test",
                                               "to": ["x@gmail.test"], "subject": "x",
                                               "text": "x"}, key=API_KEY)
    assert status == 401

    status, body = await leaving.client.request(
        "POST", "/v1/drain", admin=True, token=ADMIN_TOKEN,
        json={"handoff": True, "target": {"urls": [receiving.url], "apiKey": OTHER_KEY}},
    )
    assert status == 202, body

    async def done() -> bool:
        stats = await leaving.client.stats()
        return bool(stats["handoff"]["state"] == "done")

    await eventually(done, "hand-off complete")
    stats = await leaving.client.stats()
    assert stats["handoff"]["handedOff"] == total
    assert sum(q["depth"] + q["held"] for q in stats["queues"].values()) == 0
    assert receiving.pod_ip is not None
    await receiving.client.assign([lease(receiving.pod_ip)])
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(total, timeout=30)
    assert sorted(m.header("Subject") or "" for m in gmail.messages) == subjects
    assert {m.peer_ip for m in gmail.messages} == {receiving.pod_ip}


async def test_a_drain_request_that_does_not_parse_changes_nothing(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    [pod] = make_pool(tmp_path, cfg, ["127.0.0.59"], prefix="c")
    process_reaper.append(pod)
    await start_all([pod])
    status, _ = await pod.client.request(
        "POST", "/v1/drain", admin=True, token=ADMIN_TOKEN,
        json={"handoff": True, "target": {"urls": []}},
    )
    assert status == 400
    assert (await pod.client.stats())["draining"] is False
