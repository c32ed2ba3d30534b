"""Two operator replicas, one cut off from the API server: no IP is ever held by two pods.

The dangerous case: the leader loses the API (blackholed, not crashed) but still reaches the
sender pods. Meanwhile the holder of an IP goes unready, which only the other replica can see.
The cut-off leader must stop renewing within its renew deadline, and the new leader must wait
out the IP leases it did not grant before it moves the IP. The fake senders check, at every
assignment they receive, that no IP is validly held by two pods; a sampler checks it as well,
continuously. Also: an API blip (503 for a few seconds) moves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from integration.test_sendingpool_operator import (
    HOST_BASE,
    IPS,
    NS,
    Kubelet,
    pool_body,
)
from mailfleet_sandbox.api_fault_proxy import ApiFaultProxy
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.fake_senders import free_port
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.operator import OperatorRunner, install_crds, operator_settings, wait_for

# The pod-lease settings are the defaults (an answer may take 1.5 s on a busy machine; a
# shorter timeout reads a slow pod as a frozen one); only the leader election is quicker.
FAST = {
    "lease_duration": 4.0,
    "lease_renew_interval": 1.5,
    "lease_clock_skew": 0.5,
    "pod_admin_timeout": 1.5,
    "stats_interval": 0.5,
    "standalone": True,
    "leader_election": True,
    "leader_lease_duration": 6.0,
    "leader_renew_deadline": 4.5,
    "leader_retry_period": 0.5,
}


@pytest.fixture
async def port() -> int:
    return free_port(f"127.0.0.{HOST_BASE}")


def proxy_for(kube_api: ApiServer) -> ApiFaultProxy:
    plane = getattr(kube_api, "plane", None)
    if plane is not None:
        return ApiFaultProxy.for_control_plane(plane.plane)
    return ApiFaultProxy(upstream=kube_api.url)


def leader_identity(kube_api: ApiServer) -> str | None:
    """The holder of the operator's leader Lease (replicas in one test process share the
    metrics registry, so the Lease, not the gauge, tells them apart)."""
    for lease in kube_api.list("coordination.k8s.io/v1", "Lease", NS):
        if lease["metadata"]["name"] == "mailfleet-operator-leader":
            holder = (lease.get("spec") or {}).get("holderIdentity")
            return str(holder) if holder else None
    return None


class Sampler:
    """Every 20 ms: which fake senders hold each IP validly (never two)."""

    def __init__(self, kubelet: Kubelet) -> None:
        self.kubelet = kubelet
        self.double: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            for address in IPS:
                holders = self.kubelet.fleet.holders(address)
                if len(holders) > 1:
                    self.double.append(f"{address}: {holders}")
            await asyncio.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


@contextlib.asynccontextmanager
async def two_replicas(
    kube_api: ApiServer, kubeconfig: Path, dns: DNSServer, port: int, tmp_path: Path
) -> AsyncIterator[tuple[Kubelet, list[tuple[OperatorRunner, ApiFaultProxy]], str]]:
    """The first replica starts alone (so it leads) and serves both IPs; then the second
    starts and follows. Yields the kubelet, the replicas and the leader's identity."""
    replicas: list[tuple[OperatorRunner, ApiFaultProxy]] = []
    kubelet = Kubelet(kube_api, "mail", port)
    kubelet.start()
    try:
        for index in range(2):
            proxy = proxy_for(kube_api)
            await proxy.start()
            config = proxy.write_kubeconfig(kubeconfig, tmp_path / f"replica-{index}.yaml")
            runner = OperatorRunner(operator_settings(config, dns, **FAST))
            replicas.append((runner, proxy))
            await runner.start(within=30)
            if index == 0:
                await wait_for(lambda: all(kubelet.fleet.holders(ip) for ip in IPS),
                               within=90, message="both IPs held")
        leader = leader_identity(kube_api)
        assert leader is not None
        yield kubelet, replicas, leader
    finally:
        for runner, proxy in replicas:
            proxy.passthrough()
            with contextlib.suppress(AssertionError):
                await runner.stop()
            await proxy.stop()
        await kubelet.stop()


async def test_a_leader_cut_off_from_the_api_stops_renewing_before_the_ip_moves(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int, tmp_path: Path
) -> None:
    install_crds(kube_api)
    kube_api.create(pool_body(port, replicas=2, standbyReplicas=1,
                              failover={"unhealthyAfter": "1s"}))
    async with two_replicas(kube_api, kubeconfig, dns_server, port, tmp_path) as (
        kubelet, replicas, leader,
    ):
        with Sampler(kubelet) as sampler:
            victim = kubelet.fleet.holders(IPS[0])[0]
            replicas[0][1].blackhole()  # the leader still reaches the pods, not the API
            # The holder goes unready: only the follower (and the API) can see it.
            await kube_api.set_pod_status(NS, victim, ready=False,
                                          pod_ip=kubelet.senders[victim].host)

            def moved() -> bool:
                now = kubelet.fleet.holders(IPS[0])
                return bool(now) and now != [victim]

            await wait_for(moved, within=120, message="the IP on another pod")
            successor = leader_identity(kube_api)
            assert successor is not None and successor != leader  # the other replica leads
        assert sampler.double == []
        assert kubelet.fleet.violations == []


async def test_an_api_blip_moves_no_ip(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int, tmp_path: Path
) -> None:
    install_crds(kube_api)
    kube_api.create(pool_body(port, replicas=2, standbyReplicas=1))
    async with two_replicas(kube_api, kubeconfig, dns_server, port, tmp_path) as (
        kubelet, replicas, leader,
    ):
        before = {ip: kubelet.fleet.holders(ip) for ip in IPS}
        with Sampler(kubelet) as sampler:
            replicas[0][1].error(2.0)  # every API call of the leader answers 503 for 2 s
            changed: list[str] = []
            loop = asyncio.get_running_loop()
            until = loop.time() + 2.0 + FAST["lease_duration"] + 1.0  # blip, then a lease
            while loop.time() < until:
                for ip in IPS:
                    if kubelet.fleet.holders(ip) != before[ip]:
                        changed.append(f"{ip}: {kubelet.fleet.holders(ip)}")
                await asyncio.sleep(0.05)
        assert changed == []  # renewals went on: no lease lapsed, nothing moved
        assert leader_identity(kube_api) == leader  # and the leader kept its Lease
        assert sampler.double == []
