"""A stand-in for Cilium's egress gateway in the sandbox: CiliumEgressGatewayPolicy objects
(cilium.io/v2) become kernel source NAT rules, so that a pod selected by a policy reaches the
providers from the policy's egress IP while it connects from its own pod IP (issue 14).

`EgressGateway` watches policies, Pods, Namespaces and Nodes (list+watch informers, as
`cluster_dns` does) and keeps one nftables table equal to what `desired_rules` computes from
them, level-based: every change, and a resync timer that repairs drift, recompute the whole
rule set, and the table is replaced atomically by one `nft -f -` transaction.

Which traffic is translated, as Cilium decides it:

- Source: the pod IP of every pod a policy's `selectors` match (labels, plus the namespace
  through `namespaceSelector` or the pseudo-label `io.kubernetes.pod.namespace`), not
  host-network, not finished, with an IPv4 pod IP.
- Destination: the policy's `destinationCIDRs`, except its `excludedCIDRs` that lie inside
  them; per pod, the longest matching prefix over every policy decides (Cilium's policy map
  is an LPM trie keyed by source and destination), an excluded prefix meaning "no NAT".
- Never traffic to the cluster itself (pod and node addresses): Cilium skips the gateway for
  cluster destinations.

Not like Cilium, on purpose (docs/sandbox.md, "Egress gateway stand-in"): there is no hop to a
gateway node (`egressGateway.nodeSelector` is accepted but not used: the rule is on the one
host, which holds every address), `interface` without `egressIP` is not supported (such a
policy is skipped), and only IPv4 is translated. The egress IP must be a loopback address
(127.x), as the sandbox's egress IPs are, so that replies come back.

Why the `nft` CLI (`nft -j` to read, `nft -f -` to write) rather than netlink from Python:
the nftables netlink API has no stable library in our dependencies (pyroute2 does not speak
nf_tables rule expressions; libnftables' own Python binding is the same code as the CLI,
packaged by Debian only for the system Python), a hand-built netlink encoder would be a second
nftables to keep right, and the CLI's text is what an engineer debugging the sandbox reads with
`nft list table ip <name>`. A transaction is one process run per change, which is cheap at the
sandbox's rate of pod changes.

Tables are named `mailfleet_egw_<pid>_<n>` (the sandbox process and a counter, since one
process may run several sandboxes); `stop` deletes the table and `start` deletes tables left
by processes that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import yaml

from mailfleet_sandbox import api_watch
from mailfleet_sandbox.kube import selectors
from mailfleet_sandbox.kube.errors import ApiError

JSON = dict[str, Any]
log = logging.getLogger(__name__)

GROUP = "cilium.io"
VERSION = "v2"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CiliumEgressGatewayPolicy"
PLURAL = "ciliumegressgatewaypolicies"
CRD_NAME = f"{PLURAL}.{GROUP}"

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
"""The pseudo-label Cilium gives every endpoint: its pod's namespace."""
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
"""Cilium's prefix for the namespace's labels among an endpoint's labels."""
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"

TABLE_PREFIX = "mailfleet_egw_"
CHAIN = "egress_gateway"
DEFAULT_RESYNC = 5.0
"""Seconds between unconditional re-applies of the table (drift repair)."""
_TABLE_RE = re.compile(rf"^{TABLE_PREFIX}(\d+)_(\d+)$")
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9_./: -]")
_sequence = itertools.count(1)


# ---------------------------------------------------------------- the CRD
def policy_crd() -> JSON:
    """The CiliumEgressGatewayPolicy CRD the sandbox serves (data/, written for the sandbox)."""
    text = resources.files("mailfleet_sandbox").joinpath(
        "data/ciliumegressgatewaypolicy-crd.yaml").read_text()
    crd: JSON = yaml.safe_load(text)
    return crd


class _Api(Protocol):
    """The in-process calls of the emulator, `ClusterApi` and the tests' `RealCluster`."""

    def create(self, obj: JSON, namespace: str = "") -> JSON: ...

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> JSON: ...

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str = "") -> list[JSON]: ...


