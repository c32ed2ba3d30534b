"""The SendingPool controller through the real kopf operator (handlers, indexes, daemon).

The operator runs on its own thread against the API emulator; the emulator's StatefulSet
controller makes the pods, and this module plays their kubelet and their sender: every pod
of the pool gets its own 127.x address, turns Ready, and answers the admin API
(`/v1/assignment`, `/v1/stats`, `/v1/drain`) from a tiny aiohttp app whose queue the test
sets. Nothing here calls the reconciler directly: what a user sees (children, status,
`kubectl get sp`, `kubectl scale sp`) is what is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from mailfleet_sandbox import fake_senders
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.fake_senders import FakeSender, FakeSenders, free_port
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.operator import (
    OperatorRunner,
    condition,
    install_crds,
    operator_settings,
    wait_for,
)
from sandbox_fixtures.real_cluster import node_heartbeats

NS = "default"
API = "mailfleet.io/v1alpha1"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
IPS = ["192.0.2.10", "192.0.2.11"]
HOST_BASE = 60  # pod N of the pool answers on 127.0.0.(HOST_BASE + N)


class Kubelet:
    """Makes every pod of the pool Running and Ready with a fake sender behind its IP."""

    def __init__(self, api: ApiServer, pool: str, port: int) -> None:
        self.api, self.pool, self.port = api, pool, port
        self.fleet = FakeSenders(port)
        self.senders = self.fleet.pods
        self.operator: OperatorRunner | None = None
        self._task: asyncio.Task[None] | None = None

    def pods(self) -> list[str]:
        items = self.api.list("v1", "Pod", NS, label_selector=f"mailfleet.io/pool={self.pool}")
        return sorted(p["metadata"]["name"] for p in items)

    async def _step(self) -> None:
        for pod in self.api.list("v1", "Pod", NS, label_selector=f"mailfleet.io/pool={self.pool}"):
            name = pod["metadata"]["name"]
            if (pod.get("status") or {}).get("podIP") or pod["metadata"].get("deletionTimestamp"):
                continue
            ordinal = int(name.rsplit("-", 1)[1])
            sender = await self.fleet.start(name, f"127.0.0.{HOST_BASE + ordinal}")
            await self.api.set_pod_status(NS, name, ready=True, pod_ip=sender.host)

    async def _loop(self) -> None:
        while True:
            await self._step()
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.fleet.stop()


async def kubectl(kubeconfig: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


def pool_body(port: int, name: str = "mail", **spec: Any) -> dict[str, Any]:
    wanted: dict[str, Any] = {"replicas": 2, "throttling": {"rate": "100/s"}, **spec}
    return fake_senders.pool_body(name, port=port, ips=IPS, namespace=NS, **wanted)


def get(api: ApiServer, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
    items = [o for o in api.list(api_version, kind, NS) if o["metadata"]["name"] == name]
    return items[0] if items else None


def sts_replicas(api: ApiServer, name: str = "mail") -> int | None:
    sts = get(api, "apps/v1", "StatefulSet", name)
    return None if sts is None else int(sts["spec"]["replicas"])


@pytest.fixture
async def port() -> int:
    return free_port(f"127.0.0.{HOST_BASE}")


async def start_operator(
    api: ApiServer, kubeconfig: Path, dns: DNSServer, **overrides: Any
) -> OperatorRunner:
    install_crds(api)
    values: dict[str, Any] = {
        "lease_duration": 4.0,
        "lease_renew_interval": 1.0,  # a cycle every 0.5 s
        "lease_clock_skew": 0.5,
        "stats_interval": 0.3,
        "pod_admin_timeout": 1.0,
        **overrides,
    }
    runner = OperatorRunner(operator_settings(kubeconfig, dns, **values))
    await runner.start()
    return runner


@contextlib.asynccontextmanager
async def world(
    api: ApiServer, kubeconfig: Path, dns: DNSServer, port: int, **overrides: Any
) -> AsyncIterator[Kubelet]:
    runner = await start_operator(api, kubeconfig, dns, **overrides)
    kubelet = Kubelet(api, "mail", port)
    kubelet.operator = runner
    kubelet.start()
    try:
        yield kubelet
        # Whatever the test did, no IP was ever validly leased to two pods at once.
        assert kubelet.fleet.violations == [], kubelet.fleet.violations
    finally:
        await runner.stop()
        await kubelet.stop()


async def test_a_pool_run_by_the_operator_gets_children_status_and_printer_columns(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    async with world(kube_api, kubeconfig, dns_server, port) as kubelet:
        created = kube_api.create(pool_body(port))
        uid = created["metadata"]["uid"]
        children = [
            ("apps/v1", "StatefulSet", "mail"),
            ("v1", "Service", "mail"),
            ("v1", "Service", "mail-pods"),
            ("v1", "ConfigMap", "mail-config"),
            ("policy/v1", "PodDisruptionBudget", "mail"),
            ("v1", "Secret", "mail-admin"),
        ]
        for api_version, kind, name in children:
            child = await wait_for(
                lambda v=api_version, k=kind, n=name: get(kube_api, v, k, n),  # type: ignore[misc]
                message=f"{kind} {name}",
            )
            owner = child["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["uid"], owner["controller"]) == (
                "SendingPool", uid, True
            ), kind

        def ready() -> dict[str, Any] | None:
            body = kube_api.get(API, "SendingPool", "mail", NS)
            cond = condition(body, "Ready")
            return body if cond and cond["status"] == "True" else None

        body = await wait_for(ready, message="Ready=True")
        status = body["status"]
        assert status["observedGeneration"] == body["metadata"]["generation"]
        assert {c["type"] for c in status["conditions"]} >= {
            "Ready", "Degraded", "FailingOver", "Progressing"
        }
        assert all(c["observedGeneration"] == 1 for c in status["conditions"])
        assert sorted((ip["address"], ip["state"]) for ip in status["ips"]) == [
            (IPS[0], "Active"), (IPS[1], "Active")
        ]
        # the status names the holders; their leases reach the pods over the admin API
        await wait_for(lambda: sorted(s.addresses[0] for s in kubelet.senders.values()
                                      if s.leases) == IPS, message="both IPs leased to pods")
        assert status["selector"] == (
            "app.kubernetes.io/name=mailfleet-sender,mailfleet.io/pool=mail"
        )

        assert kubelet.operator is not None
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{kubelet.operator.http_port}/metrics"
        ) as response:
            text = await response.text()
        assert 'mailfleet_operator_pool_ips{state="Active"} 2.0' in text
        assert 'mailfleet_operator_reconciles_total{kind="SendingPool"}' in text

        # The printer columns, served as a Table (Replicas is a `-o wide` column).
        table = await kubectl(kubeconfig, "get", "sp", "-n", NS, "-o", "wide")
        header, row = (re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[:2])
        assert header[:5] == ["NAME", "READY", "ACTIVE IPS", "QUEUE", "REPLICAS"]
        assert row[:5] == ["mail", "True", "2", "0", "2"]

        # Deleting the pool deletes what it owns (garbage collection by owner reference).
        kube_api.delete(API, "SendingPool", "mail", NS)
        for api_version, kind, name in children:
            await wait_for(
                lambda v=api_version, k=kind, n=name: get(kube_api, v, k, n) is None,  # type: ignore[misc]
                message=f"{kind} {name} deleted",
            )
        await wait_for(lambda: kubelet.pods() == [], message="pods deleted")


def pool_status(api: ApiServer, name: str = "mail") -> dict[str, Any]:
    return api.get(API, "SendingPool", name, NS).get("status") or {}


def rendered_config(api: ApiServer, name: str = "mail") -> dict[str, Any]:
    cm = get(api, "v1", "ConfigMap", f"{name}-config")
    return yaml.safe_load(cm["data"]["sender.yaml"]) if cm else {}


def pod_uids(api: ApiServer, name: str = "mail") -> dict[str, str]:
    pods = api.list("v1", "Pod", NS, label_selector=f"mailfleet.io/pool={name}")
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}


async def test_a_spec_change_rerenders_the_config_without_restarting_pods_and_kubectl_scale_works(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    async with world(kube_api, kubeconfig, dns_server, port) as kubelet:
        kube_api.create(pool_body(port))
        await wait_for(
            lambda: pool_status(kube_api).get("activeIPs") == 2, message="two active IPs"
        )
        assert rendered_config(kube_api)["throttles"]["rate"] == "50/s"  # 100/s over 2 pods
        template = kube_api.get("apps/v1", "StatefulSet", "mail", NS)["spec"]["template"]
        uids = pod_uids(kube_api)
        assert len(uids) == 2

        # Only the config changes: the ConfigMap is re-rendered, the pods keep running.
        kube_api.patch(API, "SendingPool", "mail", {"spec": {"throttling": {"rate": "300/s"}}},
                       NS)
        await wait_for(
            lambda: rendered_config(kube_api)["throttles"]["rate"] == "150/s",
            message="the config re-rendered",
        )
        await wait_for(
            lambda: pool_status(kube_api).get("observedGeneration") == 2,
            message="generation 2 observed",
        )
        assert kube_api.get("apps/v1", "StatefulSet", "mail", NS)["spec"]["template"] == template
        assert pod_uids(kube_api) == uids

        # The scale subresource: kubectl scale sets spec.replicas, the StatefulSet follows.
        await kubectl(kubeconfig, "scale", "sp/mail", "-n", NS, "--replicas=3")
        await wait_for(lambda: sts_replicas(kube_api) == 3, message="StatefulSet at 3")
        await wait_for(lambda: len(kubelet.pods()) == 3, message="three pods")
        await wait_for(
            lambda: pool_status(kube_api).get("readyReplicas") == 3, message="3 ready replicas"
        )
        # Two IPs, three active pods: the rate is divided among the two that can send.
        assert rendered_config(kube_api)["throttles"]["rate"] == "150/s"
        scale = json.loads(await kubectl(kubeconfig, "get", "sp/mail", "-n", NS,
                                         "--subresource=scale", "-o", "json"))
        assert scale["spec"]["replicas"] == 3
        assert scale["status"]["replicas"] == 3
        assert kube_api.get("apps/v1", "StatefulSet", "mail", NS)["spec"]["template"] == template


def pvcs(api: ApiServer) -> list[str]:
    return sorted(p["metadata"]["name"] for p in api.list("v1", "PersistentVolumeClaim", NS))


def events(api: ApiServer, reason: str) -> list[str]:
    return [e["message"] for e in api.list("v1", "Event", NS) if e["reason"] == reason]


async def scale_down_to_one(api: ApiServer, kubelet: Kubelet, port: int) -> FakeSender:
    """A two-pod pool, pod 1 with mail queued, scaled to one: pod 1 is released and drained."""
    api.create(pool_body(port))
    await wait_for(lambda: pool_status(api).get("activeIPs") == 2, message="two active IPs")
    leaving = kubelet.senders["mail-1"]
    leaving.queue = 5
    api.patch(API, "SendingPool", "mail", {"spec": {"replicas": 1}}, NS)
    await wait_for(lambda: leaving.drains, message="the leaving pod asked to drain")
    assert leaving.drains == [True]  # with hand-off of its queue to the pods that stay
    return leaving


async def test_a_scale_down_waits_until_the_drained_pod_reports_an_empty_queue(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    async with world(kube_api, kubeconfig, dns_server, port, drain_timeout=60) as kubelet:
        leaving = await scale_down_to_one(kube_api, kubelet, port)
        # Its IP moves to the pod that stays, and it keeps reporting a queue: no shrink.
        await wait_for(
            lambda: leaving.leases == [] and kubelet.senders["mail-0"].addresses == IPS,
            message="both IPs on mail-0",
        )
        reads = leaving.stats_reads
        await wait_for(lambda: leaving.stats_reads >= reads + 3, message="three more stats reads")
        assert sts_replicas(kube_api) == 2
        progressing = condition(kube_api.get(API, "SendingPool", "mail", NS), "Progressing")
        assert progressing and "waiting for pods to drain" in progressing["message"]

        leaving.queue = 0  # the hand-off is done
        await wait_for(lambda: sts_replicas(kube_api) == 1, message="StatefulSet at 1")
        await wait_for(lambda: kubelet.pods() == ["mail-0"], message="mail-1 removed")
        assert "spool-mail-1" in pvcs(kube_api)  # spool volumes are retained on scale-down
        assert events(kube_api, "DrainTimedOut") == []


async def test_a_scale_down_goes_ahead_after_the_drain_timeout_and_keeps_the_spool(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    timeout = 1.5
    async with world(kube_api, kubeconfig, dns_server, port, drain_timeout=timeout) as kubelet:
        leaving = await scale_down_to_one(kube_api, kubelet, port)
        drained_at = asyncio.get_running_loop().time()
        await wait_for(lambda: sts_replicas(kube_api) == 1, message="StatefulSet at 1")
        assert asyncio.get_running_loop().time() - drained_at >= timeout - 0.6
        assert leaving.queue == 5  # it never emptied
        assert "spool-mail-1" in pvcs(kube_api)  # the mail is still there for a scale-up
        message = await wait_for(lambda: events(kube_api, "DrainTimedOut"), message="event")
        assert "mail-1" in message[0] and "5" in message[0]


async def test_an_autoscaled_pool_follows_the_queue_up_at_once_and_down_after_the_window(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    window = 2.0
    async with world(
        kube_api, kubeconfig, dns_server, port, autoscale_stabilization=window
    ) as kubelet:
        body = pool_body(
            port, autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetQueuePerReplica": 10}
        )
        del body["spec"]["replicas"]
        kube_api.create(body)
        await wait_for(lambda: kubelet.senders.get("mail-0"), message="mail-0 running")
        await wait_for(lambda: pool_status(kube_api).get("activeIPs") == 2, message="IPs active")
        assert sts_replicas(kube_api) == 1  # minReplicas with an empty queue

        kubelet.senders["mail-0"].queue = 25  # ceil(25 / 10) = 3 pods, at once
        await wait_for(lambda: sts_replicas(kube_api) == 3, message="StatefulSet at 3")
        await wait_for(lambda: len(kubelet.pods()) == 3, message="three pods")
        # the cycle posts its events after its writes: wait for it, not for the pods
        await wait_for(lambda: any("1 -> 3 active pods" in m
                                   for m in events(kube_api, "Autoscaled")),
                       message="Autoscaled 1 -> 3 event")

        kubelet.senders["mail-0"].queue = 0
        emptied_at = asyncio.get_running_loop().time()
        await wait_for(lambda: sts_replicas(kube_api) == 1, within=15, message="back to 1")
        # The last high recommendation is at most one cycle (0.5 s) older than the empty queue.
        assert asyncio.get_running_loop().time() - emptied_at >= window - 0.5
        await wait_for(lambda: any("3 -> 1 active pods" in m
                                   for m in events(kube_api, "Autoscaled")),
                       message="Autoscaled 3 -> 1 event")
        assert all(kubelet.senders[p].drains == [True] for p in ("mail-1", "mail-2"))


def node(name: str, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


async def test_the_operator_sees_nodes_and_moves_the_ip_of_a_pod_on_a_failed_node(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer, port: int
) -> None:
    for name in ("node-a", "node-b"):
        kube_api.create(node(name, True))
        kube_api.patch("v1", "Node", name, {"status": node(name, True)["status"]},
                       subresource="status")
    async with node_heartbeats(kube_api, ["node-a", "node-b"]), \
            world(kube_api, kubeconfig, dns_server, port) as kubelet:
        kube_api.create(pool_body(port, replicas=1, standbyReplicas=1))
        await wait_for(lambda: len(kubelet.senders) == 2, message="two pods running")
        for pod, where in (("mail-0", "node-a"), ("mail-1", "node-b")):
            await kube_api.set_pod_status(NS, pod, node_name=where,
                                          pod_ip=kubelet.senders[pod].host)

        def holders() -> set[str | None]:
            return {ip.get("pod") for ip in pool_status(kube_api).get("ips") or []}

        # One active pod: both IPs on whichever pod was Ready first (on a busy machine not
        # always mail-0), the other one the standby.
        await wait_for(lambda: len(holders()) == 1 and None not in holders(),
                       message="both IPs on one pod")
        (active,) = holders()
        assert active is not None
        standby = "mail-1" if active == "mail-0" else "mail-0"
        failed_node = "node-a" if active == "mail-0" else "node-b"
        kube_api.patch("v1", "Node", failed_node,
                       {"status": node(failed_node, False)["status"]}, subresource="status")
        await wait_for(lambda: holders() == {standby}, message="both IPs on the standby")
        # The grant reaches the standby's sender within the cycle that wrote the status.
        await wait_for(lambda: kubelet.senders[standby].addresses == IPS,
                       message="the standby holding both IPs")
        assert kubelet.senders[active].leases == []  # released (the pod still answered)
        assert events(kube_api, "IPFailingOver")
        assert kubelet.fleet.violations == []  # never held by both pods at one moment
