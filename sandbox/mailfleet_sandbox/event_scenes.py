"""The demo's events and engagement scene (issue 20, item 4): the pool sends its events to the
sandbox's webhook receiver and tracks opens and clicks of marketing mail; the receiver is down
while a tagged campaign is delivered, opened and clicked; once it is back, the outbox must
have redelivered every event the providers' records and the readers imply.

Everything checked comes from outside the senders: the providers' records (which copies they
accepted), the engagement simulators (which pixels and links got their answer) and what the
webhook receiver got, verified by signature. The pods' own figures (/v1/stats "kpis") only
feed the report's KPI table.

Run after the failure scenes and before `accounting` (`scenes` says why order matters):
turning events and tracking on mounts new Secrets, so the pool's pods roll.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from typing import Any

import aiohttp

from mailfleet_sandbox import engagement, event_samples, report, scenes
from mailfleet_sandbox.scenes import FROM, Ledger, SceneResult, Sent, _scene, message_id_of
from mailfleet_sandbox.world import API_VERSION, SandboxWorld, condition, pod_ready, wait_until

JSON = dict[str, Any]
TRACK_HOST = "track.example.test"
CAMPAIGNS = ("spring", "summer")
PUBLIC_PORT = 8082
ADMIN_PORT = 8081
SEED = "mailfleet-demo"
SHARES = {  # provider -> (open share, share of opens by a prefetching proxy, click share)
    "gmail": (0.8, 0.8, 0.3),
    "outlook": (0.5, 0.0, 0.3),
    "yahoo": (0.5, 0.0, 0.2),
    "orange": (0.4, 0.0, 0.2),
}
"""Most opens at Gmail come through its image proxy: machine opens to tell apart."""
DOMAINS = {"gmail": "gmail.test", "outlook": "outlook.test", "yahoo": "yahoo.test",
           "orange": "orange.test"}


def html_body(rcpt: str, campaign: str, unsubscribe: str) -> str:
    """A marketing page with two links to track and an unsubscribe link that stays as is."""
    return (f"<html><body><p>Hello {rcpt},</p>"
            f"<p>Our <a href=\"https://shop.example.test/{campaign}/offers\">{campaign} offers"
            "</a> and the <a href=\"https://shop.example.test/catalogue?c=1\">catalogue</a>."
            f"</p><p><a href=\"{unsubscribe}\">Unsubscribe</a></p></body></html>")


def tracking_patch(pool: JSON) -> JSON:
    """spec.tracking on the sandbox host, the marketing class tracked; machineWindow 0s as the
    simulated readers open within seconds of delivery (the User-Agent tells machines apart)."""
    classes = [dict(c) for c in (pool.get("spec") or {}).get("classes") or []]
    for klass in classes:
        if klass.get("name") == "marketing":
            klass["tracking"] = {"opens": True, "clicks": True}
    return {"spec": {"tracking": {"host": TRACK_HOST, "machineWindow": "0s"},
                     "classes": classes}}


def _mounted(pod: JSON) -> set[str]:
    return {v.get("name", "") for v in (pod.get("spec") or {}).get("volumes") or []}


async def enable(world: SandboxWorld, within: float) -> None:
    """Point the pool at the receiver and turn tracking on; wait for the rolled pods."""
    receiver, ns, name = world.webhooks, world.settings.namespace, world.settings.pool
    if receiver is None:
        raise RuntimeError("the world runs no webhook receiver (WorldSettings.webhook_receiver)")
    event_samples.enable_webhook_events(world.api, receiver, world.transport.ca, ns, name)
    world.api.patch(API_VERSION, "SendingPool", name, tracking_patch(world.pool()), ns)
    wanted = {f"events-{event_samples.WEBHOOK_NAME}", "tracking"}

    def rolled() -> bool:
        pool, pods = world.pool(), world.pods()
        ready = (condition(pool, "Ready") or {}).get("status") == "True"
        events = (condition(pool, "EventsReady") or {}).get("status") in (None, "True")
        return (ready and events and bool(pods) and all(pod_ready(p) for p in pods)
                and all(wanted <= _mounted(p) for p in pods)
                and set(world.ip_holders().values()) <= {p["metadata"]["name"] for p in pods})

    await wait_until(rolled, within=within, what="pods rolled with events and tracking")


async def tracking_served(world: SandboxWorld, within: float) -> None:
    """Every pod's public listener answers tracking URLs (a forged token: 404, nothing else)."""
    async def answers() -> bool:
        async with aiohttp.ClientSession() as session:
            for pod in world.ready_pods():
                url = f"http://{pod['status']['podIP']}:{PUBLIC_PORT}/t/o/forged.x.gif"
                try:
                    async with session.get(url, headers={"Host": TRACK_HOST},
                                           timeout=aiohttp.ClientTimeout(total=3)) as resp:
                        if resp.status != 404:
                            return False
                except (aiohttp.ClientError, TimeoutError):
                    return False
        return True

    deadline = time.monotonic() + within
    while not await answers():
        if time.monotonic() > deadline:
            raise TimeoutError("the pods' public listeners do not serve /t/ yet")
        await asyncio.sleep(0.5)