async def install_crd(api: _Api, within: float = 60.0) -> None:
    """Create the CRD unless it exists and return once its kind is served (as a Helm install
    of Cilium would have it before any policy is written)."""
    crd = policy_crd()
    try:
        api.create(crd)
    except ApiError as error:
        if error.code != 409:
            raise
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            current = api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", CRD_NAME)
            established = any(c.get("type") == "Established" and c.get("status") == "True"
                              for c in (current.get("status") or {}).get("conditions") or [])
            if established:
                api.list(API_VERSION, KIND)  # its storage answers (not 404/429 any more)
                return
        except (ApiError, LookupError):
            pass
        if loop.time() > deadline:
            raise TimeoutError(f"the {KIND} CRD is not served after {within:.0f}s")
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------- rules (pure, no I/O)
@dataclass(frozen=True)
class SnatRule:
    """Traffic from `pod_ip` to `destination` leaves from `egress_ip`, or untranslated when
    `egress_ip` is None (an excluded CIDR)."""

    pod_ip: str
    destination: str
    egress_ip: str | None
    policy: str
    pod: str
    """`<namespace>/<name>` of the pod, for the rule's comment and logs."""


@dataclass(frozen=True)
class Ruleset:
    """What the nftables table must hold: the rules in evaluation order (per pod, longest
    destination prefix first), the cluster destinations that are never translated, and the
    policies skipped with the reason."""

    rules: tuple[SnatRule, ...] = ()
    cluster: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()


def _ipv4(value: object) -> ipaddress.IPv4Address | None:
    try:
        address = ipaddress.ip_address(str(value or "").strip())
    except ValueError:
        return None
    return address if isinstance(address, ipaddress.IPv4Address) else None


def _networks(values: Iterable[object]) -> list[ipaddress.IPv4Network]:
    out = []
    for value in values:
        try:
            network = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            continue
        if isinstance(network, ipaddress.IPv4Network) and network not in out:
            out.append(network)
    return out


def endpoint_labels(pod: JSON, namespace: JSON | None) -> dict[str, str]:
    """The labels Cilium's podSelector sees on a pod's endpoint: the pod's own, its namespace
    and service account as pseudo-labels, and its namespace's labels under a prefix."""
    meta = pod.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    labels[NAMESPACE_LABEL] = str(meta.get("namespace") or "")
    labels[SERVICE_ACCOUNT_LABEL] = str((pod.get("spec") or {}).get("serviceAccountName")
                                        or "default")
    for key, value in (((namespace or {}).get("metadata") or {}).get("labels") or {}).items():
        labels[NAMESPACE_LABELS_PREFIX + str(key)] = str(value)
    return labels


def namespace_labels(name: str, namespace: JSON | None) -> dict[str, str]:
    """A namespace's labels as a namespaceSelector sees them (the API server always sets
    `kubernetes.io/metadata.name`)."""
    labels = {str(k): str(v) for k, v in
              (((namespace or {}).get("metadata") or {}).get("labels") or {}).items()}
    labels.setdefault("kubernetes.io/metadata.name", name)
    return labels


def selects(policy: JSON, pod: JSON, namespaces: Mapping[str, JSON]) -> bool:
    """Whether one of the policy's `selectors` matches the pod (ValueError: a selector that
    cannot work, such as an entry with neither selector or an unknown operator)."""
    ns_name = str((pod.get("metadata") or {}).get("namespace") or "")
    namespace = namespaces.get(ns_name)
    for index, entry in enumerate((policy.get("spec") or {}).get("selectors") or []):
        entry = entry or {}
        if entry.get("namespaceSelector") is None and entry.get("podSelector") is None:
            raise ValueError(f"selectors[{index}] has neither podSelector nor "
                             "namespaceSelector")
        try:
            ns_selector = selectors.selector_from_label_selector_object(
                entry.get("namespaceSelector"))
            pod_selector = selectors.selector_from_label_selector_object(
                entry.get("podSelector"))
        except selectors.SelectorError as error:
            raise ValueError(f"selectors[{index}]: {error}") from error
        if entry.get("namespaceSelector") is not None and \
                not ns_selector.matches(namespace_labels(ns_name, namespace)):
            continue
        if pod_selector.matches(endpoint_labels(pod, namespace)):
            return True
    return False


