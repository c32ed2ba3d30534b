"""Deleting a SendingPool with mail queued (issue 15, item 6), with real sender pods run by
the sandbox node agent, the operator as its Deployment, and the simulated providers.

Mail is accepted (202) while the receiver defers it (451 4.3.0), then the pool is deleted.
The pool must stay, its pods refusing new mail but keeping their IPs (a drained sender
reports itself unready: that must not move its IPs away), until the receiver takes the mail,
from the pool's own IPs; then the pool goes, with its spool volumes and its IP leases
released. Before this the pool, its pods and (`whenDeleted: Delete`) its spool went at once,
and the deferred mail with them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from mailfleet_sandbox import failover_scenarios as fs
from mailfleet_sandbox import scenes
from mailfleet_sandbox.world import API_VERSION, SandboxWorld, condition

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

WITHIN = 240.0
"""Deadline of every wait (a condition, not a timing goal): both cores may be busy."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxWorld]:
    prof = fs.profile("default")
    root = tmp_path_factory.mktemp("deletion-world")
    async with SandboxWorld(fs.world_settings(root, prof)) as world:
        await fs.start_pool(world, prof, within=WITHIN)
        yield world


def _pool(world: SandboxWorld) -> dict[str, Any] | None:
    ns = world.settings.namespace
    items = [p for p in world.api.list(API_VERSION, "SendingPool", ns)
             if p["metadata"]["name"] == fs.POOL]
    return items[0] if items else None


def _deleting(world: SandboxWorld) -> dict[str, Any] | None:
    pool = _pool(world)
    return condition(pool, "Deleting") if pool else None


def _leases(world: SandboxWorld) -> dict[str, dict[str, Any]]:
    items = world.api.list("coordination.k8s.io/v1", "Lease", world.settings.namespace,
                           label_selector=f"mailfleet.io/pool={fs.POOL}")
    return {(i["metadata"].get("annotations") or {}).get("mailfleet.io/egress-ip", ""):
            i.get("spec") or {} for i in items}


def _renewed_since(world: SandboxWorld, moment: float) -> bool:
    """Every IP's Lease names a holder and was renewed after `moment`."""
    leases = _leases(world)
    stamps = [spec.get("renewTime") for spec in leases.values() if spec.get("holderIdentity")]
    if len(stamps) != len(fs.IPS) or None in stamps:
        return False
    return all(datetime.fromisoformat(str(s).replace("Z", "+00:00")).timestamp() > moment
               for s in stamps)


