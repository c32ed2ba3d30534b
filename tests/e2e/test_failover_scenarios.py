"""Failures caused to the holder of an egress IP while mail flows (issue 14 item 5), on one
sandbox world shared by the tests of this module (`mailfleet_sandbox.failover_scenarios`):
the sender killed, frozen and thawed, its node partitioned, the operator's API answering 503,
the leading operator replica killed, and a force-deleted pod on a partitioned node.

Every assertion reads what the receivers recorded (the sending pod from the pool's trace mark
on each copy, the egress IP as the peer address, the arrival time) against the ledger of
accepted submissions: no IP sent from two pods at once, nothing accepted lost, and after an
API blip no IP changed pod. After a freeze or a partition the old holder is also asked
itself (`mailfleet_sandbox.fencing`): under its lost lease it wrote nothing from the IP after
it lost it and holds no valid lease of it, while the new holder wrote the IP's mail. How
long a failover takes is the bench's question (bench/failover.py), not these tests': they wait
for conditions with generous deadlines.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from mailfleet_sandbox import failover_scenarios as fs
from mailfleet_sandbox import scenes
from mailfleet_sandbox.world import SandboxWorld

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

WITHIN = 240.0
"""Deadline of every wait (a condition, not a timing goal): both cores may be busy."""


@dataclass
class FailoverWorld:
    world: SandboxWorld
    ledger: scenes.Ledger
    prof: fs.Profile


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def failover_world(tmp_path_factory: pytest.TempPathFactory
                         ) -> AsyncIterator[FailoverWorld]:
    prof = fs.profile("default")
    root = tmp_path_factory.mktemp("failover-world")
    async with SandboxWorld(fs.world_settings(root, prof)) as world:
        await fs.start_pool(world, prof, within=WITHIN)
        yield FailoverWorld(world, scenes.Ledger(), prof)


async def run(fw: FailoverWorld, name: str) -> fs.Outcome:
    return await fs.run_scenario(fw.world, fw.ledger, name, fw.prof, within=WITHIN)


def assert_safe(outcome: fs.Outcome) -> None:
    report = outcome.to_json()
    print(json.dumps(report))  # the figures, for -s runs
    assert not outcome.fence, f"the old holder broke its fence (its own counters): {report}"
    assert not outcome.overlaps, f"one IP sent from two pods at once: {report}"
    assert not outcome.lost, f"accepted messages never delivered: {report}"
    assert outcome.accepted > 0, report


async def test_api_blip_moves_no_ip(failover_world: FailoverWorld) -> None:
    outcome = await run(failover_world, "api-blip")
    assert_safe(outcome)
    report = outcome.to_json()
    assert not outcome.holders_changed, f"an IP changed pod during the API blip: {report}"
    assert outcome.details["epochs_after"] == outcome.details["epochs_before"], report


async def test_killed_sender_ip_moves_without_overlap_or_loss(
        failover_world: FailoverWorld) -> None:
    outcome = await run(failover_world, "killed")
    assert_safe(outcome)
    assert outcome.moved_to, outcome.to_json()


async def test_frozen_then_thawed_sender_never_sends_beside_the_new_holder(
        failover_world: FailoverWorld) -> None:
    outcome = await run(failover_world, "frozen")
    assert outcome.fence is not None, outcome.to_json()  # checked, from the pod itself
    assert_safe(outcome)
    assert outcome.moved_to and outcome.moved_to != fs.pod_ref(outcome.holder), \
        outcome.to_json()


async def test_partitioned_node_ip_moves_without_overlap_or_loss(
        failover_world: FailoverWorld) -> None:
    outcome = await run(failover_world, "partitioned")
    assert outcome.fence is not None, outcome.to_json()  # checked, from the pod itself
    assert_safe(outcome)
    assert outcome.moved_to and outcome.moved_to != fs.pod_ref(outcome.holder), \
        outcome.to_json()


async def test_killed_leader_never_lets_two_pods_hold_an_ip(
        failover_world: FailoverWorld) -> None:
    outcome = await run(failover_world, "leader-killed")
    assert_safe(outcome)
    assert outcome.details["new_leader"] != outcome.details["leader"]


async def test_force_deleted_pod_on_partitioned_node_keeps_its_ip_until_the_lease_expired(
        failover_world: FailoverWorld) -> None:
    fw = failover_world
    outcome = await fs.forced_delete_on_partitioned_node(fw.world, fw.ledger, fw.prof,
                                                         within=WITHIN)
    assert outcome.details["old_process_running"], outcome.to_json()
    assert_safe(outcome)
