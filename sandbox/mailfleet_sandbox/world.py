"""The whole sandbox world in one process: what `mailfleet sandbox up`, `make demo` and the
e2e tests run (DESIGN.md §5, issue 9).

`SandboxWorld` starts, on loopback only:

- the Kubernetes API emulator (`kube.ApiServer`) with the mailfleet CRDs installed, as a Helm
  install would, and the namespaces `mail` (the fleet) and `mailfleet-system` (the operator);
- the DNS server (`dns.DNSServer`) with the providers' MX records, the egress IPs' A/PTR
  records and the test DNSBL zone, fed by the external-dns stand-in (`external_dns`) and by
  cluster DNS for Services (`cluster_dns`, the CoreDNS stand-in: senders find their peers at
  `<pool>-pods.<ns>.svc`);
- the provider simulators (`providers.ProviderFleet`), recording every accepted message as
  JSON lines and .eml files (with whether it came over TLS), and every answer given as JSON
  lines; each offers STARTTLS with a certificate from the sandbox CA;
- transport security (`secure_transport`): the CA, an HTTPS host serving an MTA-STS
  `enforce` policy for enforced.test and collecting TLS-RPT reports, the DNSSEC-signed zone
  dane.test with its TLSA record, and a validating resolver the senders use for DANE;
- an inbound relay standing in for the pool's bounce/feedback MX: providers send DSNs and ARF
  reports to it, and it hands them to the feedback port of a pod the pool's client Service
  routes to;
- the node agent (nodes node-a, node-b, node-c) which runs the pods as processes;
- the CiliumEgressGatewayPolicy CRD and, where nft is usable, the egress gateway stand-in
  (`egress_gateway`: the policies' source NAT as nftables rules);
- the operator as a Deployment in `mailfleet-system` (`operator_replicas` pods electing a
  leader; with `operator_api_proxy`, behind an `ApiFaultProxy`), i.e. processes run by the node
  agent, configured for the sandbox by environment (`MAILFLEET_OPERATOR_*`): nameservers,
  the providers' SMTP port, the warm-up day length and short leases. Settings, never code
  branches: the operator does not know it runs in a sandbox.

While up it keeps `<root>/state.json` (kubeconfig path, DNS address, providers and their
record files) so that other tools can check what happened; `down` removes it.

Pods share the host's loopback, each on its own 127.x address. Nothing rewrites their binds:
the sender listens on its POD_IP by default and the operator is given its pod IP through its
documented `MAILFLEET_OPERATOR_HTTP_HOST` setting, so no two pods collide on a port. See
docs/sandbox.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import shutil
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosmtplib
import yaml
from aiosmtpd.smtp import SMTP, Envelope, Session
from mailfleet_operator.logic import egress_networks

from mailfleet_sandbox import (
    api_fault_proxy,
    cluster_dns,
    control_plane,
    egress_gateway,
    event_samples,
    external_dns,
    kubelet,
    node_agent,
    operator_install,
    providers,
    secure_transport,
    storage,
)
from mailfleet_sandbox import dns as sandbox_dns
from mailfleet_sandbox.cluster_api import ClusterApi
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sandbox.kube.errors import ApiError
from mailfleet_sandbox.webhook_receiver import WebhookReceiver

JSON = dict[str, Any]
log = logging.getLogger(__name__)

API_VERSION = "mailfleet.io/v1alpha1"
OPERATOR_IMAGE = "ghcr.io/mailfleet/operator:0.1.0"
SENDER_IMAGE = "ghcr.io/mailfleet/sender:0.1.0"
NODES = ("node-a", "node-b", "node-c")
OPERATOR_NODE = "node-c"
DNS_HOST = "127.0.53.1"
RECORD_TTL = 3
"""Seconds the sandbox's external-dns stand-in serves records for (publish.ttl is at least
30): a DKIM key is Verified one TTL after every nameserver shows it, so the demo's rotation
takes seconds, not minutes."""
RELAY_HOST = "127.0.30.1"
SERVING_LABEL = "mailfleet.io/serving"
"""The label the operator puts on pods that take submissions; the client Service selects it."""
REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"


def sample_files() -> list[Path]:
    """The sandbox flavour of samples/ (127.0.20.x egress IPs, example.test), in apply order."""
    root = resources.files("mailfleet_sandbox").joinpath("data/samples")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml"))


@dataclass(frozen=True)
class WorldSettings:
    """Every knob of the world; the defaults are the demo's (a warm-up day in 12 s)."""

    root: Path = Path(".sandbox")
    namespace: str = "mail"
    operator_namespace: str = "mailfleet-system"
    warmup_day_seconds: float = 12.0
    lease_duration: float = 4.0
    lease_renew_interval: float = 1.0
    lease_clock_skew: float = 0.5
    stats_interval: float = 1.0
    probe_time_scale: float = 0.5
    egress: tuple[tuple[str, str], ...] = (
        ("127.0.20.1", "mta1.example.test"),
        ("127.0.20.2", "mta2.example.test"),
        ("127.0.20.3", "mta3.example.test"),
    )
    """(address, HELO name) of the egress IPs the samples use: A and PTR records are served."""
    pool: str = "marketing"
    """The SendingPool whose Ready pods receive DSNs and ARF reports (inbound relay)."""
    feedback_rcpt: str = "fbl@bounces.example.test"
    control_plane: str = ""
    """`kubernetes` (the real control plane `make kube` built) or `emulator`; empty: the
    default of `control_plane.default_control_plane()`."""
    pod_security: str = "restricted"
    """The Pod Security level enforced in the mail and operator namespaces."""
    pod_admin_timeout: float = 1.0
    operator_replicas: int = 2
    """Operator pods of the Deployment (the chart's `replicas`); they elect a leader."""
    operator_api_proxy: bool = False
    """Put an `ApiFaultProxy` between the operator's pods and the API server
    (`SandboxWorld.operator_api_proxy`), so a scene can fail the operator's API traffic
    alone; the node agent, the senders and the sandbox itself keep the direct address."""
    webhook_receiver: bool = False
    """Run the event webhook receiver (`event_samples`: HTTPS on 127.0.40.1, sandbox CA) as
    `SandboxWorld.webhooks`; `event_samples.enable_webhook_events` points a pool at it."""


