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
import datetime
import json
import logging
import os
import re
import shutil
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import mailfleet_cli
import mailfleet_operator
import mailfleet_sender
import yaml

from mailfleet_sandbox import kubelet, probes, volumes

JSON = dict[str, Any]
log = logging.getLogger(__name__)

SENDER_ARGV = [sys.executable, "-m", "mailfleet_sender"]
OPERATOR_ARGV = [sys.executable, "-m", "mailfleet_cli"]
OPERATOR_CMD = ["operator", "run"]
DEFAULT_IMAGE_SUBSTRINGS: tuple[tuple[str, list[str]], ...] = (
    ("mailfleet-sender", SENDER_ARGV), ("mailfleet/sender", SENDER_ARGV),
    ("mailfleet-operator", OPERATOR_ARGV), ("mailfleet/operator", OPERATOR_ARGV),
)
"""Images every agent knows (their ENTRYPOINT): any image whose name contains one of these."""
DEFAULT_IMAGE_CMD: tuple[tuple[str, list[str]], ...] = (
    ("mailfleet-operator", OPERATOR_CMD), ("mailfleet/operator", OPERATOR_CMD),
)
"""The CMD of those images (operator/Dockerfile): the arguments when a pod gives none."""
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
KUBELET_VERSION = "v1.30.0-mailfleet-sandbox"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_paths_to_keep(workdir: Path) -> list[str]:
    """What a pod's process needs from the host filesystem: this Python environment, the
    project's source tree (editable installs import from it) and the agent's own files."""
    roots = {sys.prefix, sys.base_prefix, str(Path(workdir).resolve())}
    sources = [str(Path(m.__file__).resolve().parent.parent)
               for m in (mailfleet_cli, mailfleet_operator, mailfleet_sender,
                         sys.modules[__name__]) if m.__file__]
    roots.update(sources)
    roots.add(os.path.commonpath(sources))  # the checkout itself, for editable installs
    return sorted(roots)


@dataclass(frozen=True)
class NodeSpec:
    """A sandbox node: labels and taints (`{"key", "value", "effect"}`) as on a Node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()


# ------------------------------------------------------------------ scheduling (pure)
def tolerates(tolerations: Sequence[JSON], taint: Mapping[str, str]) -> bool:
    """Whether one of the pod's tolerations matches the taint (core/v1 semantics)."""
    for tol in tolerations:
        effect = tol.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = tol.get("key") or ""
        if tol.get("operator") == "Exists":
            if not key or key == taint.get("key"):
                return True
        elif key == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _expression_matches(expr: JSON, labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def affinity_matches(pod_spec: JSON, labels: Mapping[str, str]) -> bool:
    """nodeSelector and requiredDuringScheduling node affinity (terms are ORed)."""
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
               for term in terms)


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    taints: Sequence[Mapping[str, str]]
    ready: bool
    pods: int


def choose_node(pod_spec: JSON, nodes: Sequence[NodeView]) -> tuple[str | None, str]:
    """The node a pod goes to, or None and kube-scheduler's "0/N nodes are available" text."""
    fits: list[NodeView] = []
    reasons: dict[str, int] = {}
    tolerations = pod_spec.get("tolerations") or []
    for node in nodes:
        if not node.ready:
            reason = "node(s) were not ready"
        elif not affinity_matches(pod_spec, node.labels):
            reason = "node(s) didn't match Pod's node affinity/selector"
        else:
            bad = [t for t in node.taints if t.get("effect") in ("NoSchedule", "NoExecute")
                   and not tolerates(tolerations, t)]
            if bad:
                taint = bad[0]
                text = f"{taint.get('key')}: {taint.get('value')}" if taint.get("value") \
                    else str(taint.get("key"))
                reason = f"node(s) had untolerated taint {{{text}}}"
            else:
                fits.append(node)
                continue
        reasons[reason] = reasons.get(reason, 0) + 1
    if fits:
        return min(fits, key=lambda n: (n.pods, n.name)).name, ""
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return None, f"0/{len(nodes)} nodes are available: {detail}." if detail \
        else "0/0 nodes are available."


# --------------------------------------------------------------- container env (pure)
class ContainerConfigError(Exception):
    """The container cannot be created yet (CreateContainerConfigError)."""


