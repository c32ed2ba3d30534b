"""kopf, run in-process against the emulator, sees create, update and delete (through its
finalizer) and resumes after a restart without replaying changes it already handled."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any

import kopf
from integration.kube.conftest import WIDGET_CRD
from mailfleet_sandbox.kube import ApiServer

GROUP, VERSION, PLURAL = "conformance.mailfleet.io", "v1", "widgets"


def _widget(name: str, size: str = "small") -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"size": size}}


async def _until(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
    return value


def _registry(calls: list[tuple[str, str]], url: str) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(name: str, **_: Any) -> dict[str, str]:
        calls.append(("create", name))
        return {"seen": "yes"}

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def updated(name: str, **_: Any) -> None:
        calls.append(("update", name))

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def deleted(name: str, **_: Any) -> None:
        calls.append(("delete", name))

    return registry


async def _run_operator(registry: kopf.OperatorRegistry) -> tuple[asyncio.Task[None],
                                                                   asyncio.Event]:
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 5
    settings.posting.level = logging.WARNING
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=registry, settings=settings, standalone=True, clusterwide=True,
        stop_flag=stop, ready_flag=ready))
    await asyncio.wait_for(ready.wait(), 15)
    return task, stop


async def _stop(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_kopf_handles_lifecycle_and_resumes(kube_api: ApiServer) -> None:
    """Create, update and delete reach kopf handlers; the delete goes through kopf's
    finalizer; after a restart, already-handled objects are not handled again."""
    crd = copy.deepcopy(WIDGET_CRD)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["status"] = {"type": "object",
                                      "x-kubernetes-preserve-unknown-fields": True}
    kube_api.create(crd)
    calls: list[tuple[str, str]] = []
    task, stop = await _run_operator(_registry(calls, kube_api.url))
    try:
        kube_api.create(_widget("alpha"))
        await _until(lambda: ("create", "alpha") in calls)
        obj = await _until(lambda: (lambda o: o if o["metadata"].get("finalizers") and any(
            k.endswith("created") for k in (o.get("status") or {})) else None)(
            kube_api.get(f"{GROUP}/{VERSION}", "Widget", "alpha", "default")))
        assert {"seen": "yes"} in obj["status"].values()
        kube_api.patch(f"{GROUP}/{VERSION}", "Widget", "alpha", {"spec": {"size": "large"}},
                       "default")
        await _until(lambda: ("update", "alpha") in calls)
        kube_api.create(_widget("beta"))
        await _until(lambda: ("create", "beta") in calls)
        await kube_api_idle(kube_api, "beta")
    finally:
        await _stop(task, stop)

    restarted: list[tuple[str, str]] = []
    task, stop = await _run_operator(_registry(restarted, kube_api.url))
    try:
        kube_api.delete(f"{GROUP}/{VERSION}", "Widget", "alpha", "default")
        await _until(lambda: ("delete", "alpha") in restarted)
        await _until(lambda: not kube_api.list(f"{GROUP}/{VERSION}", "Widget", "default",
                                               "") or all(
            o["metadata"]["name"] != "alpha"
            for o in kube_api.list(f"{GROUP}/{VERSION}", "Widget", "default")))
        await asyncio.sleep(0.5)  # give kopf time to (wrongly) replay; it must not
        assert ("create", "beta") not in restarted
        assert ("create", "alpha") not in restarted and ("update", "alpha") not in restarted
    finally:
        await _stop(task, stop)


async def kube_api_idle(api: ApiServer, name: str) -> None:
    """Wait until kopf has stored its handled state (last-handled annotation) on `name`."""
    def done() -> bool:
        obj = api.get(f"{GROUP}/{VERSION}", "Widget", name, "default")
        return any("last-handled-configuration" in k
                   for k in (obj["metadata"].get("annotations") or {}))

    await _until(done)
