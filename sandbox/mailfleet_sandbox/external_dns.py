"""An external-dns stand-in for the sandbox: DNSEndpoint objects in the API emulator become
records of the sandbox `DNSServer` (DESIGN.md §5).

`ExternalDNS` watches `externaldns.k8s.io/v1alpha1` DNSEndpoints over HTTP (registering their
CRD, shipped in `data/dnsendpoint-crd.yaml`, when the API lacks it) and feeds their endpoints
to the server through `DNSServer.attach_source`: creations, updates (TXT included) and
deletions are reflected, like external-dns with a provider that updates and deletes records.
Once a generation is published it writes `status.observedGeneration`, as external-dns does.

Endpoints of every object with the same name and type form one record set (targets merged in
order, duplicates dropped), which is what the zone would hold. An endpoint whose target is not
valid zone text for its type is skipped with a warning rather than breaking every answer.

`lag` (seconds) delays each change before it is visible in DNS, to model slow propagation;
status is written when the change becomes visible. `max_ttl` caps the TTL records are served
with, as providers that clamp TTLs do: the sandbox serves its records for a few seconds, so the
operator's wait of one TTL before a DKIM key counts as Verified stays short in the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import yaml

from mailfleet_sandbox import api_watch
from mailfleet_sandbox import dns as sandbox_dns

JSON = dict[str, Any]
log = logging.getLogger(__name__)

GROUP = "externaldns.k8s.io"
VERSION = "v1alpha1"
CRD_NAME = f"dnsendpoints.{GROUP}"
DEFAULT_TTL = 300
"""TTL of endpoints without recordTTL (external-dns leaves it to the provider's default)."""


def dnsendpoint_crd() -> JSON:
    """The DNSEndpoint CustomResourceDefinition as external-dns ships it."""
    text = resources.files("mailfleet_sandbox").joinpath("data/dnsendpoint-crd.yaml").read_text()
    crd: JSON = yaml.safe_load(text)
    return crd


def _valid(rtype: str, value: str) -> bool:
    if rtype == "TXT":
        return True
    try:
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.RdataType.make(rtype), value,
                            origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError, TypeError):
        return False
    return True


def endpoint_records(objects: Iterable[JSON], default_ttl: int = DEFAULT_TTL,
                     max_ttl: int | None = None) -> list[sandbox_dns.Record]:
    """The record sets a set of DNSEndpoint objects publishes (pure, no I/O)."""
    merged: dict[tuple[str, str], tuple[list[str], int]] = {}
    for obj in sorted(objects, key=lambda o: (o["metadata"].get("namespace", ""),
                                              o["metadata"]["name"])):
        for endpoint in (obj.get("spec") or {}).get("endpoints") or []:
            name = str(endpoint.get("dnsName") or "").strip().rstrip(".").lower()
            rtype = str(endpoint.get("recordType") or "").strip().upper()
            if not name or not rtype:
                continue
            targets = [str(t) for t in endpoint.get("targets") or []]
            good = [t for t in targets if _valid(rtype, t)]
            if len(good) != len(targets):
                log.warning("skipping invalid targets dnsendpoint=%s/%s name=%s type=%s",
                            obj["metadata"].get("namespace"), obj["metadata"]["name"],
                            name, rtype)
            if not good:
                continue
            values, _ = merged.setdefault((name, rtype), ([], int(
                endpoint.get("recordTTL") or default_ttl)))
            values.extend(t for t in good if t not in values)
    return [sandbox_dns.Record(name, rtype, tuple(values),
                               ttl if max_ttl is None else min(ttl, max_ttl))
            for (name, rtype), (values, ttl) in sorted(merged.items())]


async def ensure_crd(client: api_watch.ApiClient, within: float = 10.0) -> None:
    """Create the DNSEndpoint CRD unless the API has it, and wait until it is served."""
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
    code, _ = await client.request("GET", path, ok=(200, 404))
    if code == 404:
        code, body = await client.request(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", dnsendpoint_crd(),
            ok=(200, 201, 409))
        if code not in (200, 201, 409):
            raise RuntimeError(f"cannot create the DNSEndpoint CRD: {body.get('message')}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        code, _ = await client.request("GET", f"/apis/{GROUP}/{VERSION}/dnsendpoints",
                                       ok=(200, 404))
        if code == 200:
            return
        if loop.time() > deadline:
            raise TimeoutError("the DNSEndpoint CRD is not served")
        await asyncio.sleep(0.05)


class ExternalDNS:
    """DNSEndpoints -> `DNSServer` records; see the module docstring."""

    def __init__(self, api: str | Path, server: sandbox_dns.DNSServer, *, lag: float = 0.0,
                 default_ttl: int = DEFAULT_TTL, register_crd: bool = True,
                 ssl_context: ssl.SSLContext | None = None, max_ttl: int | None = None) -> None:
        self.api_url = api_watch.api_server_url(api)
        self.server = server
        self.lag = lag
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.register_crd = register_crd
        self._client = api_watch.ApiClient(self.api_url, ssl_context)
        self._informer = api_watch.Informer(self._client, f"/apis/{GROUP}/{VERSION}/dnsendpoints",
                                             self._changed)
        self._visible: list[sandbox_dns.Record] = []
        self._task: asyncio.Task[None] | None = None
        self._detach: Any = None
        self._pending: set[asyncio.Task[None]] = set()
        self._observed: dict[tuple[str, str], int] = {}

    async def __aenter__(self) -> ExternalDNS:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> ExternalDNS:
        if self.register_crd:
            await ensure_crd(self._client)
        self._detach = self.server.attach_source(self.records)
        self._task = asyncio.create_task(self._informer.run())
        await asyncio.wait_for(self._informer.synced.wait(), 10)
        return self

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._detach is not None:
            self._detach()
            self._detach = None
        await self._client.close()

    def records(self) -> list[sandbox_dns.Record]:
        """The records visible in DNS now (the server calls this on every query)."""
        return list(self._visible)

    def _changed(self) -> None:
        objects = [dict(o) for o in self._informer.items.values()]
        snapshot = endpoint_records(objects, self.default_ttl, self.max_ttl)
        task = asyncio.create_task(self._publish(snapshot, objects))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, snapshot: list[sandbox_dns.Record], objects: list[JSON]) -> None:
        if self.lag > 0:
            await asyncio.sleep(self.lag)
        self._visible = snapshot
        for obj in objects:
            meta = obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            generation = int(meta.get("generation") or 0)
            if self._observed.get(key) == generation or \
                    (obj.get("status") or {}).get("observedGeneration") == generation:
                self._observed[key] = generation
                continue
            code, _ = await self._client.request(
                "PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{key[0]}/dnsendpoints/{key[1]}"
                "/status", {"status": {"observedGeneration": generation}},
                "application/merge-patch+json", ok=(200, 404, 409))
            if code == 200:
                self._observed[key] = generation