def _source_pods(pods: Iterable[JSON]) -> list[tuple[str, JSON]]:
    """(pod IP, pod) of the pods Cilium would manage an endpoint for."""
    out = []
    for pod in pods:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        address = _ipv4(status.get("podIP"))
        if address is not None:
            out.append((str(address), pod))
    return sorted(out, key=lambda item: ipaddress.IPv4Address(item[0]))


def cluster_addresses(pods: Iterable[JSON], nodes: Iterable[JSON] = ()) -> tuple[str, ...]:
    """Pod and node IPv4 addresses: destinations inside the cluster, never translated."""
    found: set[ipaddress.IPv4Address] = set()
    for pod in pods:
        status = pod.get("status") or {}
        for value in [status.get("podIP"), *(p.get("ip") for p in status.get("podIPs") or [])]:
            if (address := _ipv4(value)) is not None:
                found.add(address)
    for node in nodes:
        for entry in (node.get("status") or {}).get("addresses") or []:
            if (address := _ipv4(entry.get("address"))) is not None:
                found.add(address)
    return tuple(str(a) for a in sorted(found))


def _policy_problem(policy: JSON) -> str | None:
    spec = policy.get("spec") or {}
    gateway = spec.get("egressGateway") or {}
    if not gateway.get("egressIP"):
        return "no egressGateway.egressIP (interface addresses are not supported here)"
    if _ipv4(gateway.get("egressIP")) is None:
        return f"egressIP {gateway.get('egressIP')!r} is not IPv4 (IPv4 only here)"
    if not _networks(spec.get("destinationCIDRs") or []):
        return "no IPv4 destinationCIDRs"
    return None


def desired_rules(policies: Iterable[JSON], pods: Iterable[JSON], *,
                  namespaces: Iterable[JSON] = (), nodes: Iterable[JSON] = ()) -> Ruleset:
    """The source NAT the policies call for, given the pods, namespaces and nodes (pure).

    Per pod IP and destination prefix one entry: from the first policy by name when several
    give the same prefix different egress IPs (Cilium leaves that case undefined), an
    excluded prefix winning over a translated one."""
    pods = list(pods)
    by_namespace = {str(ns["metadata"]["name"]): ns for ns in namespaces}
    sources = _source_pods(pods)
    entries: dict[tuple[str, ipaddress.IPv4Network], SnatRule] = {}
    skipped: list[tuple[str, str]] = []
    for policy in sorted(policies, key=lambda p: str(p["metadata"]["name"])):
        name = str(policy["metadata"]["name"])
        problem = _policy_problem(policy)
        spec = policy.get("spec") or {}
        if problem is None:
            try:
                chosen = [(ip, pod) for ip, pod in sources
                          if selects(policy, pod, by_namespace)]
            except ValueError as error:
                problem = str(error)
        if problem is not None:
            skipped.append((name, problem))
            continue
        egress = str(_ipv4(spec["egressGateway"]["egressIP"]))
        destinations = _networks(spec.get("destinationCIDRs") or [])
        excluded = [e for e in _networks(spec.get("excludedCIDRs") or [])
                    if any(e.subnet_of(d) for d in destinations)]
        for ip, pod in chosen:
            meta = pod["metadata"]
            pod_name = f"{meta.get('namespace', '')}/{meta['name']}"
            for network, target in [*((d, egress) for d in destinations),
                                    *((e, None) for e in excluded)]:
                key = (ip, network)
                current = entries.get(key)
                if current is None or (target is None and current.egress_ip is not None):
                    entries[key] = SnatRule(ip, str(network), target, name, pod_name)
    ordered = sorted(entries.items(), key=lambda item: (
        ipaddress.IPv4Address(item[0][0]), -item[0][1].prefixlen, item[0][1]))
    rules = tuple(rule for _, rule in ordered)
    cluster = cluster_addresses(pods, nodes) if rules else ()
    return Ruleset(rules=rules, cluster=cluster, skipped=tuple(skipped))


