"""Several sender processes of one pool on loopback (each on its own 127.x address, peers of
each other), delivering to the sandbox providers: suppression shared across pods, feedback
reports (ARF, DSN) arriving at any pod, one-click unsubscribe, and the hand-off drain with a
crash of either side."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import dkim
import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    DkimKeys,
    SenderProcess,
    base_config,
    lease,
    make_dkim_keys,
    make_pool,
    start_all,
)
from sandbox_fixtures.waiting import eventually

BOUND = 30.0
"""Deadline for an entry recorded at one pod to reach every other pod (by push, or by the
1 s pull): generous, so a loaded machine does not fail it. That the push alone is prompt is
tested with a pull interval of a minute (tests/integration/test_suppression_replication.py)."""


async def entry(pod: SenderProcess, address: str) -> dict[str, Any] | None:
    status, body = await pod.client.request(
        "GET", f"/v1/suppressions/{address}", admin=True, token=ADMIN_TOKEN
    )
    assert status in (200, 404), body
    return body if status == 200 else None


async def suppressed(pod: SenderProcess, address: str) -> bool:
    found = await entry(pod, address)
    return found is not None and bool(found["suppressed"])


def _config(tmp: Path, dns: DNSServer, fleet: ProviderFleet, **deliverability: Any) -> Any:
    return _config_and_keys(tmp, dns, fleet, **deliverability)[0]


def _config_and_keys(
    tmp: Path, dns: DNSServer, fleet: ProviderFleet, **deliverability: Any
) -> tuple[Any, DkimKeys]:
    keys = make_dkim_keys(tmp / "keys", "example.test", dns)
    cfg = base_config(tmp, dns=dns, destination_port=fleet.port, keys=keys)
    cfg["deliverability"] = {**cfg["deliverability"], **deliverability}
    return cfg, keys


async def _pool(
    tmp: Path, cfg: Any, ips: list[str], reaper: list[SenderProcess]
) -> list[SenderProcess]:
    pods = make_pool(tmp, cfg, ips)
    reaper.extend(pods)
    await start_all(pods)
    for pod in pods:
        assert pod.pod_ip is not None
        await pod.client.assign([lease(pod.pod_ip)])
    return pods


def _mail(to: str, klass: str = "transactional", subject: str = "hello") -> dict[str, Any]:
    return {"from": "Shop <news@example.test>", "to": [to], "subject": subject,
            "text": "body\n", "class": klass}


async def test_a_hard_bounce_at_one_pod_stops_every_pod_and_removal_resumes_delivery(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    pods = await _pool(tmp_path, _config(tmp_path, dns_server, provider_fleet),
                       ["127.0.0.31", "127.0.0.32", "127.0.0.33"], process_reaper)
    gmail = provider_fleet["gmail"]
    gmail.behaviour.unknown_users.add("gone@gmail.test")

    status, body = await pods[0].client.submit(_mail("gone@gmail.test"))
    assert status == 202, body
    await eventually(lambda: suppressed(pods[0], "gone@gmail.test"), "pod 0 suppresses")

    async def everywhere() -> bool:
        return all([await suppressed(p, "gone@gmail.test") for p in pods[1:]])

    await eventually(everywhere, "every pod suppresses", deadline=BOUND)
    listed = await entry(pods[2], "gone@gmail.test")
    assert listed is not None
    assert (listed["reason"], listed["origin"]) == ("hard_bounce", "pool-0")

    # The other pods do not attempt it: result `suppressed`, counted; other mail flows.
    for pod in pods[1:]:
        assert (await pod.client.submit(_mail("gone@gmail.test")))[0] == 202
        assert (await pod.client.submit(_mail(f"ok-{pod.pod}@gmail.test")))[0] == 202
    await gmail.wait_until(lambda: len(gmail.messages) == 2, what="the two good messages")

    async def counted() -> bool:
        stats = [await p.client.stats() for p in pods[1:]]
        return all(s["totals"]["suppressed"] == 1 for s in stats)

    await eventually(counted, "suppressed results counted")
    assert gmail.codes_for("gone@gmail.test") == [550]
    _, metrics = await pods[1].client.request("GET", "/metrics")
    assert ('mailfleet_sender_messages_total{class="transactional",ip="",provider="",'
            'result="suppressed"} 1.0') in metrics

    # The mailbox exists again; removing the entry through any pod resumes delivery everywhere.
    gmail.behaviour.unknown_users.clear()
    status, _ = await pods[2].client.request(
        "DELETE", "/v1/suppressions/gone@gmail.test", admin=True, token=ADMIN_TOKEN
    )
    assert status == 200

    async def lifted() -> bool:
        return not any([await suppressed(p, "gone@gmail.test") for p in pods])

    await eventually(lifted, "removed everywhere", deadline=BOUND)
    assert (await pods[1].client.submit(_mail("gone@gmail.test")))[0] == 202
    await gmail.wait_until(
        lambda: any("gone@gmail.test" in m.rcpt_to for m in gmail.messages),
        what="delivery to the re-enabled address",
    )


async def test_complaint_and_asynchronous_bounce_reports_suppress_across_the_pool(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet, feedbackPort=0,
                  bounceDomain="bounces.example.test")
    pods = await _pool(tmp_path, cfg, ["127.0.0.36", "127.0.0.37"], process_reaper)
    sender, reader = pods
    assert reader.pod_ip is not None
    target = (reader.pod_ip, reader.feedback_port)
    provider_fleet.set_feedback_target(target)
    gmail, outlook = provider_fleet["gmail"], provider_fleet["outlook"]
    gmail.behaviour.complaint_rate = 1.0  # every message accepted at gmail is reported
    outlook.behaviour.bounce_after_accept.add("later@outlook.test")
    outlook.bounce_target = target

    assert (await sender.client.submit(_mail("angry@gmail.test", "marketing")))[0] == 202
    assert (await sender.client.submit(_mail("later@outlook.test")))[0] == 202
    [sent] = await gmail.wait_for(1)
    # VERP return path per recipient, and the sealed trace header on every copy.
    assert re.fullmatch(r"b-pool_0\.\d+-[a-z2-7]{13}@bounces\.example\.test", sent.mail_from)
    assert (sent.header("X-Mailfleet-Trace") or "").startswith("t1.")

    async def both() -> bool:
        return await suppressed(sender, "angry@gmail.test") and await suppressed(
            sender, "later@outlook.test")

    await eventually(both, "the reader pod's reports suppress at the sending pod")
    complaint = await entry(sender, "angry@gmail.test")
    bounce = await entry(sender, "later@outlook.test")
    assert complaint is not None and bounce is not None
    assert (complaint["reason"], complaint["origin"]) == ("complaint", "pool-1")
    assert (bounce["reason"], bounce["source"]) == ("hard_bounce", "pool-1:dsn")

    stats = await reader.client.stats()
    by_ip = stats["rates"]["byIp"]["127.0.0.36"]["1h"]
    assert (by_ip["complaint"], by_ip["hardBounce"]) == (1, 1)
    assert stats["rates"]["byClass"]["marketing"]["1h"]["complaint"] == 1
    [ip_today] = [ip for ip in stats["ips"] if ip["address"] == "127.0.0.36"]
    assert (ip_today["complainedToday"], ip_today["bouncedToday"]) == (1, 1)


async def test_one_click_unsubscribe_suppresses_everywhere_and_forgeries_change_nothing(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    cfg, keys = _config_and_keys(tmp_path, dns_server, provider_fleet,
                                 bounceDomain="bounces.example.test")
    pods = make_pool(tmp_path, cfg, ["127.0.0.38", "127.0.0.39"])
    for pod in pods:  # the public URL reaches pod 1 (an ingress in front of the pool)
        pod.cfg["deliverability"]["unsubscribeBaseUrl"] = pods[1].public_url
        pod.rewrite_config()
    process_reaper.extend(pods)
    await start_all(pods)
    for pod in pods:
        assert pod.pod_ip is not None
        await pod.client.assign([lease(pod.pod_ip)])
    gmail = provider_fleet["gmail"]

    assert (await pods[0].client.submit(_mail("reader@gmail.test", "marketing")))[0] == 202
    assert (await pods[0].client.submit(_mail("buyer@gmail.test", "transactional")))[0] == 202
    await gmail.wait_for(2)
    by_rcpt = {m.rcpt_to[0]: m for m in gmail.messages}
    assert by_rcpt["buyer@gmail.test"].header("List-Unsubscribe") is None
    marketing = by_rcpt["reader@gmail.test"]
    assert marketing.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert marketing.verdicts.get("dkim") in (None, "pass")
    signature = marketing.header("DKIM-Signature") or ""
    signed = signature.replace(" ", "").split("h=")[1].split(";")[0].lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(signed)
    assert dkim.DKIM(marketing.data).verify(dnsfunc=keys.dnsfunc)
    url = re.search(r"<(http://[^>]+)>", marketing.header("List-Unsubscribe") or "")
    assert url is not None
    mailto = re.search(r"<mailto:unsubscribe@bounces\.example\.test\?subject=([^>]+)>",
                       marketing.header("List-Unsubscribe") or "")
    assert mailto is not None and urllib.parse.unquote(mailto.group(1)).startswith("unsubscribe ")

    async def post(target: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.post(
            target, data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            return response.status, await response.json()

    forged = url.group(1)[:-6] + ("AAAAAA" if not url.group(1).endswith("AAAAAA") else "BBBBBB")
    assert (await post(forged))[0] == 400
    assert not await suppressed(pods[0], "reader@gmail.test")

    status, body = await post(url.group(1))
    assert (status, body["result"]) == (200, "recorded")
    await eventually(lambda: suppressed(pods[0], "reader@gmail.test"), "replicated",
                     deadline=BOUND)
    listed = await entry(pods[0], "reader@gmail.test")
    assert listed is not None and listed["reason"] == "unsubscribe"

    status, body = await post(url.group(1))  # a replay (link scanner, double click)
    assert (status, body["result"]) == (200, "unchanged")
    _, metrics = await pods[1].client.request("GET", "/metrics")
    for result in ("recorded", "unchanged", "forged_token"):
        assert (f'mailfleet_sender_unsubscribes_total{{result="{result}",via="one-click"}} 1.0'
                in metrics), result


@pytest.mark.parametrize("crash", ["handing pod", "receiving pod"])
async def test_hand_off_drain_survives_a_crash_of_either_side_without_loss_or_doubles(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess], crash: str,
) -> None:
    total = 300
    cfg = _config(tmp_path, dns_server, provider_fleet)
    cfg["deliverability"]["handoff"] = {"retryEvery": "200ms"}
    pods = make_pool(tmp_path, cfg, ["127.0.0.41", "127.0.0.42"])
    process_reaper.extend(pods)
    await start_all(pods)
    leaving, staying = pods  # no leases yet: mail waits in the queues
    subjects = [f"m{i:04d}" for i in range(total)]
    for start in range(0, total, 25):
        results = await asyncio.gather(*(
            leaving.client.submit(_mail(f"r{i}@gmail.test", subject=subjects[i]))
            for i in range(start, min(total, start + 25))
        ))
        assert all(status == 202 for status, _ in results)

    status, _ = await leaving.client.request(
        "POST", "/v1/drain", params={"handoff": "true"}, admin=True, token=ADMIN_TOKEN
    )
    assert status == 202

    async def under_way() -> bool:
        return int((await staying.client.stats())["totals"]["accepted"]) >= 10

    await eventually(under_way, "the hand-off is under way")
    if crash == "handing pod":
        leaving.kill()
        await leaving.start(probe="/healthz")  # comes back draining and resumes by itself
        resumed = await leaving.client.stats()
        assert resumed["draining"] is True
    else:
        staying.kill()

        async def noticed() -> bool:
            return int((await leaving.client.stats())["handoff"]["failures"]) > 0

        await eventually(noticed, "the handing pod meets the dead receiver")
        await staying.start()

    async def done() -> bool:
        return (await leaving.client.stats())["handoff"]["state"] == "done"

    await eventually(done, "hand-off complete", deadline=30.0)
    if crash == "handing pod":
        assert (await leaving.client.stats())["handoff"]["handedOff"] > 0, "crash came too late"
    assert staying.pod_ip is not None
    await staying.client.assign([lease(staying.pod_ip)])
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(total, timeout=30)

    async def settled() -> bool:
        queues = (await staying.client.stats())["queues"]
        return sum(q["depth"] for q in queues.values()) == 0

    await eventually(settled, "the receiving pod's queue is empty")
    got = sorted(m.header("Subject") or "" for m in gmail.messages)
    assert got == subjects  # every message exactly once