def readers(world: SandboxWorld) -> list[engagement.Engagement]:
    """One simulator per provider, the tracking host mapped to a pod's public listener."""
    pod = world.ready_pods()[0]
    endpoint = engagement.Endpoint(pod["status"]["podIP"], PUBLIC_PORT)
    out = []
    for provider, (opens, proxy, clicks) in SHARES.items():
        settings = engagement.EngagementSettings(
            open_share=opens, proxy_share=proxy, click_share=clicks, seed=SEED,
            human_delay_s=1.0, click_delay_s=0.5)
        sim = engagement.Engagement(settings, {TRACK_HOST: endpoint})
        sim.attach(world.fleet[provider])
        out.append(sim)
    return out


async def submit_tagged(world: SandboxWorld, ledger: Ledger, session: aiohttp.ClientSession,
                        rcpt: str, campaign: str, pods: list[str], i: int) -> tuple[Sent, str]:
    """POST one tagged marketing message with an HTML part; (the ledger entry, spool id)."""
    pod_name = pods[i % len(pods)]
    pod = world.api.get("v1", "Pod", pod_name, world.settings.namespace)
    url = f"http://{pod['status']['podIP']}:{world.pool_http_port()}/v1/messages"
    mid = ledger.next_id("events")
    unsubscribe = f"https://example.test/unsubscribe?who={rcpt}"
    body = {"from": f"Example News <{FROM}>", "to": [rcpt], "class": "marketing",
            "subject": f"The {campaign} collection", "tags": {"campaign": campaign},
            "text": f"Hello {rcpt}, see https://shop.example.test/{campaign}/offers\n",
            "html": html_body(rcpt, campaign, unsubscribe),
            "headers": {"Message-ID": f"<{mid}>", "List-Unsubscribe": f"<{unsubscribe}>"}}
    key = world.pool_api_key()
    status, spool_id = 0, ""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"},
                                timeout=aiohttp.ClientTimeout(total=5)) as resp:
            status = resp.status
            if status == 202:
                spool_id = str((await resp.json()).get("id") or "")
    sent = Sent(mid, rcpt.lower(), "marketing", pod_name, "events", time.time(), status)
    ledger.sent.append(sent)
    return sent, spool_id


def admin_token(world: SandboxWorld) -> str:
    secret = world.api.get("v1", "Secret", f"{world.settings.pool}-admin",
                           world.settings.namespace)
    data = secret.get("data") or {}
    if "token" in data:
        return base64.b64decode(data["token"]).decode()
    return str((secret.get("stringData") or {}).get("token", ""))