def source_address(ruleset: Ruleset, pod_ip: str, destination: str) -> str:
    """The source address a receiver at `destination` sees for a connection the pod opens
    from `pod_ip`, by the rules as the kernel evaluates them (pure)."""
    target = ipaddress.IPv4Address(destination)
    if destination in ruleset.cluster:
        return pod_ip
    for rule in ruleset.rules:
        if rule.pod_ip == pod_ip and target in ipaddress.IPv4Network(rule.destination):
            return rule.egress_ip or pod_ip
    return pod_ip


def _comment(text: str) -> str:
    return _COMMENT_UNSAFE.sub("_", text)[:120]


def render_table(table: str, ruleset: Ruleset) -> str:
    """The `nft -f` script that replaces `table` with the rule set in one transaction (the
    leading `table` + `delete table` create-then-delete idiom works whether it exists)."""
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{",
             f"\tchain {CHAIN} {{",
             "\t\ttype nat hook postrouting priority srcnat; policy accept;"]
    if ruleset.cluster:
        lines.append(f"\t\tip daddr {{ {', '.join(ruleset.cluster)} }} accept "
                     'comment "cluster destinations"')
    for rule in ruleset.rules:
        match = f"ip saddr {rule.pod_ip}"
        if rule.destination != "0.0.0.0/0":
            match += f" ip daddr {rule.destination}"
        if rule.egress_ip is None:
            action, why = "accept", f"excluded {rule.policy} {rule.pod}"
        else:
            action, why = f"snat to {rule.egress_ip}", f"{rule.policy} {rule.pod}"
        lines.append(f'\t\t{match} {action} comment "{_comment(why)}"')
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


def table_name(pid: int | None = None, sequence: int | None = None) -> str:
    """A table name unique to this sandbox: the process id and a per-process counter."""
    return f"{TABLE_PREFIX}{os.getpid() if pid is None else pid}_" \
           f"{next(_sequence) if sequence is None else sequence}"


def stale_tables(listing: JSON, alive: Mapping[int, bool] | None = None) -> list[str]:
    """Our tables in `nft -j list tables` output whose process is gone (pure given `alive`:
    pid -> running; pids not in it are looked up)."""
    out = []
    for item in listing.get("nftables") or []:
        table = item.get("table") if isinstance(item, dict) else None
        if not table or table.get("family") != "ip":
            continue
        match = _TABLE_RE.match(str(table.get("name") or ""))
        if match is None:
            continue
        pid = int(match.group(1))
        running = alive.get(pid) if alive is not None and pid in alive else _pid_alive(pid)
        if not running:
            out.append(str(table["name"]))
    return sorted(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- nft (I/O)
class NftError(RuntimeError):
    """`nft` refused a command; carries its stderr."""


def nft_binary() -> str | None:
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if Path(p).exists()), None)


