"""Fixtures for the sandbox node agent and the external-dns stand-in: a `NodeAgent` with three
nodes on the `kube_api` emulator, `external_dns` feeding `dns_server`, and a tiny test image
(`ECHO_IMAGE`, tests/fixtures_data/echo_pod.py) whose HTTP server shows what the pod's process
sees.

Nodes: `node-a` (zone a), `node-b` (zone b), `node-c` (zone c, tainted `dedicated=mail:
NoSchedule`). Probe periods are scaled by 0.1 and crash back-off is short, so a test sees
readiness and restarts within a second or two. Each agent gets a random 127.x.y. pod range so
that concurrent test sessions on one machine never share a pod IP.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.external_dns import ExternalDNS
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sandbox.node_agent import NodeAgent, NodeSpec

ECHO_IMAGE = "sandbox-test/echo:1"
ECHO_SCRIPT = Path(__file__).resolve().parent.parent / "fixtures_data" / "echo_pod.py"
ECHO_PORT = 8080
SANDBOX_NODES = [
    NodeSpec("node-a", {"topology.kubernetes.io/zone": "a"}),
    NodeSpec("node-b", {"topology.kubernetes.io/zone": "b"}),
    NodeSpec("node-c", {"topology.kubernetes.io/zone": "c"},
             [{"key": "dedicated", "value": "mail", "effect": "NoSchedule"}]),
]


async def eventually(check: Callable[[], Awaitable[Any] | Any], within: float = 10.0,
                     interval: float = 0.05) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


def echo_pod(name: str, **spec: Any) -> dict[str, Any]:
    """A Pod manifest running the echo image with POD_IP from the downward API."""
    container: dict[str, Any] = {
        "name": "echo", "image": ECHO_IMAGE, "args": [str(ECHO_PORT)],
        "ports": [{"name": "http", "containerPort": ECHO_PORT}],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                           "periodSeconds": 1},
    }
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "echo"}},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 2, **spec}}


@pytest.fixture
async def node_agent(kube_api: ApiServer, tmp_path: Path) -> AsyncIterator[NodeAgent]:
    """A started NodeAgent (nodes SANDBOX_NODES) that knows ECHO_IMAGE."""
    base = f"127.{random.randrange(64, 250)}.{random.randrange(0, 256)}."
    async with NodeAgent(kube_api.url, SANDBOX_NODES, tmp_path / "agent",
                         images={"sandbox-test/echo": [sys.executable, str(ECHO_SCRIPT)]},
                         pod_ip_base=base, probe_time_scale=0.1,
                         restart_backoff=(0.1, 1.0), max_termination_grace=2.0) as agent:
        yield agent


@pytest.fixture
async def external_dns(kube_api: ApiServer, dns_server: DNSServer) -> AsyncIterator[ExternalDNS]:
    """DNSEndpoints in `kube_api` served by `dns_server` (CRD registered), without lag."""
    async with ExternalDNS(kube_api.url, dns_server) as feed:
        yield feed
