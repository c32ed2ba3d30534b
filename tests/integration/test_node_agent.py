"""The sandbox node agent against the API emulator and, as the kubelet of its nodes, against
the real control plane (kube-scheduler binds, the node-lifecycle controller notices): pods
run as processes on their own 127.x address, see their env and volumes where the spec puts
them, restart, and follow their node."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
from mailfleet_sandbox import node_agent as agent_module
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sandbox.node_agent import NodeAgent
from sandbox_fixtures.node_agent import ECHO_PORT, echo_pod, eventually

CHECKOUT = Path(agent_module.__file__).resolve().parents[2]


def _pod(api: ApiServer, name: str) -> dict[str, Any]:
    return api.get("v1", "Pod", name, "default")


def _condition(obj: dict[str, Any], typ: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == typ), {})


def _ready(api: ApiServer, name: str) -> bool:
    return _condition(_pod(api, name), "Ready").get("status") == "True"


async def _http(url: str, within: float = 1.0) -> tuple[int, bytes] | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as s, \
                s.get(url) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def test_pod_runs_with_its_ip_env_and_configmap_at_the_mount_path(
        kube_api: ApiServer, node_agent: NodeAgent) -> None:
    kube_api.create({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "echo-config", "namespace": "default"},
                     "data": {"config.yaml": "greeting: hello\n"}})
    pod = echo_pod("echo-0", nodeName="node-b", volumes=[
        {"name": "config", "configMap": {"name": "echo-config"}}], container={
        "volumeMounts": [{"name": "config", "mountPath": "/etc/echo", "readOnly": True}],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "GREETING", "value": "hi $(POD_NAME)"}]})
    kube_api.create(pod)
    await eventually(lambda: _ready(kube_api, "echo-0"))
    status = _pod(kube_api, "echo-0")["status"]
    ip = status["podIP"]
    assert ip.startswith("127.") and status["phase"] == "Running"
    assert status["hostIP"] != ip and status["containerStatuses"][0]["ready"] is True

    answer = await _http(f"http://{ip}:{ECHO_PORT}/env")
    assert answer is not None
    env = json.loads(answer[1])
    assert (env["POD_IP"], env["POD_NAME"], env["NODE"]) == (ip, "echo-0", "node-b")
    assert env["GREETING"] == "hi echo-0"
    seen = await _http(f"http://{ip}:{ECHO_PORT}/file?path=/etc/echo/config.yaml")
    assert seen == (200, b"greeting: hello\n")

    volume = node_agent.volume_path("default", "echo-0", "config")
    before = os.readlink(volume / "..data")
    assert os.readlink(volume / "config.yaml") == "..data/config.yaml"
    kube_api.patch("v1", "ConfigMap", "echo-config", {"data": {"config.yaml": "greeting: bye\n"}},
                   "default")

    async def updated() -> bool:
        seen = await _http(f"http://{ip}:{ECHO_PORT}/file?path=/etc/echo/config.yaml")
        return seen == (200, b"greeting: bye\n")
    await eventually(updated)
    assert os.readlink(volume / "..data") != before
    assert not (volume / before).exists()
    log_text = await asyncio.to_thread(node_agent.log_path("default", "echo-0").read_text)
    assert "echo-pod listening" in log_text


async def test_killed_process_restarts_and_counts(kube_api: ApiServer,
                                                  node_agent: NodeAgent) -> None:
    """A killed container process is started again: restartCount goes up, the pod is Ready
    again on the same IP; a failing liveness probe restarts it too. Counts are lower bounds:
    under load a slow start may fail liveness once more, and a kubelet restarts it again."""
    # The initial delay lets a fresh process listen before liveness may fail twice (1 s and
    # 0.2 s at the fixture's time scale): a kubelet kills a slower start over and over.
    kube_api.create(echo_pod("echo-r", nodeName="node-a", container={
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": ECHO_PORT},
                          "initialDelaySeconds": 10, "periodSeconds": 1,
                          "failureThreshold": 2}}))
    await eventually(lambda: _ready(kube_api, "echo-r"), within=60.0)
    ip = node_agent.pod_ip("default", "echo-r")
    first = node_agent.pod_pids("default", "echo-r")
    before = _pod(kube_api, "echo-r")["status"]["containerStatuses"][0]["restartCount"]
    assert node_agent.kill_pod_process("default", "echo-r", signal.SIGKILL) == first

    def restarted() -> dict[str, Any] | None:
        cs = _pod(kube_api, "echo-r")["status"]["containerStatuses"][0]
        return cs if cs["restartCount"] > before and cs["ready"] else None
    cs = await eventually(restarted, within=60.0)
    terminated = cs["lastState"]["terminated"]
    if cs["restartCount"] == before + 1:  # the kill was the only restart: its exit code
        assert terminated["exitCode"] == 128 + signal.SIGKILL
    else:
        assert terminated["exitCode"] != 0
    assert node_agent.pod_pids("default", "echo-r") != first
    assert await _http(f"http://{ip}:{ECHO_PORT}/healthz", within=10.0) == (200, b"ok")
    count = cs["restartCount"]

    await _http(f"http://{ip}:{ECHO_PORT}/break")  # liveness now fails: the kubelet restarts

    def restarted_again() -> bool:
        cs = _pod(kube_api, "echo-r")["status"]["containerStatuses"][0]
        return bool(cs["restartCount"] > count and cs["ready"])
    await eventually(restarted_again, within=60.0)


async def test_failed_node_turns_pod_unready_and_healing_restores_it(
        kube_api: ApiServer, node_agent: NodeAgent) -> None:
    # Tolerating the unreachable taint for ever, the pod waits out the partition on its node
    # (else the taint manager evicts it after the default 5 s once the node is Unknown).
    kube_api.create(echo_pod("echo-f", nodeName="node-a", tolerations=[
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
         "effect": "NoExecute"}]))
    await eventually(lambda: _ready(kube_api, "echo-f"))
    ip = node_agent.pod_ip("default", "echo-f")

    await node_agent.fail_node("node-a")

    def unreachable() -> dict[str, Any] | None:
        # At once on the emulator; on a real control plane the node-lifecycle controller
        # notices the missing heartbeats after its grace period (8 s in the sandbox).
        node = kube_api.get("v1", "Node", "node-a")
        taints = {t["key"] for t in (node.get("spec") or {}).get("taints") or []}
        unknown = _condition(node, "Ready").get("status") == "Unknown"
        return node if unknown and "node.kubernetes.io/unreachable" in taints else None
    await eventually(unreachable, within=60.0)
    await eventually(lambda: not _ready(kube_api, "echo-f"), within=30.0)
    assert await _http(f"http://{ip}:{ECHO_PORT}/healthz", within=0.3) is None  # frozen

    await node_agent.heal_node("node-a")
    assert _condition(kube_api.get("v1", "Node", "node-a"), "Ready")["status"] == "True"
    await eventually(lambda: _ready(kube_api, "echo-f"))
    assert await _http(f"http://{ip}:{ECHO_PORT}/healthz") == (200, b"ok")


async def test_unknown_image_stays_pending_with_a_reason(kube_api: ApiServer,
                                                         node_agent: NodeAgent) -> None:
    kube_api.create(echo_pod("mystery", nodeName="node-a",
                             container={"image": "example.test/mystery:1"}))

    def waiting() -> dict[str, Any] | None:
        status = _pod(kube_api, "mystery").get("status") or {}
        for cs in status.get("containerStatuses") or []:
            if (cs["state"].get("waiting") or {}).get("reason") in ("ErrImagePull",
                                                                    "ImagePullBackOff"):
                return status
        return None
    status = await eventually(waiting)
    assert status["phase"] == "Pending"
    message = status["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "example.test/mystery:1 is not known to the sandbox node agent" in message


async def test_deleting_a_pod_stops_its_process(kube_api: ApiServer,
                                                node_agent: NodeAgent) -> None:
    kube_api.create(echo_pod("echo-d", nodeName="node-b"))
    await eventually(lambda: _ready(kube_api, "echo-d"))
    ip = node_agent.pod_ip("default", "echo-d")
    (pid,) = node_agent.pod_pids("default", "echo-d")
    kube_api.delete("v1", "Pod", "echo-d", "default")

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    await eventually(gone)
    assert await _http(f"http://{ip}:{ECHO_PORT}/healthz", within=0.3) is None
    await eventually(lambda: not kube_api.list("v1", "Pod", "default"))


async def test_scheduler_honours_selectors_and_taints(kube_api: ApiServer,
                                                      node_agent: NodeAgent) -> None:
    kube_api.create(echo_pod("nowhere", nodeSelector={"topology.kubernetes.io/zone": "z"}))

    def unschedulable() -> str:
        cond = _condition(_pod(kube_api, "nowhere"), "PodScheduled")
        return str(cond.get("message")) if cond.get("reason") == "Unschedulable" else ""
    message = await eventually(unschedulable)
    assert message.startswith("0/3 nodes are available")
    assert "didn't match Pod's node affinity/selector" in message

    kube_api.create(echo_pod("zoned", nodeSelector={"topology.kubernetes.io/zone": "c"},
                             tolerations=[{"key": "dedicated", "operator": "Equal",
                                           "value": "mail", "effect": "NoSchedule"}]))
    kube_api.create(echo_pod("untolerated", nodeSelector={"topology.kubernetes.io/zone": "c"}))
    await eventually(lambda: _ready(kube_api, "zoned"))
    assert _pod(kube_api, "zoned")["spec"]["nodeName"] == "node-c"
    cond = await eventually(lambda: _condition(_pod(kube_api, "untolerated"), "PodScheduled")
                            .get("reason") == "Unschedulable" and True)
    assert cond
    # kube-scheduler 1.37 says "untolerated taint(s)"; older ones named the taint.
    assert "untolerated taint" in _condition(
        _pod(kube_api, "untolerated"), "PodScheduled")["message"]


async def test_a_volume_over_the_checkout_does_not_hide_the_python_that_runs_the_pod(
        kube_api: ApiServer, node_agent: NodeAgent) -> None:
    """An emptyDir mounted over an ancestor of this checkout (as `/tmp` is for a sender pod
    when CI clones under /tmp) still lets the pod's Python and sources start."""
    covering = str(CHECKOUT.parent)
    kube_api.create(echo_pod("echo-covered", nodeName="node-a", volumes=[
        {"name": "scratch", "emptyDir": {}}], container={
        "volumeMounts": [{"name": "scratch", "mountPath": covering}]}))
    await eventually(lambda: _ready(kube_api, "echo-covered"))
    ip = _pod(kube_api, "echo-covered")["status"]["podIP"]
    answer = await _http(f"http://{ip}:{ECHO_PORT}/env")
    assert answer is not None and answer[0] == 200