def nft_unusable_reason() -> str | None:
    """Why the stand-in cannot run here (None: `nft` works): the binary is missing (Debian
    package `nftables`, `make sandbox-tools`) or the process may not change the ruleset
    (it needs root, or CAP_NET_ADMIN in its network namespace)."""
    binary = nft_binary()
    if binary is None:
        return "the nft command is missing (Debian package nftables; `make sandbox-tools`)"
    try:
        done = subprocess.run([binary, "-j", "list", "tables"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"nft does not run: {error}"
    if done.returncode != 0:
        return f"nft cannot read the ruleset (needs root or CAP_NET_ADMIN): " \
               f"{done.stderr.strip()[:200]}"
    return None


async def run_nft(*args: str, script: str | None = None) -> str:
    """Run `nft args` (with `script` on stdin); NftError with its stderr on failure."""
    binary = nft_binary()
    if binary is None:
        raise NftError("the nft command is missing")
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdin=asyncio.subprocess.PIPE if script is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(script.encode() if script is not None else None)
    if proc.returncode != 0:
        raise NftError(f"nft {' '.join(args)}: {err.decode().strip()[:2000]}")
    return out.decode()


async def remove_stale_tables() -> list[str]:
    """Delete the tables of sandboxes whose process is gone; their names."""
    listing = json.loads(await run_nft("-j", "list", "tables") or "{}")
    stale = stale_tables(listing)
    for name in stale:
        with contextlib.suppress(NftError):  # another sandbox removed it first
            await run_nft("delete", "table", "ip", name)
    return stale


# ---------------------------------------------------------------- the controller
class EgressGateway:
    """Policies, Pods, Namespaces and Nodes -> one nftables table; see the module docstring.
    `async with EgressGateway(api_url, ssl_context=...) as gateway:`; the CRD must be served
    (`install_crd`)."""

    def __init__(self, api: str | Path, *, ssl_context: ssl.SSLContext | None = None,
                 table: str | None = None, resync: float = DEFAULT_RESYNC) -> None:
        self.table = table or table_name()
        self.resync = resync
        self.ruleset = Ruleset()
        """The rule set the table holds now (last applied)."""
        self._client = api_watch.ApiClient(api_watch.api_server_url(api), ssl_context)
        paths = {"policies": f"/apis/{GROUP}/{VERSION}/{PLURAL}", "pods": "/api/v1/pods",
                 "namespaces": "/api/v1/namespaces", "nodes": "/api/v1/nodes"}
        self._informers = {key: api_watch.Informer(self._client, path, self._changed)
                           for key, path in paths.items()}
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._applied = False
        self._reported: tuple[tuple[str, str], ...] = ()

    async def __aenter__(self) -> EgressGateway:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self, within: float = 30.0) -> EgressGateway:
        stale = await remove_stale_tables()
        if stale:
            log.info("egress gateway: removed tables of finished sandboxes tables=%s", stale)
        self._tasks = [asyncio.create_task(i.run()) for i in self._informers.values()]
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait()
                                                for i in self._informers.values())), within)
        await self.apply(self.compute())
        self._tasks.append(asyncio.create_task(self._loop()))
        log.info("egress gateway: started table=ip %s", self.table)
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._applied:
            with contextlib.suppress(NftError):
                await run_nft("delete", "table", "ip", self.table)
            self._applied = False
        await self._client.close()

    def compute(self) -> Ruleset:
        """The rule set the current objects call for."""
        items = {key: list(i.items.values()) for key, i in self._informers.items()}
        return desired_rules(items["policies"], items["pods"], namespaces=items["namespaces"],
                             nodes=items["nodes"])

    async def apply(self, ruleset: Ruleset) -> None:
        """Replace the table with `ruleset` (one transaction)."""
        await run_nft("-f", "-", script=render_table(self.table, ruleset))
        self._applied = True
        if ruleset.rules != self.ruleset.rules:
            log.info("egress gateway: applied table=ip %s rules=%d", self.table,
                     len(ruleset.rules))
        self.ruleset = ruleset
        if ruleset.skipped != self._reported:
            for policy, reason in ruleset.skipped:
                log.warning("egress gateway: policy skipped cegp=%s reason=%s", policy, reason)
            self._reported = ruleset.skipped

    def _changed(self) -> None:
        self._dirty.set()

    async def _loop(self) -> None:
        last = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.resync)
            self._dirty.clear()
            ruleset = self.compute()
            if ruleset == self.ruleset and time.monotonic() - last < self.resync:
                continue
            try:
                await self.apply(ruleset)
                last = time.monotonic()
            except NftError as error:
                log.warning("egress gateway: nft failed table=ip %s error=%s", self.table,
                            error)
                await asyncio.sleep(1.0)
                self._dirty.set()


async def start_for_world(stack: contextlib.AsyncExitStack, api: _Api, url: str, *,
                          ssl_context: ssl.SSLContext | None) -> EgressGateway | None:
    """What the sandbox world runs: serve the CRD, and run the stand-in on `stack` when nft
    is usable here (else say what is missing; policies are then stored but not enforced)."""
    await install_crd(api)
    reason = nft_unusable_reason()
    if reason is not None:
        log.warning("egress gateway stand-in not started: %s; CiliumEgressGatewayPolicy "
                    "objects are stored but mail leaves from the pod IPs", reason)
        return None
    return await stack.enter_async_context(EgressGateway(url, ssl_context=ssl_context))

