"""Fixtures running the mailfleet operator in-process against the sandbox API emulator.

`operator` starts `running.run_operator` as an asyncio task (so a test can stop and start it
again to simulate a crash or a rollout: all rotation state lives in the API), with the
mailfleet CRDs and external-dns's DNSEndpoint CRD installed and DNS verification pointed at
the `dns_server` fixture. `wait_for` polls a condition with a deadline (never a bare sleep).

Reuse from other controllers' tests:

    async def test_x(operator: OperatorRunner, kube_api: ApiServer) -> None:
        kube_api.create({...SendingPool...})
        await wait_for(lambda: status_of(kube_api, "SendingPool", "p")..., timeout=10)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from mailfleet_operator import running
from mailfleet_operator import settings as settings_module
from mailfleet_operator.logic import egress_networks
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.kube import ApiServer
from mailfleet_sandbox.kube.errors import ApiError

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
API_VERSION = "mailfleet.io/v1alpha1"

DNSENDPOINT_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "dnsendpoints.externaldns.k8s.io", "annotations": {
        # kube-apiserver refuses CRDs in *.k8s.io groups without it (external-dns has it)
        "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/external-dns/pull/2007"}},
    "spec": {
        "group": "externaldns.k8s.io",
        "names": {"kind": "DNSEndpoint", "listKind": "DNSEndpointList",
                  "plural": "dnsendpoints", "singular": "dnsendpoint"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {"endpoints": {
                        "type": "array",
                        "items": {"type": "object", "properties": {
                            "dnsName": {"type": "string"},
                            "recordType": {"type": "string"},
                            "recordTTL": {"type": "integer", "format": "int64"},
                            "targets": {"type": "array", "items": {"type": "string"}},
                            "labels": {"type": "object",
                                       "additionalProperties": {"type": "string"}},
                            "setIdentifier": {"type": "string"},
                            "providerSpecific": {"type": "array", "items": {
                                "type": "object",
                                "properties": {"name": {"type": "string"},
                                               "value": {"type": "string"}}}},
                        }},
                    }}},
                    "status": {"type": "object",
                               "properties": {"observedGeneration": {"type": "integer"}}},
                },
            }},
        }],
    },
}
"""external-dns's DNSEndpoint CRD (the fields the operator writes), as `helm install
external-dns` would install it."""


def install_crds(api: ApiServer) -> None:
    """The mailfleet CRDs from crds/ plus DNSEndpoint (idempotent per fresh emulator)."""
    for path in sorted(CRD_DIR.glob("*.yaml")):
        api.create(yaml.safe_load(path.read_text()))
    api.create(DNSENDPOINT_CRD)


T = TypeVar("T")


async def wait_for(
    check: Callable[[], T | Awaitable[T]],
    *,
    within: float = 60.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy; fail with its last value after
    `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            last = value
        except (KeyError, IndexError, TypeError, LookupError) as error:
            last = error
            value = None
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {message}; last: {last!r}")
        await asyncio.sleep(interval)


async def pod_created(api: ApiServer, namespace: str, name: str, within: float = 30.0) -> None:
    """Wait until a controller (the StatefulSet controller, say) has made pod `name`: at once
    after `settle()` on the emulator, a moment later on a real control plane."""

    def exists() -> bool:
        try:
            api.get("v1", "Pod", name, namespace)
        except ApiError as error:
            if error.code == 404:
                return False
            raise
        return True

    await wait_for(exists, within=within, message=f"pod {namespace}/{name}")


class ManualClock(settings_module.Clock):
    """The operator's clock, moved by the test, so leases, `unhealthyAfter` and warm-up days
    pass without sleeping. Starts at `start`, by default the real time (the emulator stamps
    pod conditions with the wall clock)."""

    def __init__(self, start: datetime.datetime | None = None) -> None:
        super().__init__()
        self.moment = start or datetime.datetime.now(datetime.UTC)
        self.origin = self.moment

    def now(self) -> datetime.datetime:
        return self.moment

    def monotonic(self) -> float:
        return (self.moment - self.origin).total_seconds()

    def advance(self, seconds: float) -> None:
        self.moment += datetime.timedelta(seconds=seconds)

    def to(self, moment: datetime.datetime) -> None:
        self.moment = moment


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