async def pod_stats(world: SandboxWorld) -> list[JSON]:
    """Every ready pod's /v1/stats, read with the admin token as the operator does."""
    token, out = admin_token(world), []
    async with aiohttp.ClientSession() as session:
        for pod in world.ready_pods():
            url = f"http://{pod['status']['podIP']}:{ADMIN_PORT}/v1/stats"
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(url, headers={"Authorization": f"Bearer {token}"},
                                       timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status == 200:
                        out.append(await resp.json())
    return out


def outbox(stats: list[JSON]) -> JSON:
    """The webhook's figures summed over the pods: pending, delivered, dropped, errors seen."""
    hooks = [((s.get("events") or {}).get("webhooks") or {}).get(event_samples.WEBHOOK_NAME)
             or {} for s in stats]
    out: JSON = {k: sum(int(h.get(k) or 0) for h in hooks)
                 for k in ("pending", "delivered", "dropped")}
    out["failing_pods"] = sum(bool(h.get("lastError") or h.get("last_error")) for h in hooks)
    return out


async def held_back(world: SandboxWorld, at_least: int, within: float) -> JSON:
    """Wait until the pods' outboxes hold `at_least` events and have seen the receiver fail:
    the senders tried during the outage, so what arrives later is a redelivery."""
    deadline = time.monotonic() + within
    while True:
        figures = outbox(await pod_stats(world))
        if figures["pending"] >= at_least and figures["failing_pods"]:
            return figures
        if time.monotonic() > deadline:
            raise TimeoutError(f"the outboxes never held the events back: {figures}")
        await asyncio.sleep(0.5)


@_scene("events", "Events and engagement: the webhook down for a while, nothing missing")
async def events_and_engagement(result: SceneResult, world: SandboxWorld, ledger: Ledger,
                                per_provider: int = 10, within: float = 180.0) -> None:
    """Events and tracking on; the receiver down while a tagged campaign is delivered and
    read; back up; every implied event must reach it, opens and clicks as simulated."""
    t0 = time.monotonic()
    await enable(world, within=within)
    await tracking_served(world, within=30.0)
    result.timings["enabled_s"] = round(time.monotonic() - t0, 2)
    receiver = world.webhooks
    assert receiver is not None
    sims = readers(world)
    try:
        before_outage = len(receiver.events)  # earlier scenes' mail (TLS-RPT reports) too
        await receiver.down()
        down_at = time.monotonic()
        rcpts = [(f"reader{i:03d}.{p}@{d}", CAMPAIGNS[i % len(CAMPAIGNS)])
                 for p, d in DOMAINS.items() for i in range(per_provider)]
        pods = sorted(p["metadata"]["name"] for p in world.client_service_pods() or
                      world.ready_pods())
        async with aiohttp.ClientSession() as session:
            submitted = [await submit_tagged(world, ledger, session, r, c, pods, i)
                         for i, (r, c) in enumerate(rcpts)]
        accepted = {s.message_id: (s, spool) for s, spool in submitted if s.status == 202}
        result.check("every tagged submission accepted (202) with a spool id",
                     len(accepted) == len(submitted) and all(accepted.values()),
                     f"{len(accepted)}/{len(submitted)}")

        def delivered() -> bool:
            got = {message_id_of(m) for m in world.fleet.messages}
            return set(accepted) <= got

        await wait_until(delivered, within=within, what="the tagged campaign delivered")
        for sim in sims:
            await sim.settle(timeout=within)
        result.timings["delivered_and_read_s"] = round(time.monotonic() - t0, 2)
        result.details["outbox_at_outage_end"] = await held_back(
            world, at_least=2 * len(accepted), within=within)
        got_while_down = len(receiver.events) - before_outage
        await receiver.up()
        result.timings["receiver_down_s"] = round(time.monotonic() - down_at, 2)
        result.check("the receiver got nothing while down", got_while_down == 0,
                     f"{got_while_down} events")
        spool_of = {mid: spool for mid, (_, spool) in accepted.items()}
        copies = [(spool_of[message_id_of(m)], rcpt) for m in world.fleet.messages
                  if message_id_of(m) in spool_of for rcpt in m.rcpt_to]
        implied_engagement: dict[str, list[report.Pair]] = {"opened": [], "clicked": []}
        for sim in sims:
            for kind, pairs in sim.implied_events().items():
                implied_engagement[kind] += pairs
        complained = scenes.complained_addresses(world)  # yahoo's ARF reports
        implied = report.implied_event_keys(
            delivered=copies, complained=[c for c in copies if c[1].lower() in complained],
            **implied_engagement)
        simulated = engagement.total(sims)

        def summary() -> JSON:
            return report.events_summary(list(receiver.events), implied, simulated)

        def settled() -> bool:
            s = summary()
            return bool(s["webhook_missing"] == 0 and s["opens_recorded"] >= s["opens_simulated"]
                    and s["clicks_recorded"] >= s["clicks_simulated"]
                    and s["machine_opens"] >= s["machine_opens_simulated"])

        with contextlib.suppress(TimeoutError):
            await wait_until(settled, within=within, what="the outbox redelivered")
        result.timings["redelivered_s"] = round(time.monotonic() - t0, 2)
        await _report(result, world, summary(), simulated)
    finally:
        if not receiver.is_up:
            await receiver.up()
        for receiver_ in world.fleet:
            for sim in sims:
                with contextlib.suppress(ValueError):
                    receiver_.on_message.remove(sim.observe)
        for sim in sims:
            await sim.close()


async def _report(result: SceneResult, world: SandboxWorld, figures: JSON,
                  simulated: dict[str, int]) -> None:
    """The scene's figures for summary.json and report.md, and its checks."""
    receiver = world.webhooks
    assert receiver is not None
    result.details["events"] = figures
    result.details["engagement"] = simulated
    stats = await pod_stats(world)
    result.details["kpis_by_campaign"] = report.campaign_kpis(
        [s.get("kpis") or {} for s in stats])
    result.details["outbox_after"] = after = outbox(stats)
    result.check("no event dropped by the senders (their /v1/stats)", after["dropped"] == 0,
                 str(after))
    result.check("webhook_missing: 0 (the outbox redelivered after the outage)",
                 figures["webhook_missing"] == 0,
                 f"{figures['webhook_missing']} missing, "
                 f"e.g. {figures['webhook_missing_list'][:3]}")
    result.check("opens recorded = opens simulated",
                 figures["opens_recorded"] == figures["opens_simulated"],
                 f"{figures['opens_recorded']} recorded, {figures['opens_simulated']} simulated")
    result.check("clicks recorded = clicks simulated",
                 figures["clicks_recorded"] == figures["clicks_simulated"],
                 f"{figures['clicks_recorded']} recorded, {figures['clicks_simulated']} simulated")
    result.check("machine opens told apart",
                 figures["machine_opens"] == figures["machine_opens_simulated"] > 0,
                 f"{figures['machine_opens']} recorded, "
                 f"{figures['machine_opens_simulated']} simulated")
    result.check("every simulated fetch answered (pixel 200, click 302)",
                 simulated["failed"] == 0, f"{simulated['failed']} failed")
    result.check("signatures: no batch refused", not receiver.refused,
                 f"{len(receiver.refused)} refused")