async def test_a_deleted_pool_delivers_its_deferred_mail_from_its_ips_before_it_goes(
    world: SandboxWorld,
) -> None:
    ns = world.settings.namespace
    gmail = world.fleet["gmail"]
    rcpts = [f"held{i}@gmail.test" for i in range(5)]
    # 451 4.3.0: accepted here, deferred there (a deferral, not a soft bounce: nothing is
    # suppressed or given up however often it is retried).
    for rcpt in rcpts:
        gmail.behaviour.scripted[rcpt] = (451, "4.3.0 Temporary system problem, try again later")
    ledger = scenes.Ledger()
    async with aiohttp.ClientSession() as session:
        sent = [await scenes.submit(world, ledger, session, rcpt=r, klass="transactional",
                                    scene="deletion") for r in rcpts]
    assert [s.status for s in sent] == [202] * len(rcpts)
    await fs.poll(world, lambda: fs.call(world, lambda: {
        a.rcpt for a in gmail.attempts if a.rcpt in rcpts} == set(rcpts)),
        within=WITHIN, what="every message deferred once")
    holders = {a: spec.get("holderIdentity") for a, spec in _leases(world).items()}

    await fs.call(world, world.api.delete, API_VERSION, "SendingPool", fs.POOL, ns)
    deleted_at = time.time()

    cond = await fs.poll(world, lambda: fs.call(world, _deleting, world), within=WITHIN,
                         what="Deleting condition")
    assert cond["status"] == "True" and cond["reason"] == "Draining", cond
    assert "5 messages" in cond["message"], cond
    # Drained senders report unready; past unhealthyAfter (5s) and a lease, the IPs are
    # still held by the same pods, renewed after the deletion.
    await fs.poll(world, lambda: fs.call(
        world, _renewed_since, world, deleted_at + world.settings.lease_duration + 5.0),
        within=WITHIN, what="the IP leases renewed well after the deletion")
    assert {a: s.get("holderIdentity") for a, s in _leases(world).items()} == holders
    assert _pool(world) is not None
    # Intake is stopped: a new submission to a pod is refused.
    pod = world.pods(fs.POOL)[0]
    url = f"http://{pod['status']['podIP']}:{world.pool_http_port()}/v1/messages"
    key = world.pool_api_key(fs.POOL)  # as an application: authenticated, still refused
    async with aiohttp.ClientSession() as session, session.post(
        url, json={"from": scenes.FROM, "to": ["late@gmail.test"], "class": "transactional",
                   "subject": "late", "text": "late"},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        assert response.status == 503, response.status

    delivered_before = len([m for m in gmail.messages if set(m.rcpt_to) & set(rcpts)])
    assert delivered_before == 0
    for rcpt in rcpts:  # the receiver takes mail again
        gmail.behaviour.scripted.pop(rcpt, None)

    await fs.poll(world, lambda: fs.call(world, lambda: _pool(world) is None),
                  within=WITHIN, what="the pool gone")
    got = [m for m in gmail.messages if set(m.rcpt_to) & set(rcpts)]
    assert sorted(r for m in got for r in m.rcpt_to) == sorted(rcpts)
    assert {m.peer_ip for m in got} <= {a for a, _ in fs.IPS}
    claims = world.api.list("v1", "PersistentVolumeClaim", ns,
                            label_selector=f"mailfleet.io/pool={fs.POOL}")
    assert [c for c in claims if not c["metadata"].get("deletionTimestamp")] == []
    assert all(not spec.get("holderIdentity") for spec in _leases(world).values())


RESCUE = "rescue"
RESCUE_IP = ("127.0.20.3", "mta3.example.test")


def _rescue_ready(world: SandboxWorld) -> bool:
    pods = world.ready_pods(RESCUE)
    holders = world.ip_holders(RESCUE)
    return len(pods) == 1 and holders.get(RESCUE_IP[0]) == pods[0]["metadata"]["name"]


async def test_a_deleted_pool_hands_its_mail_to_the_pool_named_in_handoff_to(
    world: SandboxWorld,
) -> None:
    ns = world.settings.namespace
    prof = fs.profile("default")
    # The pool that takes the mail: its own IP, and a submission API key in a Secret (which
    # the leaving pool's pods are given for the hand-off, not their own).
    await fs.call(world, world.api.create, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rescue-api", "namespace": ns},
        "stringData": {"api-key": "the-rescue-pools-key"},
    })
    rescue = fs.pool_body(prof, ns)
    rescue["metadata"]["name"] = RESCUE
    rescue["spec"].update({
        "replicas": 1, "standbyReplicas": 0,
        "egress": {"mode": "direct", "ips": [{"address": RESCUE_IP[0], "heloName": RESCUE_IP[1]}]},
    })
    rescue["spec"]["submission"]["http"]["apiKeySecretRef"] = {"name": "rescue-api"}
    await fs.call(world, world.api.create, rescue)
    leaving = fs.pool_body(prof, ns)
    leaving["spec"]["deletion"] = {"handoffTo": RESCUE}
    if await fs.call(world, _pool, world) is not None:  # run alone: the fixture's pool
        await fs.call(world, world.api.delete, API_VERSION, "SendingPool", fs.POOL, ns)
    await fs.poll(world, lambda: fs.call(world, lambda: _pool(world) is None), within=WITHIN,
                  what="the earlier pool gone")
    await fs.call(world, world.api.create, leaving)
    await fs.wait_healthy(world, within=WITHIN)
    await fs.poll(world, lambda: fs.call(world, _rescue_ready, world), within=WITHIN,
                  what="the rescue pool holding its IP")

    gmail = world.fleet["gmail"]
    rcpts = [f"rescued{i}@gmail.test" for i in range(5)]
    for rcpt in rcpts:
        gmail.behaviour.scripted[rcpt] = (451, "4.3.0 Temporary system problem, try again later")
    ledger = scenes.Ledger()
    async with aiohttp.ClientSession() as session:
        sent = [await scenes.submit(world, ledger, session, rcpt=r, klass="transactional",
                                    scene="handoff") for r in rcpts]
    assert [s.status for s in sent] == [202] * len(rcpts)
    await fs.poll(world, lambda: fs.call(world, lambda: {
        a.rcpt for a in gmail.attempts if a.rcpt in rcpts} == set(rcpts)),
        within=WITHIN, what="every message deferred once")

    await fs.call(world, world.api.delete, API_VERSION, "SendingPool", fs.POOL, ns)
    # Handed over (the rescue pool answers 202), the leaving pool goes while the mail is
    # still deferred: it is the rescue pool's now.
    await fs.poll(world, lambda: fs.call(world, lambda: _pool(world) is None),
                  within=WITHIN, what="the leaving pool gone")
    assert not [m for m in gmail.messages if set(m.rcpt_to) & set(rcpts)]
    for rcpt in rcpts:
        gmail.behaviour.scripted.pop(rcpt, None)

    def delivered() -> list[Any]:
        return [m for m in gmail.messages if set(m.rcpt_to) & set(rcpts)]

    await fs.poll(world, lambda: fs.call(world, lambda: len(delivered()) >= len(rcpts)),
                  within=WITHIN, what="the handed-off mail delivered")
    got = delivered()
    assert sorted(r for m in got for r in m.rcpt_to) == sorted(rcpts)  # each exactly once
    assert {m.peer_ip for m in got} == {RESCUE_IP[0]}  # from the rescue pool's IP