@dataclass
class ProviderState:
    name: str
    address: str
    port: int
    domains: list[str]
    mx_host: str
    messages_file: str
    attempts_file: str
    eml_dir: str


@dataclass
class WorldState:
    """What `<root>/state.json` holds."""

    kubeconfig: str
    api_url: str
    namespace: str
    dns: dict[str, Any]
    providers: list[ProviderState]
    relay: dict[str, Any]
    operator_log: str
    pod_logs: str
    warmup_day_seconds: float
    started_at: float
    control_plane: str = "emulator"
    pid: int = field(default_factory=os.getpid)
    webhooks: dict[str, Any] | None = None
    """The webhook receiver's URL and event record file, when it runs."""


class _RelayHandler:
    def __init__(self, world: SandboxWorld) -> None:
        self.world = world

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.content if isinstance(envelope.content, bytes) else \
            str(envelope.content).encode()
        ok = await self.world.forward_inbound(envelope.mail_from or "", list(envelope.rcpt_tos),
                                              data)
        return "250 2.0.0 OK: relayed" if ok else "451 4.3.0 no ready sender pod"


class SandboxWorld:
    """The sandbox; `async with SandboxWorld(settings) as world:`."""

    def __init__(self, settings: WorldSettings | None = None) -> None:
        self.settings = settings or WorldSettings()
        self.root = self.settings.root.resolve()
        self._api_keys: dict[str, str] = {}  # pool uid -> its generated API key
        self.control_plane = self.settings.control_plane or \
            control_plane.default_control_plane()
        self.control: control_plane.ControlPlane | None = None
        self.api: ApiServer | ClusterApi
        if self.control_plane == "kubernetes":
            self.control = control_plane.ControlPlane(self.root / "control-plane")
            self.api = ClusterApi("https://127.0.0.1:0", ca=self.control.pki.ca.cert,
                                  cert=self.control.pki.directory / "admin.crt",
                                  key=self.control.pki.directory / "admin.key")
        else:
            self.api = ApiServer(host="127.0.0.1", port=0, history=50_000)
        self.dns = sandbox_dns.DNSServer(DNS_HOST, 0, negative_ttl=1)
        # The CA bundle lives on the nodes' filesystem, which the pods see (as a private CA
        # baked into an image would be); the senders are told its path by a setting.
        self.transport = secure_transport.SecureTransport(self.dns,
                                                          self.root / "nodes" / "trust")
        """The sandbox CA, MTA-STS/TLS-RPT host, signed zone and validating resolver."""
        self.fleet = providers.ProviderFleet(
            self.dns, providers=providers.DEFAULT_PROVIDERS + secure_transport.PROVIDERS,
            ca=self.transport.ca, record_dir=self.root / "providers")
        self.inbound: list[tuple[str, list[str], bytes, str]] = []
        """Every DSN/ARF the relay took: (mail from, rcpts, data, pod it went to or "")."""
        self._relay: asyncio.Server | None = None
        self.external_dns: external_dns.ExternalDNS | None = None
        self.cluster_dns: cluster_dns.ClusterDNS | None = None
        self.agent: node_agent.NodeAgent | None = None
        self.egress_gateway: egress_gateway.EgressGateway | None = None
        self.operator_api_proxy: api_fault_proxy.ApiFaultProxy | None = None
        self.webhooks: WebhookReceiver | None = None
        """The event webhook receiver (`WorldSettings.webhook_receiver`)."""
        self.kubeconfig = self.root / "kubeconfig"
        self._stack = contextlib.AsyncExitStack()
        self._flush_task: asyncio.Task[None] | None = None
        self._attempts_written: dict[str, int] = {}
        self.started_at = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> SandboxWorld:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        self.started_at = time.time()
        for stale in ("providers", "nodes", "webhooks"):
            shutil.rmtree(self.root / stale, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        tls = await self._start_api()
        for ns in (s.namespace, s.operator_namespace):
            # Pod Security admission judges every pod the operator and the chart make.
            self.api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": ns, "labels": {"pod-security.kubernetes.io/enforce": s.pod_security,
                                       "pod-security.kubernetes.io/warn": s.pod_security}}})
        await self.install_crds()
        if self.control is not None:
            # a cluster's default StorageClass and its provisioner (the spools' claims)
            await self._stack.enter_async_context(storage.LocalProvisioner(
                self.api.url, self.root / "nodes" / "pvcs", tls))
        await self._stack.enter_async_context(self.dns)
        for address, helo in s.egress:
            self.dns.set_records(helo, "A", [address])
            self.dns.add_ptr(address, helo)
        loop = asyncio.get_running_loop()
        handler = _RelayHandler(self)
        self._relay = await loop.create_server(
            lambda: SMTP(handler, hostname="inbound.example.test", loop=loop), RELAY_HOST, 0)
        self._stack.push_async_callback(self._close_relay)
        relay_port = self._relay_port()
        self.fleet.set_feedback_target((RELAY_HOST, relay_port), s.feedback_rcpt)
        await self._stack.enter_async_context(self.fleet)
        self.fleet.set_feedback_target((RELAY_HOST, relay_port), s.feedback_rcpt)
        await self._stack.enter_async_context(self.transport)
        await self.transport.start(self.fleet)
        if s.webhook_receiver:
            self.webhooks = await event_samples.start_receiver(
                self._stack, self.transport.ca, self.root / "webhooks")
        self.external_dns = external_dns.ExternalDNS(self.api.url, self.dns, ssl_context=tls,
                                                     max_ttl=RECORD_TTL)
        await self._stack.enter_async_context(self.external_dns)
        self.cluster_dns = cluster_dns.ClusterDNS(self.api.url, self.dns, ssl_context=tls)
        await self._stack.enter_async_context(self.cluster_dns)
        # Cilium's egress gateway stand-in (CRD always; nft rules when nft is usable here)
        self.egress_gateway = await egress_gateway.start_for_world(
            self._stack, self.api, self.api.url, ssl_context=tls)
        pod_api_servers = {}
        if s.operator_api_proxy:
            self.operator_api_proxy = (
                api_fault_proxy.ApiFaultProxy(upstream=self.api.url) if self.control is None
                else api_fault_proxy.ApiFaultProxy.for_control_plane(self.control,
                                                                     host=self.control.host))
            await self._stack.enter_async_context(self.operator_api_proxy)
            pod_api_servers[s.operator_namespace] = self.operator_api_proxy.url
        base = f"127.{random.randint(200, 250)}.{random.randint(0, 255)}."
        self.agent = node_agent.NodeAgent(
            self.api.url, [node_agent.NodeSpec(n, {"topology.kubernetes.io/zone": n[-1]})
                           for n in NODES],
            self.root / "nodes", pod_ip_base=base, node_ip_base="127.0.99.",
            probe_time_scale=s.probe_time_scale, restart_backoff=(0.2, 2.0),
            backoff_reset=5.0, max_termination_grace=5.0, cluster=self._cluster_access(),
            pod_api_servers=pod_api_servers)
        await self._stack.enter_async_context(self.agent)
        for obj in self.operator_objects():
            self.api.create(obj)
        self._flush_task = asyncio.create_task(self._flush_attempts())
        self.write_state()

    async def stop(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
            self._write_attempts()
        await self._stack.aclose()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "state.json").unlink()

    # ------------------------------------------------------------------ set-up pieces
    async def _start_api(self) -> ssl.SSLContext | None:
        """Start the control plane; the TLS identity in-process clients use (None for the
        emulator, which has no authentication)."""
        if self.control is None:
            assert isinstance(self.api, ApiServer)
            await self._stack.enter_async_context(self.api)
            self.api.write_kubeconfig(self.kubeconfig, namespace=self.settings.namespace)
            return None
        await self._stack.enter_async_context(self.control)
        pki = self.control.pki
        admin = pki.client("admin", "kubernetes-admin", ("system:masters",))
        self.api = ClusterApi(self.control.url, ca=pki.ca.cert, cert=admin.cert, key=admin.key)
        self._stack.callback(self.api.close)
        control_plane.write_kubeconfig(self.kubeconfig, server=self.control.url, ca=pki.ca.cert,
                                       user="kubernetes-admin", cert=admin.cert, key=admin.key,
                                       namespace=self.settings.namespace)
        return self.control.ssl_context()

    def node_detection_seconds(self) -> float:
        """How long until a lost node's pods are marked unready: the node-lifecycle
        controller's grace and monitor period on the real control plane; at once with the
        emulator, where the node agent plays that controller."""
        if self.control is None:
            return 0.0
        timings = self.control.timings
        return timings.node_monitor_grace + timings.node_monitor_period

    def _cluster_access(self) -> kubelet.ClusterAccess | None:
        control = self.control
        if control is None:
            return None

        def credentials(node: str) -> tuple[Path, Path]:
            pair = control.pki.client(f"node-{node}", f"system:node:{node}", ("system:nodes",))
            return pair.cert, pair.key

        return kubelet.ClusterAccess(url=control.url, ca=control.pki.ca.cert,
                                     node_credentials=credentials,
                                     service_host=control.host, service_port=control.port)

    async def install_crds(self) -> None:
        """The mailfleet CRDs, as a Helm install would; returns once they are served."""
        names = []
        for path in sorted(CRD_DIR.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            self.api.create(crd)
            names.append(crd["metadata"]["name"])

        def established() -> bool:
            for name in names:
                crd = self.api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
                if (condition(crd, "Established") or {}).get("status") != "True":
                    return False
            return True

        await wait_until(established, within=30, what="the mailfleet CRDs to be Established")

    def operator_settings(self) -> dict[str, Any]:
        """The operator's sandbox configuration as chart values (`operator.*`, documented
        settings, see settings.py)."""
        s = self.settings
        dns = f"{self.dns.host}:{self.dns.port}"
        return {
            "dnsNameservers": [dns], "senderNameservers": [dns],
            # the zones' nameservers: the sandbox DNS answers NS for its zones with itself
            "dnsAuthoritativePort": self.dns.port,
            "senderSmtpPort": self.fleet.port, "dnsTimeout": 1, "stepDelay": 0.2,
            "errorDelay": 1, "warmupDaySeconds": s.warmup_day_seconds,
            "leaseDuration": s.lease_duration, "leaseRenewInterval": s.lease_renew_interval,
            "leaseClockSkew": s.lease_clock_skew, "statsInterval": s.stats_interval,
            "podAdminTimeout": s.pod_admin_timeout, "drainTimeout": 30, "logFormat": "text",
            # The sandbox's egress IPs are 127.x: loopback is its Internet.
            "refusedEgressNetworks": list(egress_networks.allowing_loopback()),
            # trust in the sandbox CA, its policy host's port, its validating resolver
            **self.transport.operator_settings(),
        }

    def operator_objects(self) -> list[JSON]:
        """The operator as `helm install` makes it: charts/mailfleet rendered with Helm's
        library (ServiceAccount, RBAC, Deployment with the restricted security context)."""
        values = operator_install.sandbox_values(
            watch_namespace=self.settings.namespace, operator_image=OPERATOR_IMAGE,
            sender_image=SENDER_IMAGE, settings=self.operator_settings(), node=OPERATOR_NODE)
        values["replicas"] = self.settings.operator_replicas
        return operator_install.render(values, namespace=self.settings.operator_namespace)

    def _relay_port(self) -> int:
        assert self._relay is not None
        return int(self._relay.sockets[0].getsockname()[1])

    async def _close_relay(self) -> None:
        if self._relay is not None:
            self._relay.close()
            await self._relay.wait_closed()

    # ------------------------------------------------------------------ state file
    def state(self) -> WorldState:
        record_dir = self.root / "providers"
        provs = [ProviderState(
            name=spec.name, address=spec.address, port=self.fleet.port,
            domains=list(spec.domains), mx_host=spec.mx_host,
            messages_file=str(record_dir / f"{spec.name}.jsonl"),
            attempts_file=str(record_dir / f"{spec.name}.attempts.jsonl"),
            eml_dir=str(record_dir / spec.name)) for spec in self.fleet.specs]
        return WorldState(
            kubeconfig=str(self.kubeconfig), api_url=self.api.url,
            namespace=self.settings.namespace,
            dns={"address": self.dns.host, "port": self.dns.port,
                 "dnsbl_zone": sandbox_dns.SANDBOX_DNSBL_ZONE},
            providers=provs,
            relay={"address": RELAY_HOST, "port": self._relay_port()},
            operator_log=str(self.root / "nodes" / "logs"
                             / f"{self.settings.operator_namespace}_<pod>.log"),
            pod_logs=str(self.root / "nodes" / "logs"),
            warmup_day_seconds=self.settings.warmup_day_seconds,
            started_at=self.started_at, control_plane=self.control_plane,
            webhooks=None if self.webhooks is None else {
                "url": self.webhooks.url,
                "events_file": str(self.root / "webhooks" / "events.jsonl")})

    def write_state(self) -> Path:
        path = self.root / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state()), indent=2) + "\n")
        tmp.replace(path)
        return path

    def _write_attempts(self) -> None:
        for receiver in self.fleet:
            done = self._attempts_written.get(receiver.name, 0)
            new = receiver.attempts[done:]
            if not new:
                continue
            path = self.root / "providers" / f"{receiver.name}.attempts.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                for attempt in new:
                    handle.write(json.dumps(attempt._asdict()) + "\n")
            self._attempts_written[receiver.name] = done + len(new)

    async def _flush_attempts(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._write_attempts()

    # ------------------------------------------------------------------ inbound relay
    async def forward_inbound(self, mail_from: str, rcpts: list[str], data: bytes) -> bool:
        """Hand a DSN or ARF report to the feedback port of a serving pod (a Service would)."""
        routed = self.client_service_pods()
        port = self.pool_feedback_port()
        for pod in routed if routed is not None else self.ready_pods():
            try:
                client = aiosmtplib.SMTP(hostname=pod["status"]["podIP"], port=port,
                                         start_tls=False, timeout=5,
                                         local_hostname="inbound.example.test")
                async with client:
                    await client.sendmail(mail_from, rcpts, data)
            except (aiosmtplib.SMTPException, OSError) as exc:
                log.info("inbound relay: pod %s refused: %s", pod["metadata"]["name"], exc)
                continue
            self.inbound.append((mail_from, rcpts, data, pod["metadata"]["name"]))
            return True
        self.inbound.append((mail_from, rcpts, data, ""))
        return False

    # ------------------------------------------------------------------ queries
    def pool(self, name: str | None = None) -> JSON:
        return self.api.get(API_VERSION, "SendingPool", name or self.settings.pool,
                            self.settings.namespace)

    def pool_smtp_port(self) -> int:
        try:
            spec = self.pool().get("spec") or {}
        except (LookupError, ApiError):
            return 587
        return int(((spec.get("submission") or {}).get("smtp") or {}).get("port") or 587)

    def pool_feedback_port(self) -> int:
        """Where the pods take DSNs and ARF reports: `deliverability.feedbackPort` of the
        sender config the operator rendered (the ConfigMap `<pool>-config`), else the SMTP
        submission port (senders without a separate feedback port)."""
        try:
            cm = self.api.get("v1", "ConfigMap", f"{self.settings.pool}-config",
                              self.settings.namespace)
        except (LookupError, ApiError):
            return self.pool_smtp_port()
        for text in (cm.get("data") or {}).values():
            with contextlib.suppress(yaml.YAMLError, AttributeError, TypeError, ValueError):
                port = (yaml.safe_load(text).get("deliverability") or {}).get("feedbackPort")
                if port:
                    return int(port)
        return self.pool_smtp_port()

    def pool_http_port(self) -> int:
        spec = self.pool().get("spec") or {}
        return int(((spec.get("submission") or {}).get("http") or {}).get("port") or 8080)

    def pool_api_key(self, pool: str | None = None) -> str | None:
        """The API key an application of the pool uses, read as it would read it: from the
        Secret `submission.http.apiKeySecretRef` names, else the one the operator generated
        (`status.submissionSecret`); None while there is none yet."""
        obj = self.pool(pool)
        # The generated key is never rewritten while the pool lives; a pool deleted and
        # created again under the same name (a new uid) gets a new one.
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        cached = self._api_keys.get(uid)
        if cached:
            return cached
        ref = (((obj.get("spec") or {}).get("submission") or {}).get("http") or {}).get(
            "apiKeySecretRef") or {}
        name = ref.get("name") or (obj.get("status") or {}).get("submissionSecret")
        if not name:
            return None
        try:
            secret = self.api.get("v1", "Secret", name, self.settings.namespace)
        except (LookupError, ApiError):
            return None
        raw = (secret.get("data") or {}).get(ref.get("key") or "api-key")
        key = base64.b64decode(raw).decode().strip() if raw else None
        owners = {o.get("uid") for o in (secret.get("metadata") or {}).get("ownerReferences")
                  or []}
        if key and not ref and uid and uid in owners:  # not an old pool's, awaiting its GC
            self._api_keys[uid] = key
        return key

    def pods(self, pool: str | None = None) -> list[JSON]:
        selector = f"mailfleet.io/pool={pool or self.settings.pool}"
        items = self.api.list("v1", "Pod", self.settings.namespace, label_selector=selector)
        return sorted(items, key=lambda p: p["metadata"]["name"])

    def ready_pods(self, pool: str | None = None) -> list[JSON]:
        return [p for p in self.pods(pool) if pod_ready(p)
                and not p["metadata"].get("deletionTimestamp")]

    def client_service_pods(self, pool: str | None = None) -> list[JSON] | None:
        """The pods the pool's client Service routes to (what an application reaches at
        `<pool>.<ns>.svc`, served by cluster DNS), or None while the Service does not select
        the serving label (an operator that does not label serving pods): callers then fall
        back to the IP holders of the pool status."""
        ns = self.settings.namespace
        try:
            service = self.api.get("v1", "Service", pool or self.settings.pool, ns)
        except (LookupError, ApiError):
            return None
        if SERVING_LABEL not in ((service.get("spec") or {}).get("selector") or {}):
            return None
        return cluster_dns.service_pods(service, self.api.list("v1", "Pod", ns))

    def ip_holders(self, pool: str | None = None) -> dict[str, str]:
        """address -> pod for the pool's Active IPs, as the SendingPool status says."""
        status = self.pool(pool).get("status") or {}
        return {ip["address"]: ip.get("pod") or "" for ip in status.get("ips") or []
                if ip.get("state") == "Active" and ip.get("pod")}

    def operator_log(self) -> Path:
        assert self.agent is not None
        pods = self.api.list("v1", "Pod", self.settings.operator_namespace)
        name = pods[0]["metadata"]["name"] if pods else "missing"
        return self.agent.log_path(self.settings.operator_namespace, name)

    def pod_log(self, name: str) -> Path:
        assert self.agent is not None
        return self.agent.log_path(self.settings.namespace, name)

    async def apply_samples(self, files: Sequence[Path] | None = None) -> str:
        """`kubectl apply` the sandbox samples (and crds/) as a user would."""
        out = await self.kubectl("apply", "-f", str(CRD_DIR))
        for path in files or sample_files():
            out += await self.kubectl("apply", "-n", self.settings.namespace, "-f", str(path))
        return out

    async def kubectl(self, *args: str, check: bool = True) -> str:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig),
                   KUBECACHEDIR=str(self.root / "kubecache"))
        proc = await asyncio.create_subprocess_exec(
            kubectl_binary(), *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {err.decode().strip()}")
        return out.decode()


def kubectl_binary() -> str:
    import sys
    candidate = Path(sys.executable).parent / "kubectl"
    return str(candidate) if candidate.exists() else (shutil.which("kubectl") or "kubectl")


def pod_ready(pod: JSON) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or [])


def condition(obj: JSON, type_: str) -> JSON | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


async def wait_until(check: Callable[[], Any], *, within: float, what: str,
                     interval: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; TimeoutError naming `what` after
    `within` seconds (with its last value or error)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while True:
        try:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            last = value
        except (LookupError, ApiError) as exc:
            value, last = None, exc
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}; "
                               f"last: {last!r}"[:600])
        await asyncio.sleep(interval)
