"""The demo's scenes as e2e tests on one shared sandbox world (tests/sandbox_fixtures/world.py).

Each test runs one scene of `mailfleet_sandbox.scenes` and asserts its checks, which read what
the simulated providers recorded (messages with peer IP and SPF/DKIM/DMARC verdicts, the
answers they gave, the complaints they sent), the sandbox DNS and the API objects: never the
senders' own word. Tests run in file order: the failure scenes follow the campaign.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from mailfleet_sandbox import event_scenes, scenes, transport_scenes
from sandbox_fixtures.world import E2EWorld

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def assert_scene(result: scenes.SceneResult) -> None:
    assert result.ok, f"{result.title}: " + "; ".join(result.failures())


async def test_fleet_comes_up_with_an_authenticated_domain(
        e2e_fleet: scenes.SceneResult) -> None:
    assert_scene(e2e_fleet)
    assert set(e2e_fleet.details["ips"]) == {"127.0.20.1", "127.0.20.2", "127.0.20.3"}


async def test_with_the_samples_applied_submission_without_a_credential_is_refused(
        e2e_world: E2EWorld, e2e_fleet: scenes.SceneResult) -> None:
    """Closed by default: the samples name no Secret, so the pods take mail only with the
    pool's generated credentials; the NetworkPolicy keeps admin to the operator."""
    world = e2e_world.world
    pod = world.ready_pods()[0]
    host = pod["status"]["podIP"]
    reader, writer = await asyncio.open_connection(host, world.pool_smtp_port())
    try:
        await reader.readline()
        for command in (b"EHLO app.example.test", b"MAIL FROM:<news@example.com>"):
            writer.write(command + b"\r\n")
            while (line := await asyncio.wait_for(reader.readline(), 10))[3:4] == b"-":
                pass
        assert line.startswith(b"530 5.7.0"), line
    finally:
        writer.close()
    url = f"http://{host}:{world.pool_http_port()}/v1/messages"
    message = {"from": "news@example.com", "to": ["x@gmail.test"], "subject": "s", "text": "t"}
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer not-the-key"}):
            async with session.post(url, json=message, headers=headers) as resp:
                assert resp.status == 401
    assert world.pool_api_key()  # what the demo's application uses
    policy = world.api.get("networking.k8s.io/v1", "NetworkPolicy", world.settings.pool,
                           world.settings.namespace)
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in policy["spec"]["ingress"]]
    submission = sorted([world.pool_smtp_port(), world.pool_http_port()])
    assert ports == [submission, [8081], [2525, 8082]]
    assert "from" not in policy["spec"]["ingress"][2]  # public ports: anyone


async def test_campaign_mail_is_delivered_or_bounced_never_lost(
        e2e_campaign: scenes.SceneResult) -> None:
    assert_scene(e2e_campaign)
    details = e2e_campaign.details
    assert details["delivered"] + details["bounced"] == details["accepted"]


async def test_every_delivered_message_passes_dkim_spf_dmarc_at_the_receiver(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    delivered = e2e_world.world.fleet.messages
    assert delivered
    failing = [(scenes.message_id_of(m), m.verdicts) for m in delivered
               if not all(m.verdicts.get(k) == "pass" for k in ("dkim", "spf", "dmarc"))]
    assert not failing, failing[:3]


async def test_no_ip_exceeds_its_warmup_quota_on_any_day(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    result = await scenes.warmup_quotas(e2e_world.world, e2e_world.ledger, min_days=2,
                                        within=30)
    assert_scene(result)


async def test_killed_sender_fails_over_within_the_pool_bound(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    result = await scenes.sender_killed(e2e_world.world, e2e_world.ledger, within=20)
    assert_scene(result)


async def test_failed_node_ip_moves_and_the_old_pod_is_fenced(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    result = await scenes.node_failed(e2e_world.world, e2e_world.ledger, within=25)
    assert_scene(result)


async def test_blocklisted_ip_is_drained_then_returns(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    result = await scenes.blocklisted(e2e_world.world, e2e_world.ledger, within=20)
    assert_scene(result)


async def test_dkim_rotation_new_selector_and_overlap_verify(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    result = await scenes.dkim_rotation(e2e_world.world, e2e_world.ledger, within=30)
    assert_scene(result)


async def test_bounced_and_complained_addresses_are_not_attempted_again(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    result = await scenes.suppression(e2e_world.world, e2e_world.ledger, within=20)
    assert_scene(result)


async def test_a_cilium_mode_pool_sends_from_its_egress_ip_through_the_gateway(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    result = await scenes.gateway_mode(e2e_world.world, e2e_world.ledger, within=45)
    assert result.details["attachments"][scenes.GATEWAY_POOL].startswith("Cilium")
    if e2e_world.world.egress_gateway is None:
        assert result.outcome == "skipped" and result.skipped, result
        pytest.skip(result.skipped)
    assert_scene(result)
    assert result.outcome == "passed"
    assert result.details["peers"] == {scenes.GATEWAY_IP[0]: 8}
    assert result.details["attachments"][e2e_world.world.settings.pool] == "Bind"


async def test_enforce_domain_with_a_bad_certificate_is_deferred_then_delivered_over_tls(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    """MTA-STS enforce in the sandbox: the receiver saw the senders give up on an expired
    certificate (nothing delivered, in clear or otherwise), then every message over TLS once
    the certificate was fixed; mail to the DNSSEC-signed DANE domain went over TLS too."""
    result = await transport_scenes.mta_sts_enforce(e2e_world.world, e2e_world.ledger,
                                                    within=30)
    assert_scene(result)
    assert result.details["mta_sts_deferred"] == 4
    assert result.details["dane"]["delivered"] == 2
    # TLS-RPT sending is not on main yet (branch i19-rpt): details["tlsrpt_reports"] is
    # reported in summary.json but not asserted until it is.


async def test_events_reach_the_webhook_after_its_outage_and_engagement_is_recorded(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    """Issue 20's "Done when": the receiver down while a tagged campaign is delivered, opened
    and clicked; once it is back, every event the providers' records and the simulated
    readers imply arrives (signed), opens and clicks as simulated, proxy opens as machine."""
    result = await event_scenes.events_and_engagement(e2e_world.world, e2e_world.ledger,
                                                      per_provider=8, within=120)
    assert_scene(result)
    events = result.details["events"]
    assert events["webhook_missing"] == 0
    assert events["webhook_events"].get("delivered", 0) >= 32
    assert result.details["outbox_at_outage_end"]["pending"] >= 64
    assert events["machine_opens"] > 0
    assert set(result.details["kpis_by_campaign"]) >= set(event_scenes.CAMPAIGNS)


async def test_no_ip_exceeded_its_warmup_quota_after_the_failure_scenes(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    """Again over every day seen, after failovers, a healed pod, blocklisting and hand-offs;
    a day whose quota was 0 must have carried nothing."""
    result = await scenes.warmup_held(e2e_world.world, e2e_world.ledger)
    assert_scene(result)
    assert result.details["per_ip_day"]


async def test_final_ledger_nothing_lost(
        e2e_world: E2EWorld, e2e_campaign: scenes.SceneResult) -> None:
    result = await scenes.accounting(e2e_world.world, e2e_world.ledger, within=20)
    assert_scene(result)
    assert result.details["lost"] == 0
    assert result.details["tls_rate"] == 1.0  # every provider of the sandbox offers STARTTLS
