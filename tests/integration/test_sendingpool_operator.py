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
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sender import wire
from sandbox_fixtures.operator import (
    OperatorRunner,
    condition,
    install_crds,
    operator_settings,
    wait_for,
)

NS = "default"
API = "mailfleet.io/v1alpha1"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
IPS = ["192.0.2.10", "192.0.2.11"]
HOST_BASE = 60  # pod N of the pool answers on 127.0.0.(HOST_BASE + N)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class FakeSender:
    """The admin API of one pod: keeps its leases, reports the queue the test sets."""

    def __init__(self, pod: str, host: str, port: int) -> None:
        self.pod, self.host, self.port = pod, host, port
        self.queue = 0
        self.leases: list[str] = []
        self.drains: list[bool] = []  # the `handoff` flag of every drain request
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def assignment(request: web.Request) -> web.Response:
            body = wire.Assignment.model_validate(await request.json())
            self.leases = [lease.address for lease in body.leases]
            answer = wire.AssignmentStatus(
                pod=self.pod,
                generation=body.generation,
                day=0,
                leases=[
                    wire.LeaseStatus(
                        address=lease.address,
                        helo_name=lease.helo_name,
                        expires_at=lease.expires_at,
                        valid=True,
                    )
                    for lease in body.leases
                ],
            )
            return web.json_response(answer.model_dump(mode="json", by_alias=True))

        async def stats(request: web.Request) -> web.Response:
            body = wire.Stats(
                pod=self.pod,
                draining=bool(self.drains),
                queues={"default": wire.QueueStats(depth=self.queue)},
            )
            return web.json_response(body.model_dump(mode="json", by_alias=True))

        async def drain(request: web.Request) -> web.Response:
            self.drains.append(bool((await request.json()).get("handoff")))
            return web.json_response({"draining": True})

        app = web.Application()
        app.router.add_put("/v1/assignment", assignment)
        app.router.add_get("/v1/stats", stats)
        app.router.add_post("/v1/drain", drain)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Kubelet:
    """Makes every pod of the pool Running and Ready with a fake sender behind its IP."""

    def __init__(self, api: ApiServer, pool: str, port: int) -> None:
        self.api, self.pool, self.port = api, pool, port
        self.senders: dict[str, FakeSender] = {}
        self._task: asyncio.Task[None] | None = None

    def pods(self) -> list[str]:
        items = self.api.list("v1", "Pod", NS, label_selector=f"mailfleet.io/pool={self.pool}")
        return sorted(p["metadata"]["name"] for p in items)

    async def _step(self) -> None:
        for pod in self.api.list("v1", "Pod", NS, label_selector=f"mailfleet.io/pool={self.pool}"):
            name = pod["metadata"]["name"]
            if (pod.get("status") or {}).get("podIP") or pod["metadata"].get("deletionTimestamp"):
                continue
            sender = self.senders.get(name)
            if sender is None:
                ordinal = int(name.rsplit("-", 1)[1])
                sender = FakeSender(name, f"127.0.0.{HOST_BASE + ordinal}", self.port)
                await sender.start()
                self.senders[name] = sender
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
        for sender in self.senders.values():
            await sender.stop()


async def kubectl(kubeconfig: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


def pool_body(port: int, name: str = "mail", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 2,
            "egress": {
                "ips": [
                    {"address": ip, "heloName": f"mta{i}.example.com"} for i, ip in enumerate(IPS)
                ]
            },
            "submission": {"http": {"port": port}},
            "throttling": {"rate": "100/s"},
            **spec,
        },
    }


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
    kubelet.start()
    try:
        yield kubelet
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
        assert sorted(s.leases[0] for s in kubelet.senders.values() if s.leases) == IPS
        assert status["selector"] == "app.kubernetes.io/name=mailfleet-sender,mailfleet.io/pool=mail"

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