def build_env(container: JSON, pod: JSON, lookup: volumes.Lookup) -> dict[str, str]:
    """env and envFrom, in the order Kubernetes applies them (envFrom first, env wins)."""
    out: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            obj = lookup(kind, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
            for key, value in volumes.object_data(kind, obj).items():
                out[prefix + key] = value.decode(errors="replace")
    for var in container.get("env") or []:
        name = var.get("name", "")
        if "value" in var or "valueFrom" not in var:
            out[name] = expand_vars(str(var.get("value") or ""), out)
            continue
        source = var["valueFrom"] or {}
        if "fieldRef" in source:
            try:
                out[name] = volumes.field_ref_value(pod, source["fieldRef"].get("fieldPath", ""))
            except volumes.VolumeError as exc:
                raise ContainerConfigError(str(exc)) from None
            continue
        for kind, ref_key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            obj = lookup(kind, ref.get("name", ""))
            data = volumes.object_data(kind, obj) if obj is not None else None
            if data is None or ref.get("key") not in data:
                if ref.get("optional"):
                    break
                if data is None:
                    raise ContainerConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
                raise ContainerConfigError(
                    f"couldn't find key {ref.get('key')} in {kind} "
                    f"{(pod.get('metadata') or {}).get('namespace')}/{ref.get('name')}")
            out[name] = data[ref["key"]].decode(errors="replace")
            break
    return out


_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known variables replaced, `$$` escapes, others kept."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_REF.sub(sub, text)


def image_argv(image: str, table: Mapping[str, Sequence[str]],
               use_defaults: bool = True) -> list[str] | None:
    """The ENTRYPOINT for an image: exact name or longest prefix in `table`, then defaults."""
    candidates = [key for key in table if image == key or image.startswith(key)]
    if candidates:
        return list(table[max(candidates, key=len)])
    if use_defaults:
        for needle, argv in DEFAULT_IMAGE_SUBSTRINGS:
            if needle in image:
                return list(argv)
    return None


# ------------------------------------------------------------------------ API client
class ApiClient:
    """The few HTTP calls a kubelet makes, over aiohttp, against one API server URL."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context) \
                if self.ssl_context is not None else None
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      ok: Sequence[int] = (200, 201)) -> tuple[int, JSON]:
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, self.url + path, data=data,
                                        headers={"Content-Type": content_type}) as resp:
            text = await resp.text()
            try:
                parsed = json.loads(text) if text else {}
            except ValueError:
                parsed = {"message": text}
            if resp.status not in ok:
                log.debug("api %s %s -> %s %s", method, path, resp.status,
                          parsed.get("message"))
            return resp.status, parsed


class Informer:
    """A list+watch cache of one resource across namespaces; `on_change` after each event."""

    def __init__(self, client: ApiClient, path: str, on_change: Callable[[], None]) -> None:
        self.client = client
        self.path = path
        self.on_change = on_change
        self.items: dict[tuple[str, str], JSON] = {}
        self.synced = asyncio.Event()

    def get(self, namespace: str, name: str) -> JSON | None:
        return self.items.get((namespace, name))

    @staticmethod
    def _key(obj: JSON) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return meta.get("namespace", ""), meta.get("name", "")

    async def run(self) -> None:
        while True:
            try:
                status, listed = await self.client.request("GET", self.path)
                if status != 200:
                    raise ConnectionError(f"list {self.path}: {status}")
                self.items = {self._key(o): o for o in listed.get("items") or []}
                self.synced.set()
                self.on_change()
                await self._watch(str((listed.get("metadata") or {}).get("resourceVersion")))
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) \
                    as exc:
                log.debug("informer %s: %s; relisting", self.path, exc)
                await asyncio.sleep(0.3)

    async def _watch(self, rv: str) -> None:
        while True:
            joiner = "&" if "?" in self.path else "?"
            url = (f"{self.client.url}{self.path}{joiner}watch=true&resourceVersion={rv}"
                   "&allowWatchBookmarks=true&timeoutSeconds=300")
            async with self.client.session.get(
                    url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                if resp.status != 200:
                    raise ConnectionError(f"watch {self.path}: {resp.status}")
                async for line in _lines(resp.content):
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    kind = event.get("type")
                    if kind == "ERROR":
                        raise ConnectionError(f"watch {self.path}: {obj.get('message')}")
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        self.items.pop(self._key(obj), None)
                    else:
                        self.items[self._key(obj)] = obj
                    self.on_change()


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited watch events of any size (readline caps lines at 128 KiB)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


# --------------------------------------------------------------- containers and pods
@dataclass
class _ContainerState:
    """What a container status reports; owned by its `_Container`."""

    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSON = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    container_id: str = ""
    final: bool = False
    """Terminated for good (restartPolicy says no restart, or the pod is stopping)."""


class _Container:
    """One container of a pod: its process, its probes and its restarts."""

    def __init__(self, pod: _PodWorker, spec: JSON) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.status = _ContainerState()
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self._probe_tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._crashes = 0
        self.pull_attempts = 0

    def set_state(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        self.pod.dirty()

    async def supervise(self) -> None:
        """Start, wait, restart with backoff, for as long as the pod lives."""
        agent = self.pod.agent
        argv_prefix = image_argv(self.spec.get("image", ""), agent.images,
                                 agent.default_images)
        while argv_prefix is None:
            self.pull_attempts += 1
            image = self.spec.get("image", "")
            message = f"image {image} is not known to the sandbox node agent"
            if self.pull_attempts == 1:
                self.set_state(state={"waiting": {"reason": "ErrImagePull", "message": message}})
            else:
                self.set_state(state={"waiting": {"reason": "ImagePullBackOff", "message":
                                                  f'Back-off pulling image "{image}": '
                                                  f"{message}"}})
            await asyncio.sleep(agent.restart_backoff[1])
        policy = (self.pod.pod.get("spec") or {}).get("restartPolicy", "Always")
        while not self._stopping:
            try:
                started = await self._start(argv_prefix)
            except (ContainerConfigError, volumes.VolumeError) as exc:
                reason = "CreateContainerConfigError" if isinstance(
                    exc, ContainerConfigError) else "ContainerCreating"
                self.set_state(state={"waiting": {"reason": reason, "message": str(exc)}})
                await self.pod.wait_for_change(agent.restart_backoff[1])
                continue
            except probes.ProbeSpecError as exc:
                self.set_state(state={"waiting": {"reason": "CreateContainerError",
                                                  "message": str(exc)}})
                await self.pod.wait_for_change(agent.restart_backoff[1])
                continue
            except OSError as exc:  # the command itself cannot be started
                self.set_state(state={"waiting": {"reason": "RunContainerError",
                                                  "message": str(exc)}})
                await asyncio.sleep(agent.restart_backoff[1])
                continue
            assert self.proc is not None
            code = await self.proc.wait()
            self._stop_probes()
            finished = _now()
            ran_for = time.monotonic() - started
            reason = "Completed" if code == 0 else "Error"
            terminated = {"exitCode": code if code >= 0 else 128 - code, "reason": reason,
                          "startedAt": self.status.state.get("running", {}).get("startedAt"),
                          "finishedAt": finished, "containerID": self.status.container_id}
            if code < 0:
                terminated["signal"] = -code
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if self._stopping or not restart:
                self.set_state(state={"terminated": terminated}, ready=False, started=False,
                               final=True)
                return
            self._crashes = 1 if ran_for > agent.backoff_reset else self._crashes + 1
            delay = 0.0 if self._crashes <= 1 else min(
                agent.restart_backoff[0] * 2 ** (self._crashes - 2), agent.restart_backoff[1])
            self.set_state(last_state={"terminated": terminated}, ready=False, started=False,
                           state={"waiting": {"reason": "CrashLoopBackOff", "message":
                                              f"back-off {delay:.1f}s restarting failed "
                                              f"container={self.name} pod={self.pod.name}"}}
                           if delay else {"terminated": terminated})
            log.info("container exited pod=%s/%s container=%s code=%s restart_in=%.1fs",
                     self.pod.namespace, self.pod.name, self.name, code, delay)
            await asyncio.sleep(delay)
            await agent.node_up(self.pod.node)
            if not self._stopping:
                self.status.restart_count += 1

    async def _start(self, argv_prefix: list[str]) -> float:
        """Launch the process; returns its start time (monotonic)."""
        agent, pod = self.pod.agent, self.pod
        pod.project_volumes()
        env = dict(agent.base_env)
        env.update({"HOSTNAME": pod.name, **agent.pod_api_env(pod.namespace)})
        env.update(build_env(self.spec, pod.downward_view(), pod.lookup))
        command = [expand_vars(a, env) for a in self.spec.get("command") or []]
        args = [expand_vars(a, env) for a in self.spec.get("args") or []]
        if not command and "args" not in self.spec:
            image = self.spec.get("image", "")
            args = next((list(cmd) for needle, cmd in DEFAULT_IMAGE_CMD if needle in image), [])
        if command:
            if Path(command[0]).name.startswith("python"):
                command[0] = sys.executable
            argv = command + args
        else:
            argv = argv_prefix + args
        mounts = pod.mounts_for(self.spec)
        plan_dir = pod.root / "plans"
        plan_dir.mkdir(parents=True, exist_ok=True)
        scratch = pod.root / "scratch" / self.name
        scratch.mkdir(parents=True, exist_ok=True)
        if agent.namespaces:
            plan = volumes.LaunchPlan(argv=argv, env=env, mounts=mounts, hostname=pod.name,
                                      scratch=str(scratch),
                                      workdir=self.spec.get("workingDir") or "",
                                      keep=host_paths_to_keep(agent.workdir))
            plan_file = plan_dir / f"{self.name}.json"
            plan_file.write_text(plan.dump())
            launch = volumes.init_command(plan_file)
            launch_env: dict[str, str] | None = None
            cwd = None
        else:
            launch = [volumes.rewrite_paths(a, mounts) for a in argv]
            launch_env = {k: volumes.rewrite_paths(v, mounts) for k, v in env.items()}
            cwd = volumes.rewrite_paths(self.spec["workingDir"], mounts) \
                if self.spec.get("workingDir") else None
        readiness = probes.parse_probe(self.spec.get("readinessProbe"), self.spec, pod.ip)
        liveness = probes.parse_probe(self.spec.get("livenessProbe"), self.spec, pod.ip)
        startup = probes.parse_probe(self.spec.get("startupProbe"), self.spec, pod.ip)
        agent.log_dir.mkdir(parents=True, exist_ok=True)
        logfd = os.open(pod.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(logfd, f"--- {_now()} starting container {self.name}: "
                            f"{' '.join(argv)}\n".encode())
            self.proc = await asyncio.create_subprocess_exec(
                *launch, env=launch_env if launch_env is not None else env, cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL, stdout=logfd, stderr=logfd,
                start_new_session=True)
        finally:
            os.close(logfd)
        started = time.monotonic()
        ready_now = readiness is None and startup is None
        self.set_state(state={"running": {"startedAt": _now()}}, started=startup is None,
                       ready=ready_now, container_id=f"sandbox://{self.proc.pid}")
        self._probe_tasks = [asyncio.create_task(self._probe_loop(startup, readiness, liveness))]
        return started

    async def _probe_loop(self, startup: probes.ProbeSpec | None,
                          readiness: probes.ProbeSpec | None,
                          liveness: probes.ProbeSpec | None) -> None:
        agent = self.pod.agent
        paused = self.pod.node_failed
        exec_prefix = self._exec_prefix()
        if startup is not None:
            done = asyncio.Event()

            def startup_changed(ok: bool) -> None:
                if ok:
                    done.set()
            runner = probes.ProbeRunner(startup, agent.session, startup_changed, initial=False,
                                        time_scale=agent.probe_time_scale,
                                        exec_prefix=exec_prefix, paused=paused)
            task = asyncio.create_task(runner.run())
            try:
                await done.wait()
            finally:
                task.cancel()
            self.set_state(started=True, ready=readiness is None)
        tasks = []
        if readiness is not None:
            tasks.append(probes.ProbeRunner(
                readiness, agent.session, lambda ok: self.set_state(ready=ok), initial=False,
                time_scale=agent.probe_time_scale, exec_prefix=exec_prefix,
                paused=paused).run())
        if liveness is not None:
            tasks.append(probes.ProbeRunner(
                liveness, agent.session, self._liveness_changed, initial=True,
                time_scale=agent.probe_time_scale, exec_prefix=exec_prefix,
                paused=paused).run())
        if tasks:
            await asyncio.gather(*tasks)

    def _exec_prefix(self) -> list[str]:
        if self.proc is None or not self.pod.agent.namespaces:
            return []
        return ["nsenter", f"--target={self.proc.pid}", "--mount", "--uts"]

    def _liveness_changed(self, ok: bool) -> None:
        if not ok and self.proc is not None and self.proc.returncode is None:
            log.info("liveness probe failed pod=%s/%s container=%s: restarting",
                     self.pod.namespace, self.pod.name, self.name)
            self.signal(signal.SIGKILL)

    def _stop_probes(self) -> None:
        for task in self._probe_tasks:
            task.cancel()
        self._probe_tasks = []

    def signal(self, sig: int) -> bool:
        if self.proc is None or self.proc.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
            return True
        return False

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._stop_probes()
        if self.proc is not None and self.proc.returncode is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.signal(signal.SIGKILL)
                await self.proc.wait()
        if self.task is not None:
            self.task.cancel()
            # asyncio.wait, not `suppress(CancelledError): await task`: a cancellation of the
            # caller itself (the sync loop stopping this container) must not be swallowed,
            # or the caller runs on and the agent's shutdown waits for it forever.
            await asyncio.wait([self.task])


class _PodWorker:
    """One pod on one node, from binding to deletion (the kubelet's pod worker)."""

    def __init__(self, agent: NodeAgent, pod: JSON, ip: str) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta.get("namespace", "")
        self.name: str = meta["name"]
        self.uid: str = meta.get("uid", "")
        self.node: str = pod["spec"]["nodeName"]
        self.ip = ip
        self.root: Path = agent.workdir / "pods" / self.namespace / self.name / self.uid
        self.log_path = agent.log_dir / f"{self.namespace}_{self.name}.log"
        self.containers = [_Container(self, c) for c in pod["spec"].get("containers") or []]
        self._writers: dict[str, volumes.AtomicWriter] = {}
        self._dirty = asyncio.Event()
        self._changed = asyncio.Event()
        self._last_sent: JSON | None = None
        self._reporter: asyncio.Task[None] | None = None
        self.start_time = _now()
        self.terminating = False

    def lookup(self, kind: str, name: str) -> JSON | None:
        if self.agent.refs is not None:
            if kind == "ServiceAccountToken":
                return self.agent.refs.token(self.uid, name)
            return self.agent.refs.get(kind, self.namespace, name)
        informer = self.agent.configmaps if kind == "ConfigMap" else self.agent.secrets
        return informer.get(self.namespace, name)

    def node_failed(self) -> bool:
        return self.node in self.agent.failed_nodes

    def dirty(self) -> None:
        self._dirty.set()

    def changed(self, pod: JSON) -> None:
        """A newer version of the pod or of something it mounts: re-project volumes."""
        self.pod = pod
        self._changed.set()
        with contextlib.suppress(volumes.VolumeError):
            self.project_volumes()

    async def wait_for_change(self, limit: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), limit)

    def downward_view(self) -> JSON:
        """The pod as the downward API sees it: its IPs are known here before the API has them."""
        host_ip = self.agent.node_ip(self.node)
        status = dict(self.pod.get("status") or {}, podIP=self.ip, podIPs=[{"ip": self.ip}],
                      hostIP=host_ip, hostIPs=[{"ip": host_ip}])
        return dict(self.pod, status=status)

    # ------------------------------------------------------------ volumes
    def volume_dir(self, name: str) -> Path:
        return self.root / "volumes" / name

    def project_volumes(self) -> None:
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            name = volume["name"]
            payload = volumes.volume_payload(volume, self.downward_view(), self.lookup)
            if payload is not None:
                writer = self._writers.setdefault(name, volumes.AtomicWriter(
                    self.volume_dir(name)))
                if writer.write(payload):
                    log.debug("projected volume pod=%s/%s volume=%s", self.namespace,
                              self.name, name)
            elif "persistentVolumeClaim" in volume:
                self.claim_dir(volume).mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                continue
            else:  # emptyDir and anything else the sandbox treats as scratch space
                self.volume_dir(name).mkdir(parents=True, exist_ok=True)

    def claim_dir(self, volume: JSON) -> Path:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName", "")
        return Path(self.agent.workdir, "pvcs", self.namespace, claim)

    def mounts_for(self, container: JSON) -> list[volumes.BindMount]:
        by_name = {v["name"]: v for v in (self.pod.get("spec") or {}).get("volumes") or []}
        out = []
        for mount in container.get("volumeMounts") or []:
            volume = by_name.get(mount.get("name", ""))
            if volume is None:
                raise ContainerConfigError(f"volume {mount.get('name')!r} not found in pod spec")
            if "persistentVolumeClaim" in volume:
                source = self.claim_dir(volume)
            elif "hostPath" in volume:
                source = Path((volume["hostPath"] or {}).get("path", "/"))
            else:
                source = self.volume_dir(volume["name"])
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.exists() and not os.path.lexists(source):
                    source.mkdir(parents=True, exist_ok=True)
            out.append(volumes.BindMount(str(source), mount["mountPath"],
                                         bool(mount.get("readOnly"))))
        return out

    # ------------------------------------------------------------- status
    def build_status(self) -> JSON:
        statuses = []
        for c in self.containers:
            entry: JSON = {"name": c.name, "image": c.spec.get("image", ""),
                           "imageID": "", "ready": c.status.ready, "started": c.status.started,
                           "restartCount": c.status.restart_count, "state": c.status.state,
                           "lastState": c.status.last_state}
            if c.status.container_id:
                entry["containerID"] = c.status.container_id
            statuses.append(entry)
        final = [c for c in self.containers if c.status.final]
        if self.containers and len(final) == len(self.containers):
            phase = "Succeeded" if all(
                c.status.state["terminated"]["exitCode"] == 0 for c in final) else "Failed"
        elif self.containers and all(c.status.container_id for c in self.containers):
            phase = "Running"  # every container was created once; some may be restarting
        else:
            phase = "Pending"
        unready = [c.name for c in self.containers if not c.status.ready]
        all_ready = not unready and phase == "Running"
        reason = {} if all_ready else {
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: [{' '.join(unready)}]"}
        conditions = [self._condition("PodScheduled", True), self._condition("Initialized", True),
                      self._condition("ContainersReady", all_ready, **reason),
                      self._condition("Ready", all_ready, **reason)]
        return {"phase": phase, "conditions": conditions, "hostIP": self.agent.node_ip(self.node),
                "hostIPs": [{"ip": self.agent.node_ip(self.node)}], "podIP": self.ip,
                "podIPs": [{"ip": self.ip}], "startTime": self.start_time,
                "containerStatuses": statuses}

    def _condition(self, typ: str, value: bool, **extra: str) -> JSON:
        status = "True" if value else "False"
        prev = {c.get("type"): c for c in (self.pod.get("status") or {}).get("conditions") or []}
        old = prev.get(typ) or {}
        when = old.get("lastTransitionTime") if old.get("status") == status else None
        return {"type": typ, "status": status, "lastProbeTime": None,
                "lastTransitionTime": when or _now(), **extra}

    async def report_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.node_failed() or self.terminating:
                continue
            status = self.build_status()
            comparable = _without_times(status)
            if comparable == self._last_sent:
                continue
            code, body = await self.agent.client_for(self.node).request(
                "PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
                "application/strategic-merge-patch+json")
            if code == 200:
                self._last_sent = comparable
                self.pod = body
            elif code != 404:
                log.warning("status patch failed pod=%s/%s code=%s: %s", self.namespace,
                            self.name, code, body.get("message"))
                await asyncio.sleep(0.2)
                self._dirty.set()

    def force_report(self) -> None:
        self._last_sent = None
        self._dirty.set()

    # ---------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(volumes.VolumeError):
            self.project_volumes()
        for c in self.containers:
            c.task = asyncio.create_task(c.supervise(), name=f"container {self.name}/{c.name}")
        self._reporter = asyncio.create_task(self.report_loop())
        self.dirty()

    async def stop(self, grace: float) -> None:
        self.terminating = True
        await asyncio.gather(*(c.stop(grace) for c in self.containers))
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.wait([self._reporter])  # the caller's own cancellation propagates
        shutil.rmtree(self.root, ignore_errors=True)

    def grace(self) -> float:
        meta = self.pod.get("metadata") or {}
        value = meta.get("deletionGracePeriodSeconds")
        if value is None:
            value = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        return float(min(max(float(value), 0.0), self.agent.max_termination_grace))


def _without_times(status: JSON) -> JSON:
    copy = json.loads(json.dumps(status))
    for cond in copy.get("conditions") or []:
        cond.pop("lastTransitionTime", None)
    return dict(copy)


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


def api_server_url(api: str | Path) -> str:
    """The server URL of `api`: a URL as is, or the current context of a kubeconfig file."""
    text = str(api)
    if text.startswith(("http://", "https://")):
        return text.rstrip("/")
    config = yaml.safe_load(Path(text).read_text())
    current = config.get("current-context")
    context = next(c["context"] for c in config.get("contexts") or [] if c["name"] == current)
    cluster = next(c["cluster"] for c in config.get("clusters") or []
                   if c["name"] == context["cluster"])
    return str(cluster["server"]).rstrip("/")
