"""One pod on a sandbox node (the kubelet's pod worker): its containers' processes, probes,
restarts with backoff, projected volumes and `pods/status` reports. The node agent creates
and stops workers; see `node_agent` for the choices made."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailfleet_sandbox import probes, volumes
from mailfleet_sandbox.container_env import (
    DEFAULT_IMAGE_CMD,
    ContainerConfigError,
    _now,
    build_env,
    expand_vars,
    host_paths_to_keep,
    image_argv,
)

if TYPE_CHECKING:
    from mailfleet_sandbox.node_agent import NodeAgent

JSON = dict[str, Any]
log = logging.getLogger(__name__)


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
