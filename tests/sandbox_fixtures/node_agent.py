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
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mailfleet_sandbox import kubelet
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.external_dns import ExternalDNS
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sandbox.node_agent import NodeAgent, NodeSpec

if TYPE_CHECKING:  # imported late: every fixture module loads as a plugin, in name order
    from sandbox_fixtures.real_cluster import RealCluster

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


def cluster_access(cluster: RealCluster) -> kubelet.ClusterAccess:
    """How the agent's kubelets reach the real control plane: one `system:node:<node>`
    client certificate per node (as world.py gives them)."""
    plane = cluster.plane.plane

    def credentials(node: str) -> tuple[Path, Path]:
        pair = plane.pki.client(f"node-{node}", f"system:node:{node}", ("system:nodes",))
        return pair.cert, pair.key

    return kubelet.ClusterAccess(url=plane.url, ca=plane.pki.ca.cert,
                                 node_credentials=credentials, service_host=plane.host,
                                 service_port=plane.port)


@pytest.fixture
async def node_agent(kube_api: ApiServer | RealCluster, tmp_path: Path
                     ) -> AsyncIterator[NodeAgent]:
    """A started NodeAgent (nodes SANDBOX_NODES) that knows ECHO_IMAGE; on the real control
    plane, the kubelet of its nodes (kube-scheduler binds, the node-lifecycle controller
    watches its leases)."""
    base = f"127.{random.randrange(64, 250)}.{random.randrange(0, 256)}."
    from sandbox_fixtures.real_cluster import RealCluster

    cluster = cluster_access(kube_api) if isinstance(kube_api, RealCluster) else None
    async with NodeAgent(kube_api.url, SANDBOX_NODES, tmp_path / "agent",
                         images={"sandbox-test/echo": [sys.executable, str(ECHO_SCRIPT)]},
                         pod_ip_base=base, probe_time_scale=0.1,
                         restart_backoff=(0.1, 1.0), max_termination_grace=2.0,
                         cluster=cluster) as agent:
        if isinstance(kube_api, RealCluster):
            await eventually(lambda: nodes_schedulable(kube_api), within=60.0)
        yield agent


def nodes_schedulable(api: RealCluster) -> bool:
    """Every sandbox node Ready, with only its own taints: the node-lifecycle controller
    taints a node `not-ready` until it has seen it Ready (`kubectl wait --for
    condition=Ready node --all` and a look at the taints)."""
    nodes = {n["metadata"]["name"]: n for n in api.list("v1", "Node")}
    for spec in SANDBOX_NODES:
        node = nodes.get(spec.name)
        if node is None:
            return False
        ready = [c for c in (node.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Ready" and c.get("status") == "True"]
        taints = {t["key"] for t in (node.get("spec") or {}).get("taints") or []}
        if not ready or taints != {t["key"] for t in spec.taints}:
            return False
    return True


@pytest.fixture
async def external_dns(kube_api: ApiServer, dns_server: DNSServer,
                       kube_tls: ssl.SSLContext | None) -> AsyncIterator[ExternalDNS]:
    """DNSEndpoints in `kube_api` served by `dns_server` (CRD registered), without lag."""
    async with ExternalDNS(kube_api.url, dns_server, ssl_context=kube_tls) as feed:
        yield feed
