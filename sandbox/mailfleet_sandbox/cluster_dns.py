"""Cluster DNS for Services: a CoreDNS (`kubernetes` plugin) stand-in for the sandbox.

`ClusterDNS` watches Services, Pods and Endpoints in the API emulator over HTTP and feeds
the sandbox `DNSServer` (through `attach_source`) with the names pods use to find each other:

- `<svc>.<ns>.svc` and `<svc>.<ns>.svc.<domain>` (domain `cluster.local`): A records;
- `<hostname>.<subdomain>.<ns>.svc[.<domain>]` for pods with `spec.hostname` and
  `spec.subdomain` naming a headless Service (StatefulSet pods: `pool-0.pool-pods.mail.svc`).

Which pods a Service's name answers with is what the endpoints controller would publish: pods
of the Service's namespace matching its selector, with a pod IP, not in a terminal phase;
Ready ones only (and not terminating), unless `publishNotReadyAddresses`, which publishes every
such pod, terminating ones included. A Service without a selector answers with the addresses
of its hand-written Endpoints object, as in Kubernetes. The emulator does not maintain
Endpoints for selector Services, so they are computed from the Pods here.

Not like a cluster, on purpose:

- ClusterIP Services answer with the Ready pod IPs rather than the cluster IP: the sandbox has
  no kube-proxy, so nothing would route the virtual IP. A client therefore sees several A
  records and picks one, which is what a cluster IP's load balancing would have done.
- Records have a short TTL (5 s by default, CoreDNS uses 30 s) so that the scenes see pod
  changes promptly; no SRV, PTR or `<ip>.<ns>.pod` records; ExternalName Services are
  not served. There are no search domains: clients ask for `<svc>.<ns>.svc` in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from mailfleet_sandbox import api_watch
from mailfleet_sandbox import dns as sandbox_dns

JSON = dict[str, Any]
log = logging.getLogger(__name__)

DEFAULT_DOMAIN = "cluster.local"
DEFAULT_TTL = 5


def _ready(pod: JSON) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _ipv4(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        return False


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def service_pods(service: JSON, pods: Iterable[JSON]) -> list[JSON]:
    """The pods the endpoints controller would publish for `service` (pure)."""
    meta, spec = service.get("metadata") or {}, service.get("spec") or {}
    selector = spec.get("selector") or {}
    if not selector:
        return []
    not_ready_too = bool(spec.get("publishNotReadyAddresses"))
    out = []
    for pod in pods:
        pmeta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if pmeta.get("namespace") != meta.get("namespace"):
            continue
        if not _matches(selector, pmeta.get("labels") or {}):
            continue
        if not _ipv4(str(status.get("podIP") or "")):
            continue
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        terminating = bool(pmeta.get("deletionTimestamp"))
        if not_ready_too or (_ready(pod) and not terminating):
            out.append(pod)
    return sorted(out, key=lambda p: str(p["metadata"]["name"]))


def _endpoints_addresses(endpoints: JSON | None) -> list[tuple[str, str]]:
    """(ip, hostname) of the ready addresses of a hand-written Endpoints object."""
    out: list[tuple[str, str]] = []
    for subset in (endpoints or {}).get("subsets") or []:
        for address in subset.get("addresses") or []:
            ip = str(address.get("ip") or "")
            if _ipv4(ip):
                out.append((ip, str(address.get("hostname") or "")))
    return out


def cluster_records(services: Iterable[JSON], pods: Iterable[JSON],
                    endpoints: Iterable[JSON] = (), *, domain: str = DEFAULT_DOMAIN,
                    ttl: int = DEFAULT_TTL) -> list[sandbox_dns.Record]:
    """The A records CoreDNS would serve for these objects (pure, no I/O)."""
    pods = list(pods)
    by_key = {((e.get("metadata") or {}).get("namespace", ""), e["metadata"]["name"]): e
              for e in endpoints}
    names: dict[str, list[str]] = {}

    def add(name: str, ip: str) -> None:
        for full in (name, f"{name}.{domain}"):
            values = names.setdefault(full.lower(), [])
            if ip not in values:
                values.append(ip)

    for service in services:
        meta, spec = service.get("metadata") or {}, service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        svc, ns = str(meta.get("name")), str(meta.get("namespace"))
        base = f"{svc}.{ns}.svc"
        headless = spec.get("clusterIP") == "None"
        if spec.get("selector"):
            addresses = [(str(p["status"]["podIP"]),
                          str((p.get("spec") or {}).get("hostname") or "")
                          if (p.get("spec") or {}).get("subdomain") == svc else "")
                         for p in service_pods(service, pods)]
        else:
            addresses = _endpoints_addresses(by_key.get((ns, svc)))
        for ip, hostname in addresses:
            add(base, ip)
            if headless and hostname:
                add(f"{hostname}.{base}", ip)
    return [sandbox_dns.Record(name, "A", tuple(values), ttl)
            for name, values in sorted(names.items()) if values]


class ClusterDNS:
    """Services, Pods and Endpoints -> `DNSServer` records; see the module docstring."""

    def __init__(self, api: str | Path, server: sandbox_dns.DNSServer, *,
                 domain: str = DEFAULT_DOMAIN, ttl: int = DEFAULT_TTL,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.server, self.domain, self.ttl = server, domain, ttl
        self._client = api_watch.ApiClient(api_watch.api_server_url(api), ssl_context)
        self._informers = [api_watch.Informer(self._client, f"/api/v1/{resource}",
                                               self._changed)
                           for resource in ("services", "pods", "endpoints")]
        self._records: list[sandbox_dns.Record] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._detach: Any = None

    async def __aenter__(self) -> ClusterDNS:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> ClusterDNS:
        self._detach = self.server.attach_source(self.records)
        self._tasks = [asyncio.create_task(i.run()) for i in self._informers]
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self._informers)),
                               10)
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._detach is not None:
            self._detach()
            self._detach = None
        await self._client.close()

    def records(self) -> list[sandbox_dns.Record]:
        """The records served now (the DNS server calls this on every query)."""
        return self._records

    def _changed(self) -> None:
        services, pods, endpoints = (list(i.items.values()) for i in self._informers)
        self._records = cluster_records(services, pods, endpoints, domain=self.domain,
                                        ttl=self.ttl)
