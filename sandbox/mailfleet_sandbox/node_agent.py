"""The sandbox node agent: a kubelet and scheduler stand-in (DESIGN.md §5).

`NodeAgent` registers sandbox Nodes in the API emulator and talks to it over HTTP only, like a
real kubelet: it watches Pods, ConfigMaps and Secrets, binds pending pods to nodes, runs each
container as a local process on the pod's own 127.x address, projects volumes, runs probes,
restarts crashed containers and writes `pods/status`. One agent plays every sandbox node's
kubelet, so it watches all pods rather than one `spec.nodeName` each.

Choices, and why:

- Scheduling: pods with no `spec.nodeName` (and schedulerName default-scheduler) go to a Ready
  node whose labels match `nodeSelector` and required node affinity and whose NoSchedule and
  NoExecute taints the pod tolerates; among those the one with fewest pods (spreading). Bound
  through the `pods/binding` subresource like kube-scheduler (a failed binding leaves the pod
  Pending and is logged). A pod that fits nowhere gets `PodScheduled=False, reason
  Unschedulable` with the scheduler's message format.
- Processes: an image maps to an argv prefix (its ENTRYPOINT); `command` replaces it,
  `args` follow it, `$(VAR)` is expanded from the container env as Kubernetes does. Images the
  table does not know keep the pod Pending with `ErrImagePull`, then `ImagePullBackOff`.
- Filesystem: every container starts in its own mount and UTS namespaces so that it sees its
  volumes at the pod spec's mountPaths and its pod name as hostname (see `volumes`); where
  namespaces are unavailable, mountPath prefixes in command, args and env are rewritten to
  host paths instead. ConfigMap and Secret volumes use the kubelet's atomic `..data` swap and
  are re-projected when the object changes (subPath mounts are not updated, as in Kubernetes).
  Volumes live in `workdir/pods/<ns>/<pod>/<uid>/volumes/<volume>` (per uid, like the
  kubelet, so a StatefulSet's replacement pod never shares the old one's directory); emptyDir
  lives as long as the pod; a persistentVolumeClaim is a directory per claim under
  `workdir/pvcs/<ns>/<claim>` that outlives pods (no PV binding is modelled).
- API access for pods: there are no service account tokens or TLS in the sandbox, so every
  pod gets `KUBECONFIG` pointing at a kubeconfig for the emulator (the operator uses it).
  `pod_api_servers` gives the pods of a namespace another address (a fault proxy in front of
  the API server), as kubeconfig or `KUBERNETES_SERVICE_HOST/PORT`.
- Node failure (`fail_node`) models a partition: the Node turns `Ready=Unknown` with the
  `node.kubernetes.io/unreachable` taints, its pods turn `Ready=False` (what the node lifecycle
  controller does), and their processes are frozen with SIGSTOP, so they neither answer nor
  send; the agent stops reporting for that node, as a cut-off kubelet would. Pods are not
  evicted. `processes="kill"` models a crashed machine instead (restarted on heal),
  `processes="keep"` leaves them running (note: still reachable on loopback). `heal_node`
  resumes the processes and reconciles whatever changed meanwhile.
- Deletion: a pod with a deletionTimestamp gets SIGTERM, then SIGKILL after its grace period
  (capped by `max_termination_grace`), then is deleted with grace 0, as the kubelet confirms
  a deletion. A pod removed outright from the API is stopped the same way.
- Probes: httpGet, tcpSocket and exec with the API's thresholds, in real seconds times
  `probe_time_scale`.
- Not modelled: resource limits, init containers (the pod waits with a clear reason), events,
  node heartbeats and Leases (Node status is written only when it changes), image pulls,
  eviction from failed nodes.

Logs of every container of a pod go to `workdir/logs/<ns>_<pod>.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import yaml

from mailfleet_sandbox import kubelet, volumes
from mailfleet_sandbox.api_watch import ApiClient, Informer, api_server_url
from mailfleet_sandbox.container_env import _now
from mailfleet_sandbox.pod_scheduling import NodeView, choose_node
from mailfleet_sandbox.pod_worker import _PodWorker

JSON = dict[str, Any]
log = logging.getLogger(__name__)

UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
KUBELET_VERSION = "v1.30.0-mailfleet-sandbox"


@dataclass(frozen=True)
class NodeSpec:
    """A sandbox node: labels and taints (`{"key", "value", "effect"}`) as on a Node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()


