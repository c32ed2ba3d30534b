"""The Cilium egress gateway stand-in end to end: a CiliumEgressGatewayPolicy in the API and
real Pods run by the node agent; each pod opens TCP connections from its pod IP (as a sender
does in the Cilium attachment mode) to a listener on loopback, which records the peer address
the kernel delivers. The selected pod arrives from the egress IP, the other from its own pod
IP, and unlabelling the pod or deleting the policy stops the translation.

Needs nft and the right to change the ruleset (root): skipped otherwise, with what is missing
(`make sandbox-tools` installs nft).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from mailfleet_sandbox import egress_gateway as egw
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sandbox.kube.errors import ApiError
from mailfleet_sandbox.node_agent import NodeAgent
from sandbox_fixtures.node_agent import ECHO_IMAGE, eventually

HOLDER_LABEL = "egress.mailfleet.io/holder"
WITHIN = 60.0
"""A condition's deadline: pods start and rules apply within seconds, more with both cores
busy."""

CLIENT = """
import os, socket, time
name = os.environ["POD_NAME"].encode() + b"\\n"
target = (os.environ["TARGET_HOST"], int(os.environ["TARGET_PORT"]))
source = (os.environ["POD_IP"], 0)
while True:
    try:
        with socket.create_connection(target, timeout=2, source_address=source) as conn:
            conn.sendall(name)
            conn.recv(1)
    except OSError:
        pass
    time.sleep(0.1)
"""
"""A pod that connects from its pod IP to TARGET again and again, saying its name."""


@functools.cache
def _nft_missing() -> str | None:
    return egw.nft_unusable_reason()


@pytest.fixture
def nft_ready() -> None:
    reason = _nft_missing()
    if reason is not None:
        pytest.skip(f"egress gateway stand-in unavailable: {reason}")


@dataclass
class Listener:
    """Records (pod name, peer address) of every connection, in arrival order."""

    host: str
    port: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            name = (await reader.readline()).decode().strip()
            if name:
                self.seen.append((name, peer))
            writer.write(b"k")
            await writer.drain()
        writer.close()

    def peers_since(self, mark: int, pod: str) -> list[str]:
        return [peer for name, peer in self.seen[mark:] if name == pod]


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    spot = Listener(f"127.0.41.{random.randrange(2, 250)}")
    server = await asyncio.start_server(spot.handle, spot.host, 0)
    spot.port = int(server.sockets[0].getsockname()[1])
    async with server:
        yield spot


def client_pod(name: str, listener: Listener, labels: dict[str, str]) -> dict[str, Any]:
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "TARGET_HOST", "value": listener.host},
           {"name": "TARGET_PORT", "value": str(listener.port)}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "client", "image": ECHO_IMAGE, "command": ["python", "-c", CLIENT],
                "env": env}]}}


def holder_policy(name: str, egress_ip: str) -> dict[str, Any]:
    """What the operator writes for one egress IP: its holder label in its namespace."""
    return {"apiVersion": egw.API_VERSION, "kind": egw.KIND, "metadata": {"name": name},
            "spec": {
                "selectors": [{
                    "podSelector": {"matchLabels": {HOLDER_LABEL: "true"}},
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "default"}}}],
                "destinationCIDRs": ["0.0.0.0/0"],
                "egressGateway": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                                  "egressIP": egress_ip}}}


def pod_ip(api: ApiServer, name: str) -> str:
    return str((api.get("v1", "Pod", name, "default").get("status") or {}).get("podIP") or "")


async def arrives_from(listener: Listener, pod: str, address: str, mark: int) -> int:
    """Wait until the latest connection `pod` opened after `mark` arrived from `address`;
    the mark after it (rules change between connections, never during one)."""
    def check() -> int | None:
        peers = listener.peers_since(mark, pod)
        return len(listener.seen) if peers and peers[-1] == address else None

    return int(await eventually(check, within=WITHIN))


async def tables() -> set[str]:
    listing = json.loads(await egw.run_nft("-j", "list", "tables"))
    return {item["table"]["name"] for item in listing["nftables"] if "table" in item}


async def test_the_selected_pod_leaves_from_the_egress_ip_until_unlabelled_or_unselected(
        nft_ready: None, kube_api: ApiServer, kube_tls: ssl.SSLContext | None,
        node_agent: NodeAgent, listener: Listener) -> None:
    await egw.install_crd(kube_api)
    egress_ip = f"127.0.42.{random.randrange(2, 250)}"
    name = f"sandbox-test-{uuid.uuid4().hex[:8]}"
    kube_api.create(client_pod("holder", listener, {"app": "client", HOLDER_LABEL: "true"}))
    kube_api.create(client_pod("bystander", listener, {"app": "client"}))
    try:
        async with egw.EgressGateway(kube_api.url, ssl_context=kube_tls, resync=1.0) as gw:
            holder_ip = await eventually(lambda: pod_ip(kube_api, "holder"), within=WITHIN)
            bystander_ip = await eventually(lambda: pod_ip(kube_api, "bystander"),
                                            within=WITHIN)
            # no policy yet: both arrive from their pod IPs
            mark = await arrives_from(listener, "holder", holder_ip, 0)

            kube_api.create(holder_policy(name, egress_ip))
            mark = await arrives_from(listener, "holder", egress_ip, mark)
            await arrives_from(listener, "bystander", bystander_ip, mark)
            assert egress_ip not in {peer for pod, peer in listener.seen if pod == "bystander"}
            assert gw.table in await tables()

            # the operator moves the IP away: the label goes, the translation stops
            kube_api.patch("v1", "Pod", "holder", {"metadata": {"labels": {HOLDER_LABEL: None}}},
                           "default")
            mark = await arrives_from(listener, "holder", holder_ip, mark)

            # labelled again it is translated again, until the policy is deleted
            kube_api.patch("v1", "Pod", "holder",
                           {"metadata": {"labels": {HOLDER_LABEL: "true"}}}, "default")
            mark = await arrives_from(listener, "holder", egress_ip, mark)
            kube_api.delete(egw.API_VERSION, egw.KIND, name)
            await arrives_from(listener, "holder", holder_ip, mark)
            table = gw.table
        assert table not in await tables()  # the sandbox's table goes with it
    finally:
        with contextlib.suppress(ApiError, LookupError):  # cluster-scoped: not cleaned for us
            kube_api.delete(egw.API_VERSION, egw.KIND, name)
