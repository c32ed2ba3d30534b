"""The e2e tests' one shared sandbox world (issue 9): `SandboxWorld` with the operator, three
nodes, DNS and the simulated providers, started once per session, plus the `Ledger` of every
submission and a background sampler of the warm-up quotas.

Scenes build on each other (the fleet must be up before mail flows), so `e2e_fleet` and
`e2e_campaign` run those two scenes once, whichever test asks first; the failure scenes then
run one per test on the same world. Session-scoped and async on the session loop: tests use
`pytest.mark.asyncio(loop_scope="session")`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from mailfleet_sandbox import scenes
from mailfleet_sandbox.world import SandboxWorld, WorldSettings

E2E_DAY_SECONDS = 8.0
"""A warm-up day in the e2e world: short, so that several days pass during the suite."""


@dataclass
class E2EWorld:
    world: SandboxWorld
    ledger: scenes.Ledger


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def e2e_world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2EWorld]:
    root = tmp_path_factory.mktemp("sandbox-world")
    settings = WorldSettings(root=root, warmup_day_seconds=E2E_DAY_SECONDS,
                             webhook_receiver=True)
    async with SandboxWorld(settings) as world:
        ledger = scenes.Ledger()
        watcher = asyncio.create_task(scenes.watch_quotas(world, ledger))
        try:
            yield E2EWorld(world, ledger)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def e2e_fleet(e2e_world: E2EWorld) -> scenes.SceneResult:
    """The fleet_up scene, once: kubectl apply of the CRDs and the sandbox samples."""
    return await scenes.fleet_up(e2e_world.world)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def e2e_campaign(e2e_world: E2EWorld, e2e_fleet: scenes.SceneResult) -> scenes.SceneResult:
    """The campaign scene, once (needs the fleet)."""
    if not e2e_fleet.ok:
        pytest.fail(f"the fleet did not come up: {e2e_fleet.failures()}")
    return await scenes.campaign(e2e_world.world, e2e_world.ledger, count=100, within=60)
