"""The real Kubernetes control plane for the sandbox: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler as local processes (issue 13, DESIGN.md §5).

`make kube` builds the binaries from the official Go modules (sandbox/kube-build) into a cache
outside the checkout; `ControlPlane` starts them on loopback with what a kubeadm cluster has:
TLS from a CA the sandbox makes (`pki`), service-account signing keys, authorization
`Node,RBAC`, admission with PodSecurity and NodeRestriction, and the controller manager's
controllers running under their own service accounts. Nothing in the operator or the sender
knows which control plane it talks to.

Settings that differ from a production cluster, each because the sandbox is one machine:
- etcd listens on loopback without TLS and with `--unsafe-no-fsync` (a test bed: its data is
  thrown away; the operator's durability claims are about the sender's spool, not etcd);
- `--endpoint-reconciler-type=none`: Endpoints may not hold loopback addresses, so the
  `kubernetes` Service gets none; the node agent gives pods the API server's real address in
  `KUBERNETES_SERVICE_HOST/PORT`, which is what kube-proxy would route the cluster IP to;
- short node-lifecycle timings (`node_monitor_grace`, toleration seconds) so that a failed node
  is tainted and its pods evicted within seconds, not five minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mailfleet_sandbox import pki, volumes

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO_ROOT / "sandbox" / "kube-build"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.96.0.0/16"
CONTROLLERS = ("*",)
"""The controller manager runs its default set: garbage collector, namespace, deployment,
replicaset, statefulset, endpointslice, node-lifecycle, serviceaccount, token and the rest."""


def kubernetes_version() -> str:
    """The release pinned in sandbox/kube-build/go.mod (what `make kube` builds)."""
    for line in (BUILD_DIR / "go.mod").read_text().splitlines():
        if line.startswith("require k8s.io/kubernetes "):
            return line.split()[-1]
    raise RuntimeError("sandbox/kube-build/go.mod names no k8s.io/kubernetes release")


def binaries_dir() -> Path:
    """Where `make kube` puts the binaries: $MAILFLEET_KUBE_CACHE/bin, else
    ~/.cache/mailfleet/kubernetes/<version>/bin."""
    cache = os.environ.get("MAILFLEET_KUBE_CACHE")
    base = Path(cache) if cache else (Path.home() / ".cache" / "mailfleet" / "kubernetes"
                                      / kubernetes_version())
    return base / "bin"


def binaries_built() -> bool:
    return all(os.access(binaries_dir() / name, os.X_OK) for name in COMPONENTS)


def default_control_plane() -> str:
    """`kubernetes` when the binaries are built, else `emulator`; `MAILFLEET_CONTROL_PLANE`
    overrides."""
    chosen = os.environ.get("MAILFLEET_CONTROL_PLANE", "")
    if chosen in ("kubernetes", "emulator"):
        return chosen
    return "kubernetes" if binaries_built() else "emulator"


NOT_BUILT_NOTICE = ("mailfleet sandbox: the real control plane is not built; using the API "
                    "emulator (run `make kube` to build kube-apiserver and friends)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(path: Path, *, server: str, ca: Path, user: str, cert: Path | None = None,
                     key: Path | None = None, token: str | None = None,
                     namespace: str | None = None) -> Path:
    credentials: dict[str, Any] = {}
    if cert is not None and key is not None:
        credentials = {"client-certificate": str(cert), "client-key": str(key)}
    if token is not None:
        credentials = {"token": token}
    context: dict[str, Any] = {"cluster": "sandbox", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": "sandbox", "cluster": {
                  "server": server, "certificate-authority": str(ca)}}],
              "users": [{"name": user, "user": credentials}],
              "contexts": [{"name": "sandbox", "context": context}],
              "current-context": "sandbox"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class Timings:
    """Node-lifecycle timings: how fast a stopped node is noticed and its pods evicted."""

    node_monitor_period: float = 1.0
    node_monitor_grace: float = 8.0
    toleration_seconds: int = 5
    """--default-not-ready/unreachable-toleration-seconds: eviction delay after the taint."""


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler under `root`."""

    def __init__(self, root: Path, *, host: str = "127.0.0.1", bin_dir: Path | None = None,
                 timings: Timings | None = None) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.bin_dir = bin_dir or binaries_dir()
        self.timings = timings or Timings()
        self.pki = pki.SandboxPKI(self.root / "pki")
        self.log_dir = self.root / "logs"
        self.port = 0
        self.etcd_port = 0
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._logs: list[Any] = []
        self.started_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    def client_kubeconfig(self, stem: str, user: str, groups: tuple[str, ...] = (),
                          namespace: str | None = None) -> Path:
        """A kubeconfig authenticating as `user` in `groups` by client certificate."""
        pair = self.pki.client(stem, user, groups)
        return write_kubeconfig(self.root / f"{stem}.kubeconfig", server=self.url,
                                ca=self.pki.ca.cert, user=user, cert=pair.cert, key=pair.key,
                                namespace=namespace)

    def node_kubeconfig(self, node: str) -> Path:
        """The kubelet's identity for `node`: system:node:<node> in system:nodes."""
        return self.client_kubeconfig(f"node-{node}", f"system:node:{node}", ("system:nodes",))

    def ssl_context(self, stem: str = "admin") -> ssl.SSLContext:
        pair = (self.pki.client("admin", "kubernetes-admin", ("system:masters",))
                if stem == "admin" else pki.KeyPair(self.pki.directory / f"{stem}.crt",
                                                    self.pki.directory / f"{stem}.key"))
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        context.load_cert_chain(str(pair.cert), str(pair.key))
        return context

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> ControlPlane:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        missing = [c for c in COMPONENTS if not os.access(self.bin_dir / c, os.X_OK)]
        if missing:
            raise RuntimeError(f"not built: {', '.join(missing)} in {self.bin_dir}; "
                               "run `make kube`")
        shutil.rmtree(self.root / "etcd", ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pki.ensure()
        self.port = free_port(self.host)
        self.etcd_port = free_port(self.host)
        peer_port = free_port(self.host)
        admin = self.pki.client("admin", "kubernetes-admin", ("system:masters",))
        write_kubeconfig(self.admin_kubeconfig, server=self.url, ca=self.pki.ca.cert,
                         user="kubernetes-admin", cert=admin.cert, key=admin.key)
        etcd_url = f"http://{self.host}:{self.etcd_port}"
        peer_url = f"http://{self.host}:{peer_port}"
        await self._spawn("etcd", [
            "--name=sandbox", f"--data-dir={self.root / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=sandbox={peer_url}", "--unsafe-no-fsync",
            "--log-level=warn", "--quota-backend-bytes=2147483648"])
        await self._wait_http("etcd", f"{etcd_url}/health", None, within=30)
        serving = self.pki.api_server(self.host)
        t = self.timings
        await self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}", f"--bind-address={self.host}",
            f"--advertise-address={self.host}", f"--secure-port={self.port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={self.pki.ca.cert}",
            f"--service-account-key-file={self.pki.service_account_pub}",
            f"--service-account-signing-key-file={self.pki.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--endpoint-reconciler-type=none", "--allow-privileged=true",
            f"--default-not-ready-toleration-seconds={t.toleration_seconds}",
            f"--default-unreachable-toleration-seconds={t.toleration_seconds}",
            "--profiling=false", "--v=1"])
        await self._wait_http("kube-apiserver", f"{self.url}/readyz", self.ssl_context(),
                              within=90)
        common = ["--leader-elect=false", "--profiling=false", "--v=1"]
        kcm = self.client_kubeconfig("kube-controller-manager", "system:kube-controller-manager")
        await self._spawn("kube-controller-manager", [
            f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}",
            f"--authorization-kubeconfig={kcm}", f"--bind-address={self.host}",
            f"--secure-port={free_port(self.host)}", "--use-service-account-credentials=true",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca.cert}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--node-monitor-period={t.node_monitor_period}s",
            f"--node-monitor-grace-period={t.node_monitor_grace}s",
            "--concurrent-gc-syncs=5", *common])
        scheduler = self.client_kubeconfig("kube-scheduler", "system:kube-scheduler")
        await self._spawn("kube-scheduler", [
            f"--kubeconfig={scheduler}", f"--authentication-kubeconfig={scheduler}",
            f"--authorization-kubeconfig={scheduler}", f"--bind-address={self.host}",
            f"--secure-port={free_port(self.host)}", *common])
        await self._wait_default_service_account(within=60)

    async def stop(self) -> None:
        """Controllers first, then the API server, then etcd; each gets SIGTERM and a few
        seconds before SIGKILL (the sandbox's state is thrown away anyway)."""
        for group in (("kube-scheduler", "kube-controller-manager"), ("kube-apiserver",),
                      ("etcd",)):
            procs = [self._procs.pop(name) for name in group if name in self._procs]
            await asyncio.gather(*(self._terminate(proc) for proc in procs))
        for handle in self._logs:
            handle.close()
        self._logs = []

    @staticmethod
    async def _terminate(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    def running(self) -> dict[str, bool]:
        return {name: proc.returncode is None for name, proc in self._procs.items()}

    def pids(self) -> dict[str, int]:
        """Process ids of the running components, by name."""
        return {name: proc.pid for name, proc in self._procs.items() if proc.returncode is None}

    # ------------------------------------------------------------------ helpers
    async def _spawn(self, name: str, args: list[str]) -> None:
        handle = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(handle)
        self.started_seconds[name] = time.monotonic()
        parent = os.getpid()
        self._procs[name] = await asyncio.create_subprocess_exec(
            str(self.bin_dir / name), *args, stdout=handle, stderr=handle,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            preexec_fn=lambda: volumes.die_with_parent(parent))

    def _log_tail(self, name: str, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    async def _wait_http(self, name: str, url: str, context: ssl.SSLContext | None,
                         *, within: float) -> None:
        def probe() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                    return int(resp.status) == 200
            except OSError:
                return False

        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            proc = self._procs[name]
            if proc.returncode is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n"
                                   f"{self._log_tail(name)}")
            if await asyncio.to_thread(probe):
                self.started_seconds[name] = time.monotonic() - self.started_seconds[name]
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{name} not healthy within {within:.0f}s:\n{self._log_tail(name)}")

    async def _wait_default_service_account(self, *, within: float) -> None:
        """Pods are admitted only once their namespace's `default` ServiceAccount exists: wait
        for the controller manager to have made it (and so to be running)."""
        context = self.ssl_context()
        url = f"{self.url}/api/v1/namespaces/default/serviceaccounts/default"

        def probe() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                    return bool(json.loads(resp.read()).get("metadata"))
            except (OSError, ValueError):
                return False

        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for name in ("kube-controller-manager", "kube-scheduler"):
                proc = self._procs[name]
                if proc.returncode is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n"
                                       f"{self._log_tail(name)}")
            if await asyncio.to_thread(probe):
                for name in ("kube-controller-manager", "kube-scheduler"):
                    self.started_seconds[name] = time.monotonic() - self.started_seconds[name]
                return
            await asyncio.sleep(0.2)
        raise TimeoutError("the controller manager made no default ServiceAccount within "
                           f"{within:.0f}s:\n{self._log_tail('kube-controller-manager')}")
