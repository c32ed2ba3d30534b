"""Two `Leadership` candidates for one Lease, each talking to the API through its own fault
proxy (emulator and real control plane): exactly one leads; the leader cut off from the API
stops leading within the renew deadline of its last renewal and calls on_lost; the other takes
over only a full lease duration after the leader's last renewal; never do both lead.

Bounds are asserted against the candidates' own monotonic records (last renewal sent, leading
since), not against wall time, so they hold however slow a busy machine makes the loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from mailfleet_operator import leadership as leadership_module
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import leader_election
from mailfleet_sandbox.api_fault_proxy import ApiFaultProxy
from sandbox_fixtures.api_fault_proxy import FaultUpstream
from sandbox_fixtures.operator import wait_for

SETTINGS = leader_election.ElectionSettings(
    lease_duration=10.0, renew_deadline=6.0, retry_period=0.5)
REQUEST_TIMEOUT = 1.5
LEASES = resources.Resource(group="coordination.k8s.io", version="v1", plural="leases",
                            kind="Lease", verbs=frozenset({"get", "delete"}))
"""The test's own: it deletes the Lease it made."""


class Candidate:
    def __init__(self, upstream: FaultUpstream, proxy: ApiFaultProxy, identity: str,
                 lease: str) -> None:
        self.proxy = proxy
        self.lost: list[float] = []
        self.leadership = leadership_module.Leadership(
            connection=proxy.connection_via(upstream.connection), namespace="default",
            name=lease, identity=identity, settings=SETTINGS,
            on_lost=lambda: self.lost.append(time.monotonic()),
            request_timeout=REQUEST_TIMEOUT,
        )
        self.task: asyncio.Task[None] | None = None
        self.last_true: float | None = None
        """Monotonic time of the last sample at which it said it was leading."""

    def start(self) -> None:
        self.task = asyncio.create_task(self.leadership.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Sampler:
    """Asks both candidates `is_leading()` every few milliseconds; records any overlap."""

    def __init__(self, candidates: list[Candidate]) -> None:
        self.candidates = candidates
        self.overlaps: list[float] = []
        self.samples = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            leading = [c for c in self.candidates if c.leadership.is_leading()]
            for candidate in leading:
                candidate.last_true = now
            if len(leading) > 1:
                self.overlaps.append(now)
            self.samples += 1
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def candidates(fault_upstream: FaultUpstream) -> AsyncIterator[list[Candidate]]:
    lease = f"leader-{uuid.uuid4().hex[:10]}"
    async with fault_upstream.proxy() as proxy_a, fault_upstream.proxy() as proxy_b:
        pair = [Candidate(fault_upstream, proxy_a, "candidate-a", lease),
                Candidate(fault_upstream, proxy_b, "candidate-b", lease)]
        try:
            yield pair
        finally:
            for candidate in pair:
                candidate.proxy.passthrough()
                await candidate.stop()
            async with kube_client.Client(fault_upstream.connection) as direct:
                await direct.delete(LEASES, name=lease, namespace="default")


async def test_one_leader_a_cut_off_leader_stops_in_time_and_the_other_waits_out_the_lease(
        candidates: list[Candidate], fault_upstream: FaultUpstream) -> None:
    for candidate in candidates:
        candidate.start()
    sampler = Sampler(candidates)
    try:
        # --- exactly one leads (both started at once: one create wins, the other gets 409)
        leader = await wait_for(
            lambda: next((c for c in candidates if c.leadership.is_leading()), None),
            within=60, message="a leader")
        follower = next(c for c in candidates if c is not leader)
        attempts = follower.proxy.requests
        await wait_for(lambda: follower.proxy.requests >= attempts + 6, within=60,
                       message="the follower to read the Lease a few more times")
        assert not follower.leadership.is_leading()
        assert leader.leadership.is_leading()
        since = leader.leadership.leading_since()
        assert since is not None and follower.leadership.leading_since() is None

        # --- cut the leader off from the API server
        leader.proxy.blackhole()
        cut = time.monotonic()
        last_renew = leader.leadership._last_renew
        assert last_renew is not None and last_renew <= cut
        await wait_for(lambda: not leader.leadership.is_leading(), within=60,
                       message="the cut-off leader to stop leading")
        await wait_for(lambda: leader.lost, within=60, message="on_lost of the cut-off leader")
        assert leader.last_true is not None
        assert leader.last_true < last_renew + SETTINGS.renew_deadline
        assert leader.last_true < cut + SETTINGS.renew_deadline
        assert leader.leadership.lost and leader.leadership.leading_since() is None

        # --- the other takes over, but only a lease duration after the last renewal
        await wait_for(follower.leadership.is_leading, within=120,
                       message="the follower to take over")
        taken = follower.leadership.leading_since()
        assert taken is not None
        assert taken >= last_renew + SETTINGS.lease_duration
        assert leader.last_true < taken
        assert follower.lost == []

        # --- the fencing epoch moved on, and the old leader stays out when the API is back
        leader.proxy.passthrough()
        async with kube_client.Client(fault_upstream.connection) as direct:
            lease = await direct.get(LEASES, name=follower.leadership.name,
                                     namespace="default")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == follower.leadership.identity
        assert lease["spec"]["leaseTransitions"] == 1
        assert leader.task is not None
        await wait_for(leader.task.done, within=60, message="the lost leader's loop to end")
        assert not leader.leadership.is_leading()
        assert len(leader.lost) == 1
    finally:
        await sampler.stop()
    assert sampler.samples > 100
    assert sampler.overlaps == [], "both candidates reported leading at once"


async def test_a_leader_stopped_gracefully_releases_the_lease_and_the_other_takes_over_at_once(
        candidates: list[Candidate]) -> None:
    first, second = candidates
    first.start()
    await wait_for(first.leadership.is_leading, within=60, message="the first to lead")
    second.start()
    attempts = second.proxy.requests
    await wait_for(lambda: second.proxy.requests >= attempts + 2, within=60,
                   message="the second to read the Lease")
    assert not second.leadership.is_leading()
    stopped = time.monotonic()
    await first.stop()
    assert not first.leadership.is_leading() and first.lost == []
    await wait_for(second.leadership.is_leading, within=60, message="the second to lead")
    taken = second.leadership.leading_since()
    # Released: no lease duration to wait out (a bound well below it, for a busy machine).
    assert taken is not None and taken - stopped < SETTINGS.lease_duration