# --------------------------------------------------------------------------- the agent
class NodeAgent:
    """Sandbox nodes, their kubelet and the scheduler; see the module docstring.

    `api` is the API server URL or a kubeconfig path. `images` maps an image name or prefix
    to the argv prefix that runs it (defaults: DEFAULT_IMAGE_SUBSTRINGS, unless
    `default_images=False`). `probe_time_scale` multiplies probe delays and periods.
    `restart_backoff` is (first delay, cap) for CrashLoopBackOff; a container that ran longer
    than `backoff_reset` seconds restarts at once. `isolation` "auto" uses mount namespaces
    when this machine allows them, "namespaces" requires them, "none" rewrites paths.
    """

    def __init__(self, api: str | Path, nodes: Sequence[NodeSpec], workdir: Path, *,
                 images: Mapping[str, Sequence[str]] | None = None,
                 default_images: bool = True, pod_ip_base: str = "127.0.100.",
                 node_ip_base: str = "127.0.99.", probe_time_scale: float = 1.0,
                 restart_backoff: tuple[float, float] = (0.5, 10.0),
                 backoff_reset: float = 10.0, max_termination_grace: float = 10.0,
                 isolation: Literal["auto", "namespaces", "none"] = "auto",
                 extra_env: Mapping[str, str] | None = None,
                 cluster: kubelet.ClusterAccess | None = None,
                 heartbeat_interval: float = 1.0, status_interval: float = 10.0,
                 refresh_interval: float = 1.0,
                 pod_api_servers: Mapping[str, str] | None = None) -> None:
        self.cluster = cluster
        self.api_url = cluster.url if cluster is not None else api_server_url(api)
        self.pod_api_servers = dict(pod_api_servers or {})
        """namespace -> the API server URL its pods are given instead of the agent's (e.g. a
        fault proxy in front of it); the node agent itself keeps talking to the API server."""
        self.heartbeat_interval = heartbeat_interval
        self.status_interval = status_interval
        self.refresh_interval = refresh_interval
        self.nodes = {n.name: n for n in nodes}
        self.workdir = Path(workdir)
        self.images = dict(images or {})
        self.default_images = default_images
        self.pod_ip_base = pod_ip_base
        self.node_ip_base = node_ip_base
        self.probe_time_scale = probe_time_scale
        self.restart_backoff = restart_backoff
        self.backoff_reset = backoff_reset
        self.max_termination_grace = max_termination_grace
        self.isolation = isolation
        self.namespaces = False
        self.base_env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                         "HOME": "/root", "PYTHONUNBUFFERED": "1"}
        for key in ("LANG", "LC_ALL", "TZ"):
            if key in os.environ:
                self.base_env[key] = os.environ[key]
        self.base_env.update(extra_env or {})
        self.log_dir = self.workdir / "logs"
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self.failed_nodes: set[str] = set()
        self.workers: dict[str, _PodWorker] = {}
        self._ips: dict[str, str] = {}
        self._next_ip = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: set[str] = set()
        self._unschedulable: dict[str, str] = {}
        self._bound: dict[str, str] = {}
        self._bind_failures: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._up = {name: asyncio.Event() for name in self.nodes}
        for event in self._up.values():
            event.set()
        self._client = ApiClient(self.api_url)
        self.pods = Informer(self._client, "/api/v1/pods", self._wake.set)
        self.configmaps = Informer(self._client, "/api/v1/configmaps", self._on_config)
        self.secrets = Informer(self._client, "/api/v1/secrets", self._on_config)
        self._node_clients: dict[str, ApiClient] = {}
        self.pod_informers = [self.pods]
        self.refs: kubelet.ReferencedObjects | None = None
        self._node_uids: dict[str, str] = {}
        if cluster is not None:
            # One kubelet identity per node: the Node authorizer lets each see only its pods
            # (field selector spec.nodeName) and the objects those pods reference.
            self._node_clients = {n: ApiClient(cluster.url, cluster.ssl_context(n))
                                  for n in self.nodes}
            self.pod_informers = [
                Informer(self._node_clients[n], f"/api/v1/pods?fieldSelector=spec.nodeName%3D{n}",
                         self._wake.set) for n in sorted(self.nodes)]
            self.refs = kubelet.ReferencedObjects(
                lambda node: self.client_for(node).request, self._on_config)

    # ----------------------------------------------------------- lifecycle
    async def __aenter__(self) -> NodeAgent:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> NodeAgent:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_kubeconfig()
        if self.isolation != "none":
            self.namespaces = await asyncio.to_thread(
                volumes.mount_namespaces_available, self.workdir / ".nsprobe")
            if not self.namespaces:
                if self.isolation == "namespaces":
                    raise RuntimeError("mount namespaces are not available on this machine")
                log.warning("mount namespaces unavailable: rewriting mountPaths in argv/env")
        for name in self.nodes:
            await self._write_node(name)
        informers = list(self.pod_informers) if self.cluster is not None else [
            self.configmaps, self.secrets, self.pods]
        for informer in informers:
            self._tasks.append(asyncio.create_task(informer.run()))
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in informers)), 30)
        self._tasks.append(asyncio.create_task(self._sync_loop()))
        if self.cluster is not None:
            self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
            self._tasks.append(asyncio.create_task(self._refresh_loop()))
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=10.0)
            if stuck:
                log.warning("node agent stop: %d loops did not end within 10 s", len(stuck))
        self._tasks = []
        # Bounded: a pod that will not stop must not hang the agent's shutdown (a test run's
        # teardown); whatever is left gets SIGKILL.
        stopping = [asyncio.create_task(w.stop(min(1.0, self.max_termination_grace)))
                    for w in self.workers.values()]
        if stopping:
            _, pending = await asyncio.wait(stopping, timeout=30.0)
            if pending:
                log.warning("node agent stop: %d pods did not stop within 30 s; killing them",
                            len(pending))
                for worker in self.workers.values():
                    for container in worker.containers:
                        container.signal(signal.SIGKILL)
                for task in pending:
                    task.cancel()
        self.workers.clear()
        await self._client.close()
        for client in self._node_clients.values():
            await client.close()

    @property
    def client(self) -> ApiClient:
        return self._client

    def client_for(self, node: str) -> ApiClient:
        """The client a node's kubelet uses: its own identity on a real control plane."""
        return self._node_clients.get(node, self._client)

    def pod_api_env(self, namespace: str = "") -> dict[str, str]:
        """How a pod's process reaches the API: in-cluster settings on a real control plane
        (with the service-account token the pod's projected volume holds), else a kubeconfig
        for the emulator, which has no authentication. Pods of a namespace in
        `pod_api_servers` are given that server instead."""
        override = self.pod_api_servers.get(namespace)
        if self.cluster is not None:
            if override is None:
                return self.cluster.pod_env()
            url = urllib.parse.urlsplit(override)
            return replace(self.cluster, service_host=url.hostname or "",
                           service_port=url.port or 443).pod_env()
        if override is None:
            return {"KUBECONFIG": str(self.kubeconfig_path)}
        path = self.workdir / f"kubeconfig-{namespace}"
        self._write_kubeconfig(path, override)
        return {"KUBECONFIG": str(path)}

    def all_pods(self) -> list[JSON]:
        return [p for informer in self.pod_informers for p in informer.items.values()]

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.client.session

    def _write_kubeconfig(self, path: Path | None = None, server: str | None = None) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "sandbox", "cluster": {"server": server or self.api_url}}],
            "users": [{"name": "sandbox", "user": {}}],
            "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox",
                                                         "user": "sandbox"}}],
            "current-context": "sandbox"}
        (path or self.kubeconfig_path).write_text(yaml.safe_dump(config, sort_keys=False))

    # --------------------------------------------------------------- nodes
    def node_ip(self, name: str) -> str:
        return f"{self.node_ip_base}{sorted(self.nodes).index(name) + 1}"

    def _node_status(self, name: str) -> JSON:
        failed = name in self.failed_nodes
        stamp = _now()
        ready = {"type": "Ready", "status": "Unknown" if failed else "True",
                 "reason": "NodeStatusUnknown" if failed else "KubeletReady",
                 "message": "Kubelet stopped posting node status." if failed
                 else "kubelet is posting ready status",
                 "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        pressure = [{"type": t, "status": "Unknown" if failed else "False",
                     "reason": "NodeStatusUnknown" if failed else f"KubeletHas{r}",
                     "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
                    for t, r in (("MemoryPressure", "SufficientMemory"),
                                 ("DiskPressure", "NoDiskPressure"),
                                 ("PIDPressure", "SufficientPID"))]
        capacity = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"}
        return {"conditions": [ready, *pressure],
                "addresses": [{"type": "InternalIP", "address": self.node_ip(name)},
                              {"type": "Hostname", "address": name}],
                "capacity": capacity, "allocatable": capacity,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                             "operatingSystem": "linux", "architecture": "amd64",
                             "containerRuntimeVersion": "sandbox-process://1",
                             "osImage": "mailfleet sandbox", "kernelVersion": os.uname().release,
                             "machineID": name, "systemUUID": name, "bootID": name}}

    def _node_taints(self, name: str) -> list[JSON]:
        taints = [dict(t) for t in self.nodes[name].taints]
        if name in self.failed_nodes:
            taints += [{"key": UNREACHABLE_TAINT, "effect": "NoSchedule", "timeAdded": _now()},
                       {"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": _now()}]
        return taints

    async def _write_node(self, name: str) -> None:
        spec = self.nodes[name]
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", **spec.labels}
        path = f"/api/v1/nodes/{name}"
        client = self.client_for(name)
        code, body = await client.request("GET", path, ok=(200, 404))
        if code == 404:
            code, body = await client.request("POST", "/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": self._node_taints(name)}})
            if code not in (200, 201):
                raise RuntimeError(f"cannot register Node {name}: {body.get('message')}")
        elif self.cluster is None:
            # The emulator has no node-lifecycle controller: the agent writes its taints.
            # A real kubelet may not change taints (NodeRestriction); the controller does.
            await client.request("PATCH", path, {
                "metadata": {"labels": labels}, "spec": {"taints": self._node_taints(name)}},
                "application/merge-patch+json")
        self._node_uids[name] = (body.get("metadata") or {}).get("uid", "")
        code, body = await client.request("PATCH", path + "/status",
                                          {"status": self._node_status(name)},
                                          "application/strategic-merge-patch+json")
        if code != 200:
            raise RuntimeError(f"cannot write Node {name} status: {body.get('message')}")
        if self.cluster is not None:
            await kubelet.renew_node_lease(client.request, name, self._node_uids[name])

    async def fail_node(self, name: str,
                        processes: Literal["freeze", "kill", "keep"] = "freeze") -> None:
        """Partition a node: NotReady (Unknown), pods unready, processes frozen (SIGSTOP)."""
        if name not in self.nodes:
            raise KeyError(name)
        self.failed_nodes.add(name)
        self._up[name].clear()
        if self.cluster is None:
            await self._write_node(name)
        for worker in list(self.workers.values()):
            if worker.node != name:
                continue
            for c in worker.containers:
                if processes == "freeze":
                    c.signal(signal.SIGSTOP)
                elif processes == "kill":
                    c.signal(signal.SIGKILL)
            if self.cluster is not None:
                continue  # the node-lifecycle controller marks its pods unready
            await self.client.request(
                "PATCH", f"/api/v1/namespaces/{worker.namespace}/pods/{worker.name}/status",
                {"status": {"conditions": [{"type": "Ready", "status": "False",
                                            "lastTransitionTime": _now()}]}},
                "application/strategic-merge-patch+json")

    async def heal_node(self, name: str) -> None:
        """End the partition: processes resume, the Node is Ready, status is re-reported."""
        self.failed_nodes.discard(name)
        self._up[name].set()
        for worker in self.workers.values():
            if worker.node == name:
                for c in worker.containers:
                    c.signal(signal.SIGCONT)
        await self._write_node(name)
        for worker in self.workers.values():
            if worker.node == name:
                worker.force_report()
        self._wake.set()

    async def node_up(self, name: str) -> None:
        """Return once the node is not failed (containers of a downed node do not restart)."""
        await self._up[name].wait()

    # ------------------------------------------------------------- helpers
    def _worker(self, namespace: str, name: str) -> _PodWorker:
        for worker in self.workers.values():
            if worker.namespace == namespace and worker.name == name and not worker.terminating:
                return worker
        raise KeyError(f"no running pod {namespace}/{name} on this agent")

    def kill_pod_process(self, namespace: str, name: str, sig: int = signal.SIGKILL,
                         container: str | None = None) -> list[int]:
        """Send a signal to a pod's container processes; returns the pids signalled."""
        pids = []
        for c in self._worker(namespace, name).containers:
            if container in (None, c.name) and c.proc is not None and c.signal(sig):
                pids.append(c.proc.pid)
        return pids

    def pod_ip(self, namespace: str, name: str) -> str:
        return self._worker(namespace, name).ip

    def pod_pids(self, namespace: str, name: str) -> list[int]:
        return [c.proc.pid for c in self._worker(namespace, name).containers
                if c.proc is not None and c.proc.returncode is None]

    def volume_path(self, namespace: str, name: str, volume: str) -> Path:
        """Where a pod's volume lives on the host (for tests that inspect the projection)."""
        return self._worker(namespace, name).volume_dir(volume)

    def log_path(self, namespace: str, name: str) -> Path:
        return self.log_dir / f"{namespace}_{name}.log"

    def _allocate_ip(self, uid: str) -> str:
        used = set(self._ips.values())
        for step in range(254):
            candidate = f"{self.pod_ip_base}{(self._next_ip + step) % 254 + 1}"
            if candidate not in used:
                self._next_ip = (self._next_ip + step + 1) % 254
                self._ips[uid] = candidate
                return candidate
        raise RuntimeError("the sandbox pod IP range is exhausted")

    def _on_config(self) -> None:
        for worker in self.workers.values():
            if not worker.node_failed() and not worker.terminating:
                worker.changed(worker.pod)
        self._wake.set()

    # ----------------------------------------------------------- reconcile
    async def _sync_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            try:
                await self._sync()
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("node agent sync failed: %s", exc)
                await asyncio.sleep(0.2)

    async def _sync(self) -> None:
        """Level-based: compare the pods the API has with the workers we run."""
        pods = self.all_pods()
        counts: dict[str, int] = {}
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName") or self._bound.get(
                (pod.get("metadata") or {}).get("uid", ""))
            if node:
                counts[node] = counts.get(node, 0) + 1
        live_uids = set()
        for pod in pods:
            meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
            uid = meta.get("uid", "")
            node = spec.get("nodeName")
            if not node:
                if self.cluster is not None:
                    continue  # kube-scheduler binds pods on a real control plane
                if uid not in self._bound and not meta.get("deletionTimestamp") and (
                        spec.get("schedulerName") or "default-scheduler") == "default-scheduler":
                    await self._schedule(pod, counts)
                continue
            self._bound.pop(uid, None)
            if node not in self.nodes or node in self.failed_nodes:
                continue  # not ours, or ours but cut off: a partitioned kubelet sees nothing
            live_uids.add(uid)
            worker = self.workers.get(uid)
            if meta.get("deletionTimestamp"):
                if uid not in self._stopping:
                    self._stopping.add(uid)
                    self._spawn(self._terminate(uid, pod, confirm=True))
                continue
            if worker is None:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                if spec.get("initContainers"):
                    await self._refuse(pod, "init containers are not supported by the sandbox "
                                            "node agent")
                    continue
                if self.refs is not None:
                    await self.refs.refresh([pod])
                worker = _PodWorker(self, pod, self._allocate_ip(uid))
                self.workers[uid] = worker
                log.info("starting pod=%s/%s node=%s ip=%s", worker.namespace, worker.name,
                         node, worker.ip)
                worker.start()
            elif pod is not worker.pod:
                worker.changed(pod)
        for uid, worker in list(self.workers.items()):
            if uid in live_uids or uid in self._stopping or worker.node in self.failed_nodes:
                continue
            self._stopping.add(uid)
            self._spawn(self._terminate(uid, None, confirm=False))

    async def _heartbeat_loop(self) -> None:
        """Node Leases every `heartbeat_interval`, NodeStatus every `status_interval`, for
        every node that is not failed: a failed node simply goes quiet, and the real
        node-lifecycle controller notices."""
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            post_status = time.monotonic() - last_status >= self.status_interval
            for name in sorted(self.nodes):
                if name in self.failed_nodes:
                    continue
                client = self.client_for(name)
                try:
                    await kubelet.renew_node_lease(client.request, name,
                                                   self._node_uids.get(name, ""))
                    if post_status:
                        await client.request("PATCH", f"/api/v1/nodes/{name}/status",
                                             {"status": self._node_status(name)},
                                             "application/strategic-merge-patch+json")
                except (aiohttp.ClientError, OSError) as exc:
                    log.warning("node heartbeat failed node=%s: %s", name, exc)
            if post_status:
                last_status = time.monotonic()

    async def _refresh_loop(self) -> None:
        """Re-read what running pods reference (ConfigMaps, Secrets, tokens) by name."""
        assert self.refs is not None
        while True:
            await asyncio.sleep(self.refresh_interval)
            pods = [w.pod for w in self.workers.values()
                    if not w.terminating and w.node not in self.failed_nodes]
            try:
                await self.refs.refresh(pods)
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("referenced objects refresh failed: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _terminate(self, uid: str, pod: JSON | None, confirm: bool) -> None:
        worker = self.workers.get(uid)
        try:
            if worker is not None:
                if pod is not None:
                    worker.pod = pod
                log.info("stopping pod=%s/%s", worker.namespace, worker.name)
                await worker.stop(worker.grace())
            if confirm and pod is not None:
                meta = pod["metadata"]
                node = (pod.get("spec") or {}).get("nodeName") or ""
                await self.client_for(node).request(
                    "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                     "preconditions": {"uid": uid}}, ok=(200, 202, 404, 409))
        finally:
            self.workers.pop(uid, None)
            self._ips.pop(uid, None)
            self._stopping.discard(uid)
            if self.refs is not None:
                self.refs.forget(uid)

    async def _refuse(self, pod: JSON, message: str) -> None:
        meta = pod["metadata"]
        key = meta.get("uid", "")
        if self._unschedulable.get(key) == message:
            return
        self._unschedulable[key] = message
        node = (pod.get("spec") or {}).get("nodeName") or ""
        await self.client_for(node).request(
            "PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
            {"status": {"phase": "Pending", "conditions": [
                {"type": "Initialized", "status": "False", "reason": "Unsupported",
                 "message": message, "lastTransitionTime": _now()}]}},
            "application/strategic-merge-patch+json")

    async def _schedule(self, pod: JSON, counts: dict[str, int]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        views = [NodeView(name, {"kubernetes.io/hostname": name, **n.labels},
                          self._node_taints(name), name not in self.failed_nodes,
                          counts.get(name, 0)) for name, n in sorted(self.nodes.items())]
        node, why = choose_node(spec, views)
        ns, name, uid = meta.get("namespace", ""), meta["name"], meta.get("uid", "")
        base = f"/api/v1/namespaces/{ns}/pods/{name}"
        if node is None:
            if self._unschedulable.get(uid) != why:
                self._unschedulable[uid] = why
                await self.client.request("PATCH", base + "/status", {"status": {
                    "phase": "Pending", "conditions": [{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": why, "lastProbeTime": None,
                        "lastTransitionTime": _now()}]}},
                    "application/strategic-merge-patch+json")
            return
        self._unschedulable.pop(uid, None)
        code, body = await self.client.request("POST", base + "/binding", {
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}},
            ok=(200, 201, 404, 409))
        if code not in (200, 201):
            if self._bind_failures.get(uid) != code:
                self._bind_failures[uid] = code
                log.warning("cannot bind pod=%s/%s node=%s code=%s: %s", ns, name, node, code,
                            body.get("message"))
            return
        self._bind_failures.pop(uid, None)
        log.info("scheduled pod=%s/%s node=%s", ns, name, node)
        self._bound[uid] = node
        counts[node] = counts.get(node, 0) + 1
        self._wake.set()