class OperatorRunner:
    """The operator on its own thread and event loop (kopf cancels foreign tasks of the loop
    it runs on when it stops). `stop()` then `start()` is a crash and a restart as far as
    the API can tell: nothing survives in memory."""

    def __init__(self, settings: settings_module.Settings) -> None:
        self.settings = settings
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.http_port: int | None = None
        self.starts = 0

    def _main(self, ready: threading.Event) -> None:
        def remember_port(port: int) -> None:
            self.http_port = port

        try:
            asyncio.run(
                running.run_operator(
                    self.settings, stop_flag=self._stop, ready_flag=ready,
                    on_http_port=remember_port,
                )
            )
        except BaseException as error:  # reported by start()/stop()
            self._error = error

    async def start(self, *, within: float = 10.0) -> None:
        self._stop = threading.Event()
        self._error = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name="mailfleet-operator", daemon=True
        )
        self._thread.start()
        self.starts += 1
        thread = self._thread
        await wait_for(
            lambda: ready.is_set() or not thread.is_alive(), within=within,
            message="the operator to be ready",
        )
        if self._error is not None or not thread.is_alive():
            raise AssertionError(f"the operator exited during startup: {self._error!r}")

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        await wait_for(lambda: not thread.is_alive(), within=15,
                       message="the operator to stop")

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def operator_settings(
    kubeconfig: Path, dns: DNSServer, **overrides: Any
) -> settings_module.Settings:
    values: dict[str, Any] = {
        "kubeconfig": str(kubeconfig),
        "namespaces": ("default",),
        "http_host": "127.0.0.1",
        "http_port": 0,
        "dns_nameservers": (f"{dns.host}:{dns.port}",),
        # the zones' nameservers (NS records the sandbox DNS serves) answer on its port
        "dns_authoritative_port": dns.port,
        "dns_timeout": 1.0,
        "step_delay": 0.1,
        "error_delay": 0.5,
        "log_format": "text",
        # The sandbox's egress IPs are 127.x: loopback is its Internet.
        "refused_egress_networks": egress_networks.allowing_loopback(),
    }
    values.update(overrides)
    return settings_module.Settings(**values)


@pytest.fixture
async def operator(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer
) -> AsyncIterator[OperatorRunner]:
    """The operator serving namespace `default` of `kube_api`, verifying DNS against
    `dns_server`; CRDs installed; stopped at teardown."""
    install_crds(kube_api)
    runner = OperatorRunner(operator_settings(kubeconfig, dns_server))
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


# --- DomainAuth helpers (shared by the test_domainauth_* modules) -----------------------

NAME = "example-com"
PUBLISH_TTL = 1
"""TTL of the records `publisher` writes: short, so a key's TTL wait takes a second."""


def create_domainauth(api: ApiServer, spec: dict[str, Any], name: str = NAME) -> None:
    body = {"domain": "example.com", "verification": {"interval": "10s"}, **spec}
    api.create({"apiVersion": API_VERSION, "kind": "DomainAuth",
                "metadata": {"name": name, "namespace": "default"}, "spec": body})


def domainauth(api: ApiServer, name: str = NAME) -> dict[str, Any]:
    return api.get(API_VERSION, "DomainAuth", name, "default")


def key_states(api: ApiServer) -> dict[str, str]:
    keys = ((domainauth(api).get("status") or {}).get("dkim") or {}).get("keys") or []
    return {k["selector"]: k["state"] for k in keys}


def key_secrets(api: ApiServer) -> dict[str, dict[str, Any]]:
    selector = f"mailfleet.io/domainauth={NAME}"
    return {
        s["metadata"]["labels"]["mailfleet.io/selector"]: s
        for s in api.list("v1", "Secret", "default", label_selector=selector)
    }


def events(api: ApiServer) -> list[str]:
    items = sorted(api.list("v1", "Event", "default"),
                   key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [e["reason"] for e in items]


def rotate(api: ApiServer, value: str) -> None:
    api.patch(API_VERSION, "DomainAuth", NAME,
              {"metadata": {"annotations": {"mailfleet.io/rotate": value}}}, "default")


@contextlib.asynccontextmanager
async def publisher(
    api: ApiServer, dns_server: DNSServer, *, hold: Callable[[str], bool] = lambda _n: False,
    ttl: int = PUBLISH_TTL,
) -> AsyncIterator[None]:
    """Copy status.records into DNS continuously, like a diligent human (or external-dns)
    would; names for which `hold(name)` is true are left alone. Records get a short `ttl`
    (the key's TTL wait before Verified is one of it)."""

    async def loop() -> None:
        while True:
            status = domainauth(api).get("status") or {}
            wanted = {(r["name"], r["type"]): r["value"] for r in status.get("records") or []}
            for (name, rtype), value in wanted.items():
                if not hold(name) and dns_server.records(name, rtype) != [value]:
                    dns_server.set_records(name, rtype, [value], ttl=ttl)
            for name in dns_server.names():
                if "._domainkey." in name and (name, "TXT") not in wanted and not hold(name):
                    dns_server.remove_records(name, "TXT")
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
