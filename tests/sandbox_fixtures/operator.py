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
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from mailfleet_operator import running
from mailfleet_operator import settings as settings_module
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.kube import ApiServer

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
API_VERSION = "mailfleet.io/v1alpha1"

DNSENDPOINT_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "dnsendpoints.externaldns.k8s.io"},
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
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy; fail with its last value on timeout."""
    deadline = time.monotonic() + timeout
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
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last: {last!r}")
        await asyncio.sleep(interval)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


class OperatorRunner:
    """The operator as a task on the test's loop: start, stop (a crash, as far as the API
    can tell: no state survives in memory) and start again."""

    def __init__(self, settings: settings_module.Settings) -> None:
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self.http_port: int | None = None
        self.starts = 0

    async def start(self, *, timeout: float = 10.0) -> None:
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(
            running.run_operator(
                self.settings, stop_flag=self._stop, ready_flag=ready, http_port_ready=port
            )
        )
        self.starts += 1
        waiter = asyncio.ensure_future(ready.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            waiter.cancel()
            await self._task  # raises the startup error
            raise AssertionError("the operator exited during startup")
        if not done:
            waiter.cancel()
            raise AssertionError(f"the operator was not ready within {timeout}s")
        if port.done():
            self.http_port = port.result()

    async def stop(self) -> None:
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def operator_settings(kubeconfig: Path, dns: DNSServer, **overrides: Any) -> settings_module.Settings:
    values: dict[str, Any] = {
        "kubeconfig": str(kubeconfig),
        "namespaces": ("default",),
        "http_host": "127.0.0.1",
        "http_port": 0,
        "dns_nameservers": (f"{dns.host}:{dns.port}",),
        "dns_timeout": 1.0,
        "step_delay": 0.1,
        "error_delay": 0.5,
        "log_format": "text",
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
